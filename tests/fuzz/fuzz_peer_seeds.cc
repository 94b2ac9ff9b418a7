// Writes fuzz_peer's seed corpus into the directory named by its argument: scripts of random
// bytes. Every byte string is a script to fuzz_peer (see the top of fuzz_peer.cc), and a long
// random one already runs a connection through its handshake and many operations, so a short
// fuzzing run starts from there rather than from an empty input. Fixed seed: the same files on
// every build.

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIRECTORY\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir(argv[1]);
  std::filesystem::create_directories(dir);
  std::mt19937 rng(20240601);
  for (int i = 0; i < 32; ++i) {
    std::string bytes(256 + rng() % 1792, '\0');
    for (char& c : bytes) {
      c = static_cast<char>(rng());
    }
    std::ofstream(dir / ("seed" + std::to_string(i)), std::ios::binary) << bytes;
  }
  return 0;
}
