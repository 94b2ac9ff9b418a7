#pragma once
// CRC32C (Castagnoli), the checksum on every peer frame.
//
// Computed by Intel's ISA-L (Debian's libisal), which picks the fastest code the CPU runs
// (several streams folded with carry-less multiplies: tens of GB/s, against about 9 GB/s for a
// single chain of SSE4.2 crc32 instructions). Every replicated byte is checksummed on both
// hosts; with one chain the checksum was a quarter of each daemon's CPU during a resync.

#include <cstddef>
#include <cstdint>
#include <span>

namespace base {

// Extends `crc` (0 to start) over `data`. Chaining calls equals one call over the concatenation.
uint32_t Crc32c(uint32_t crc, std::span<const std::byte> data);

}  // namespace base
