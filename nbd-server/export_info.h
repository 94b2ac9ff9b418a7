#pragma once
// ExportInfo: what the server tells clients about the one export it serves.

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
};

}  // namespace nbd
