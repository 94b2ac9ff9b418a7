#pragma once
// CRC32C (Castagnoli), the checksum on every peer frame.
//
// Debian 12 packages no CRC32C library, so this uses the SSE4.2 crc32 instruction when the CPU
// has it (several GB/s, enough to checksum every replicated byte) and Boost.CRC otherwise.

#include <cstddef>
#include <cstdint>
#include <span>

namespace base {

// Extends `crc` (0 to start) over `data`. Chaining calls equals one call over the concatenation.
uint32_t Crc32c(uint32_t crc, std::span<const std::byte> data);

}  // namespace base
