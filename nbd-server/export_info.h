#pragma once
// ExportInfo: what the server tells clients about the one export it serves (and how long it
// waits for a stalled one).

#include <cstdint>
#include <string>

namespace nbd {

struct ExportInfo {
  std::string name;  // Clients may also ask for "" (the default export).
  std::string description;
  uint64_t size_bytes = 0;
  // NBD_INFO_BLOCK_SIZE. Requests that ignore the minimum still work, just slower.
  uint32_t min_block_bytes = 512;
  uint32_t preferred_block_bytes = 4096;
  uint32_t max_payload_bytes = 32u << 20;
  bool read_only = false;
  // Not told to clients: how long a client may leave a WRITE's payload unsent, or its replies
  // unread, before it is dropped and its buffers go back to the shared pool. 0: never.
  uint32_t stall_timeout_ms = 60000;
};

}  // namespace nbd
