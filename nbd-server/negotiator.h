#pragma once
// Negotiator: the fixed-newstyle handshake as a pure state machine, with no I/O.
//
// The connection reads bytes off the socket and hands them over one complete unit at a time
// (the client flags, then each option's header and data); the Negotiator answers with the
// bytes to send back and what to do next. Keeping it free of sockets lets unit tests and the
// fuzzer drive every path directly.
//
// Not thread-safe; one per connection.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "nbd-server/export_info.h"

namespace nbd {

// Options longer than this are a denial of service, not a request: the connection is dropped.
inline constexpr uint32_t kMaxOptionBytes = 64 * 1024;
inline constexpr size_t kOptionHeaderBytes = 16;
inline constexpr size_t kGreetingBytes = 18;
inline constexpr uint32_t kMaxNameBytes = 4096;

// What the client and server agreed on for the transmission phase.
struct Negotiated {
  bool no_zeroes = false;
  bool structured_replies = false;
  bool base_allocation = false;  // base:allocation selected (implies structured_replies).
};

struct OptionHeader {
  uint32_t option = 0;
  uint32_t length_bytes = 0;
};

enum class NextStep {
  kContinue,      // Send the reply, read the next option.
  kClose,         // Send the reply, then close (ABORT).
  kDrop,          // Close without replying more (a MUST violation, or EXPORT_NAME unknown).
  kTransmission,  // Send the reply, then enter the transmission phase.
};

struct OptionReply {
  std::vector<std::byte> bytes;
  NextStep next = NextStep::kContinue;
  std::string log;  // Why, when the client did something wrong; empty otherwise.
};

class Negotiator {
 public:
  explicit Negotiator(const ExportInfo& info);

  // The 18 bytes the server opens with.
  std::vector<std::byte> Greeting() const;

  // The client's 32-bit flags. An error means: drop the connection.
  base::Status AcceptClientFlags(std::span<const std::byte, 4> bytes);

  // Parses the 16-byte option header. An error (bad magic, absurd length) means: drop.
  base::Result<OptionHeader> ParseOptionHeader(std::span<const std::byte, kOptionHeaderBytes>
                                                   bytes) const;

  // Handles one option whose data (header.length_bytes bytes) has been read in full.
  OptionReply HandleOption(uint32_t option, std::span<const std::byte> data);

  const Negotiated& negotiated() const { return negotiated_; }
  // The transmission flags for the agreed state (HAS_FLAGS and everything we serve).
  uint16_t TransmissionFlags() const;

 private:
  OptionReply HandleInfoOrGo(uint32_t option, std::span<const std::byte> data);
  OptionReply HandleExportName(std::span<const std::byte> data);
  OptionReply HandleList(std::span<const std::byte> data);
  OptionReply HandleMetaContext(uint32_t option, std::span<const std::byte> data);
  bool IsOurName(std::span<const std::byte> name) const;

  const ExportInfo& info_;
  Negotiated negotiated_;
};

// Appends an option reply (magic, option, type, length, payload).
void AppendOptionReply(std::vector<std::byte>& out, uint32_t option, uint32_t type,
                       std::span<const std::byte> payload);

}  // namespace nbd
