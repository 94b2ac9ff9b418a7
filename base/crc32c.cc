#include "base/crc32c.h"

#include <nmmintrin.h>

#include <boost/crc.hpp>
#include <cstring>

namespace base {
namespace {

__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(uint32_t crc,
                                                          std::span<const std::byte> data) {
  uint64_t state = ~crc;
  const std::byte* p = data.data();
  size_t n = data.size();
  while (n >= 8) {
    uint64_t word = 0;
    std::memcpy(&word, p, 8);
    state = _mm_crc32_u64(state, word);
    p += 8;
    n -= 8;
  }
  auto state32 = static_cast<uint32_t>(state);
  while (n > 0) {
    state32 = _mm_crc32_u8(state32, std::to_integer<uint8_t>(*p));
    ++p;
    --n;
  }
  return ~state32;
}

uint32_t Crc32cSoftware(uint32_t crc, std::span<const std::byte> data) {
  // Reflected CRC32C; seeding with ~crc continues a previous run.
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> engine;
  engine.reset(~crc);
  engine.process_bytes(data.data(), data.size());
  return engine.checksum();
}

const bool kHasSse42 = __builtin_cpu_supports("sse4.2");

}  // namespace

uint32_t Crc32c(uint32_t crc, std::span<const std::byte> data) {
  return kHasSse42 ? Crc32cHardware(crc, data) : Crc32cSoftware(crc, data);
}

}  // namespace base
