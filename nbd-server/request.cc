#include "nbd-server/request.h"

namespace nbd {
namespace {

Verdict Reject(uint32_t error, std::string why) { return Verdict{error, std::move(why)}; }

// Flags each command may carry. FUA is accepted everywhere because we advertise SEND_FUA and
// the spec says clients may then set it on any command, reads included.
uint16_t AllowedFlags(Command command, const Negotiated& negotiated) {
  switch (command) {
    case Command::kRead:
      return kCmdFlagFua | (negotiated.structured_replies ? kCmdFlagDf : 0);
    case Command::kWriteZeroes:
      return kCmdFlagFua | kCmdFlagNoHole | kCmdFlagFastZero;
    case Command::kBlockStatus:
      return kCmdFlagFua | kCmdFlagReqOne;
    default:
      return kCmdFlagFua;
  }
}

}  // namespace

const char* CommandName(uint16_t type) {
  switch (static_cast<Command>(type)) {
    case Command::kRead:
      return "READ";
    case Command::kWrite:
      return "WRITE";
    case Command::kDisconnect:
      return "DISC";
    case Command::kFlush:
      return "FLUSH";
    case Command::kTrim:
      return "TRIM";
    case Command::kCache:
      return "CACHE";
    case Command::kWriteZeroes:
      return "WRITE_ZEROES";
    case Command::kBlockStatus:
      return "BLOCK_STATUS";
  }
  return "UNKNOWN";
}

base::Result<Request> ParseRequestHeader(std::span<const std::byte, kRequestHeaderBytes> bytes) {
  if (LoadBe32(bytes.data()) != kRequestMagic) {
    return base::Status::Error(EPROTO, "request without the request magic");
  }
  Request r;
  r.flags = LoadBe16(bytes.data() + 4);
  r.type = LoadBe16(bytes.data() + 6);
  r.cookie = LoadBe64(bytes.data() + 8);
  r.offset_bytes = LoadBe64(bytes.data() + 16);
  r.length_bytes = LoadBe32(bytes.data() + 24);
  return r;
}

Verdict ValidateRequest(const Request& r, const ExportInfo& info, const Negotiated& negotiated) {
  if (r.type > static_cast<uint16_t>(Command::kBlockStatus)) {
    return Reject(kErrInvalid, "unknown command " + std::to_string(r.type));
  }
  const auto command = static_cast<Command>(r.type);
  const uint16_t extra = r.flags & ~AllowedFlags(command, negotiated);
  if (extra != 0) {
    return Reject(kErrInvalid, std::string("flags ") + std::to_string(extra) + " not valid on " +
                                   CommandName(r.type));
  }
  if (command == Command::kFlush || command == Command::kDisconnect) {
    return {};
  }
  if (info.read_only && (command == Command::kWrite || command == Command::kTrim ||
                         command == Command::kWriteZeroes)) {
    return Reject(kErrPerm, "export is read-only");
  }
  if (command == Command::kBlockStatus && !negotiated.base_allocation) {
    return Reject(kErrInvalid, "BLOCK_STATUS without a negotiated meta context");
  }
  if ((command == Command::kRead || command == Command::kWrite) &&
      r.length_bytes > info.max_payload_bytes) {
    return Reject(kErrInvalid,
                  std::string(CommandName(r.type)) + " of " + std::to_string(r.length_bytes) +
                      " bytes exceeds the maximum payload");
  }
  // offset + length may wrap 2^64: compare without adding.
  const bool out_of_range =
      r.offset_bytes > info.size_bytes || r.length_bytes > info.size_bytes - r.offset_bytes;
  if (out_of_range) {
    // nbdkit and nbd-server answer writes past the end with ENOSPC, like a full disk.
    const bool is_write = command == Command::kWrite || command == Command::kWriteZeroes;
    return Reject(is_write ? kErrNoSpace : kErrInvalid,
                  std::string(CommandName(r.type)) + " at " + std::to_string(r.offset_bytes) +
                      "+" + std::to_string(r.length_bytes) + " is past the end of the export");
  }
  if (command == Command::kBlockStatus && r.length_bytes == 0) {
    return Reject(kErrInvalid, "BLOCK_STATUS of zero bytes");
  }
  return {};
}

}  // namespace nbd
