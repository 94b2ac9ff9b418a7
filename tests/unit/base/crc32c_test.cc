// Proves the CRC32C matches the published check value, a bytewise reference (Boost.CRC) at
// every length the optimised code treats differently, and chains across calls.

#include "base/crc32c.h"

#include <gtest/gtest.h>

#include <boost/crc.hpp>
#include <random>
#include <string>
#include <vector>

namespace base {
namespace {

std::span<const std::byte> Bytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

TEST(Crc32cTest, MatchesTheStandardCheckValue) {
  EXPECT_EQ(Crc32c(0, Bytes("123456789")), 0xE3069283u);
  EXPECT_EQ(Crc32c(0, {}), 0u);
}

TEST(Crc32cTest, ChainingEqualsOneRun) {
  const std::string text = "the quick brown fox jumps over the lazy dog, twice over";
  const uint32_t whole = Crc32c(0, Bytes(text));
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    EXPECT_EQ(Crc32c(Crc32c(0, Bytes(text.substr(0, cut))), Bytes(text.substr(cut))), whole);
  }
}

uint32_t Reference(std::span<const std::byte> data) {
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> engine;
  engine.process_bytes(data.data(), data.size());
  return engine.checksum();
}

TEST(Crc32cTest, MatchesABytewiseReferenceAtManyLengthsAndSplits) {
  std::mt19937_64 rng(20261126);
  std::vector<std::byte> data((4 << 20) + 77);
  for (auto& b : data) {
    b = std::byte(rng() & 0xff);
  }
  const std::span<const std::byte> all(data);
  // Short tails, word and vector boundaries, frame-sized payloads, a whole odd-sized buffer;
  // starting at odd offsets too (unaligned).
  for (size_t length : {1ul, 7ul, 8ul, 15ul, 63ul, 64ul, 255ul, 256ul, 1000ul, 4096ul, 65536ul,
                        65537ul, 1ul << 20, (1ul << 20) + 3, data.size() - 5}) {
    for (size_t start : {0ul, 1ul, 5ul}) {
      const auto piece = all.subspan(start, length);
      const uint32_t expected = Reference(piece);
      ASSERT_EQ(Crc32c(0, piece), expected) << "length " << length << " at " << start;
      const size_t cut = rng() % (length + 1);
      ASSERT_EQ(Crc32c(Crc32c(0, piece.first(cut)), piece.subspan(cut)), expected)
          << "length " << length << " cut at " << cut;
    }
  }
}

TEST(Crc32cTest, DetectsASingleFlippedBit) {
  std::string text(4096, 'x');
  const uint32_t before = Crc32c(0, Bytes(text));
  text[1234] ^= 0x10;
  EXPECT_NE(Crc32c(0, Bytes(text)), before);
}

}  // namespace
}  // namespace base
