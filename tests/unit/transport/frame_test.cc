// Proves the peer frame codec: round trip, and refusal of every malformed header (bad magic,
// unknown type, reserved bits, oversized message, payload on a type that takes none), and of a
// frame whose CRC does not match its bytes.

#include "transport/frame.h"

#include <gtest/gtest.h>

#include <boost/endian/conversion.hpp>
#include <string>

namespace transport {
namespace {

std::span<const std::byte> Bytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

TEST(FrameTest, RoundTripKeepsTypeLengthsAndCrc) {
  const std::string message = "protobuf bytes";
  const std::string payload(4096, 'p');
  auto header = BuildFrameHeader(FrameType::kWrite, Bytes(message), Bytes(payload));
  auto parsed = ParseFrameHeader(header);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed.value().type, FrameType::kWrite);
  EXPECT_EQ(parsed.value().message_bytes, message.size());
  EXPECT_EQ(parsed.value().payload_bytes, payload.size());
  EXPECT_TRUE(FrameCrcMatches(parsed.value(), Bytes(message), Bytes(payload)));
}

TEST(FrameTest, AFlippedPayloadBitFailsTheCrc) {
  const std::string message = "m";
  std::string payload(512, 'x');
  auto parsed = ParseFrameHeader(BuildFrameHeader(FrameType::kWrite, Bytes(message),
                                                  Bytes(payload)));
  ASSERT_TRUE(parsed.ok());
  payload[100] ^= 1;
  EXPECT_FALSE(FrameCrcMatches(parsed.value(), Bytes(message), Bytes(payload)));
}

TEST(FrameTest, MalformedHeadersAreRefused) {
  auto good = BuildFrameHeader(FrameType::kAck, Bytes("a"), {});
  auto* p = reinterpret_cast<unsigned char*>(good.data());

  auto bad_magic = good;
  bad_magic[0] = std::byte{0};
  EXPECT_FALSE(ParseFrameHeader(bad_magic).ok());

  auto unknown_type = good;
  boost::endian::store_big_u16(reinterpret_cast<unsigned char*>(unknown_type.data()) + 4, 999);
  EXPECT_FALSE(ParseFrameHeader(unknown_type).ok());

  auto reserved = good;
  reinterpret_cast<unsigned char*>(reserved.data())[7] = 1;
  EXPECT_FALSE(ParseFrameHeader(reserved).ok());

  auto huge_message = good;
  boost::endian::store_big_u32(reinterpret_cast<unsigned char*>(huge_message.data()) + 8,
                               kMaxMessageBytes + 1);
  EXPECT_FALSE(ParseFrameHeader(huge_message).ok());

  auto payload_on_ack = good;
  boost::endian::store_big_u32(reinterpret_cast<unsigned char*>(payload_on_ack.data()) + 12, 1);
  EXPECT_FALSE(ParseFrameHeader(payload_on_ack).ok());
  (void)p;

  auto huge_write = BuildFrameHeader(FrameType::kWrite, Bytes("w"), {});
  boost::endian::store_big_u32(reinterpret_cast<unsigned char*>(huge_write.data()) + 12,
                               kMaxPayloadBytes + 1);
  EXPECT_FALSE(ParseFrameHeader(huge_write).ok());
}

}  // namespace
}  // namespace transport
