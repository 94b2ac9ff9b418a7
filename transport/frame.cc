#include "transport/frame.h"

#include <boost/endian/conversion.hpp>
#include <string>

#include "base/crc32c.h"

namespace transport {
namespace {

namespace endian = boost::endian;

bool KnownType(uint16_t type) {
  switch (static_cast<FrameType>(type)) {
    case FrameType::kAuthChallenge:
    case FrameType::kAuthResponse:
    case FrameType::kHello:
    case FrameType::kSyncPlan:
    case FrameType::kReady:
    case FrameType::kRefuse:
    case FrameType::kBitmapRuns:
    case FrameType::kWrite:
    case FrameType::kZero:
    case FrameType::kFlush:
    case FrameType::kAck:
    case FrameType::kResyncDone:
    case FrameType::kDigestRequest:
    case FrameType::kHeartbeat:
      return true;
  }
  return false;
}

void Encode(std::byte* out, FrameType type, uint32_t message_bytes, uint32_t payload_bytes,
            uint32_t crc) {
  auto* p = reinterpret_cast<unsigned char*>(out);
  endian::store_big_u32(p, kFrameMagic);
  endian::store_big_u16(p + 4, static_cast<uint16_t>(type));
  endian::store_big_u16(p + 6, 0);
  endian::store_big_u32(p + 8, message_bytes);
  endian::store_big_u32(p + 12, payload_bytes);
  endian::store_big_u32(p + 16, crc);
}

uint32_t ComputeCrc(FrameType type, std::span<const std::byte> message,
                    std::span<const std::byte> payload) {
  std::array<std::byte, kFrameHeaderBytes> zeroed{};
  Encode(zeroed.data(), type, static_cast<uint32_t>(message.size()),
         static_cast<uint32_t>(payload.size()), 0);
  uint32_t crc = base::Crc32c(0, zeroed);
  crc = base::Crc32c(crc, message);
  return base::Crc32c(crc, payload);
}

}  // namespace

const char* FrameTypeName(FrameType type) {
  switch (type) {
    case FrameType::kAuthChallenge:
      return "AuthChallenge";
    case FrameType::kAuthResponse:
      return "AuthResponse";
    case FrameType::kHello:
      return "Hello";
    case FrameType::kSyncPlan:
      return "SyncPlan";
    case FrameType::kReady:
      return "Ready";
    case FrameType::kRefuse:
      return "Refuse";
    case FrameType::kBitmapRuns:
      return "BitmapRuns";
    case FrameType::kWrite:
      return "Write";
    case FrameType::kZero:
      return "Zero";
    case FrameType::kFlush:
      return "Flush";
    case FrameType::kAck:
      return "Ack";
    case FrameType::kResyncDone:
      return "ResyncDone";
    case FrameType::kDigestRequest:
      return "DigestRequest";
    case FrameType::kHeartbeat:
      return "Heartbeat";
  }
  return "Unknown";
}

base::Result<FrameHeader> ParseFrameHeader(std::span<const std::byte, kFrameHeaderBytes> bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (endian::load_big_u32(p) != kFrameMagic) {
    return base::Status::Error(EPROTO, "frame without the NBMR magic");
  }
  const uint16_t type = endian::load_big_u16(p + 4);
  if (!KnownType(type)) {
    return base::Status::Error(EPROTO, "frame of unknown type " + std::to_string(type));
  }
  if (endian::load_big_u16(p + 6) != 0) {
    return base::Status::Error(EPROTO, "frame with reserved bits set");
  }
  FrameHeader h;
  h.type = static_cast<FrameType>(type);
  h.message_bytes = endian::load_big_u32(p + 8);
  h.payload_bytes = endian::load_big_u32(p + 12);
  h.crc = endian::load_big_u32(p + 16);
  if (h.message_bytes > kMaxMessageBytes) {
    return base::Status::Error(EPROTO, std::string(FrameTypeName(h.type)) + " frame claims a " +
                                           std::to_string(h.message_bytes) + "-byte message");
  }
  if (h.payload_bytes > (h.type == FrameType::kWrite ? kMaxPayloadBytes : 0)) {
    return base::Status::Error(EPROTO, std::string(FrameTypeName(h.type)) + " frame claims a " +
                                           std::to_string(h.payload_bytes) + "-byte payload");
  }
  return h;
}

std::array<std::byte, kFrameHeaderBytes> BuildFrameHeader(FrameType type,
                                                          std::span<const std::byte> message,
                                                          std::span<const std::byte> payload) {
  std::array<std::byte, kFrameHeaderBytes> out{};
  Encode(out.data(), type, static_cast<uint32_t>(message.size()),
         static_cast<uint32_t>(payload.size()), ComputeCrc(type, message, payload));
  return out;
}

bool FrameCrcMatches(const FrameHeader& header, std::span<const std::byte> message,
                     std::span<const std::byte> payload) {
  return ComputeCrc(header.type, message, payload) == header.crc;
}

}  // namespace transport
