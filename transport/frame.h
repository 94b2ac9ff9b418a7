#pragma once
// Frame: how peer messages travel on the wire.
//
//   offset  size  field
//   0       4     magic "NBMR" (0x4e424d52), big-endian
//   4       2     type (FrameType)
//   6       2     reserved, zero
//   8       4     message_bytes: the serialized protobuf message that follows the header
//   12      4     payload_bytes: raw data after the message (Write frames only)
//   16      4     crc32c over the header (this field zeroed), the message and the payload
//
// Every field is checked on receipt before anything is acted upon: an unknown type, a length
// over its limit, a payload on a type that takes none, or a checksum mismatch is a broken link.
// The receiver drops the connection and applies nothing from it.

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "base/status.h"

namespace transport {

enum class FrameType : uint16_t {
  kAuthChallenge = 1,
  kAuthResponse = 2,
  kHello = 3,
  kSyncPlan = 4,
  kReady = 5,
  kRefuse = 6,
  kBitmapRuns = 7,
  kWrite = 10,
  kZero = 11,
  kFlush = 12,
  kAck = 13,
  kResyncDone = 14,
  kDigestRequest = 15,
  kHeartbeat = 20,
};

// Hello.protocol_version; both ends refuse any other.
inline constexpr uint32_t kPeerProtocolVersion = 2;
inline constexpr uint32_t kFrameMagic = 0x4e424d52;
inline constexpr size_t kFrameHeaderBytes = 20;
inline constexpr uint32_t kMaxMessageBytes = 64 * 1024;
inline constexpr uint32_t kMaxPayloadBytes = 32u << 20;
inline constexpr uint32_t kMaxDigestRangeBytes = 1u << 20;

struct FrameHeader {
  FrameType type = FrameType::kHeartbeat;
  uint32_t message_bytes = 0;
  uint32_t payload_bytes = 0;
  uint32_t crc = 0;
};

const char* FrameTypeName(FrameType type);

// Checks magic, type and lengths. The CRC is checked once message and payload are read.
base::Result<FrameHeader> ParseFrameHeader(std::span<const std::byte, kFrameHeaderBytes> bytes);

// Builds a header, computing the CRC over it, `message` and `payload`.
std::array<std::byte, kFrameHeaderBytes> BuildFrameHeader(FrameType type,
                                                          std::span<const std::byte> message,
                                                          std::span<const std::byte> payload);

// Recomputes the CRC of a received frame.
bool FrameCrcMatches(const FrameHeader& header, std::span<const std::byte> message,
                     std::span<const std::byte> payload);

}  // namespace transport
