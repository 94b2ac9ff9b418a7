// Proves the CRC32C matches the published check value and chains across calls.

#include "base/crc32c.h"

#include <gtest/gtest.h>

#include <string>

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

TEST(Crc32cTest, DetectsASingleFlippedBit) {
  std::string text(4096, 'x');
  const uint32_t before = Crc32c(0, Bytes(text));
  text[1234] ^= 0x10;
  EXPECT_NE(Crc32c(0, Bytes(text)), before);
}

}  // namespace
}  // namespace base
