#pragma once
// Transmission-phase request parsing and validation, free of I/O (fuzzed and unit-tested).
//
// ParseRequestHeader only checks the framing (the magic); a bad magic means the stream is lost
// and the connection must be dropped. ValidateRequest then decides, for a well-framed request,
// whether the server may run it or must answer with an NBD error while keeping the connection.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "base/status.h"
#include "nbd-server/export_info.h"
#include "nbd-server/negotiator.h"
#include "nbd-server/protocol.h"

namespace nbd {

struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;  // Raw: unknown commands are answered, not dropped.
  uint64_t cookie = 0;
  uint64_t offset_bytes = 0;
  uint32_t length_bytes = 0;

  // WRITE is the only command followed by a payload on the wire.
  bool HasPayload() const { return type == static_cast<uint16_t>(Command::kWrite); }
};

base::Result<Request> ParseRequestHeader(std::span<const std::byte, kRequestHeaderBytes> bytes);

struct Verdict {
  uint32_t nbd_error = 0;  // 0: run it.
  std::string why;         // For the log when nbd_error != 0.
  bool ok() const { return nbd_error == 0; }
};

// Checks command, flags and range against what was advertised and negotiated.
Verdict ValidateRequest(const Request& request, const ExportInfo& info,
                        const Negotiated& negotiated);

const char* CommandName(uint16_t type);

}  // namespace nbd
