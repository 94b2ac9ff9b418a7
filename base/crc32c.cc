#include "base/crc32c.h"

#include <isa-l/crc.h>

#include <algorithm>
#include <climits>

namespace base {

uint32_t Crc32c(uint32_t crc, std::span<const std::byte> data) {
  // ISA-L's crc32_iscsi neither inverts its seed nor its result; the standard CRC32C does both.
  unsigned int state = ~crc;
  // Its length is an int: feed very large spans in pieces (the state chains across calls).
  constexpr size_t kMaxPiece = size_t{1} << 30;
  static_assert(kMaxPiece <= INT_MAX);
  auto* p = reinterpret_cast<unsigned char*>(const_cast<std::byte*>(data.data()));
  size_t left = data.size();
  while (left > 0) {
    const size_t piece = std::min(left, kMaxPiece);
    state = crc32_iscsi(p, static_cast<int>(piece), state);
    p += piece;
    left -= piece;
  }
  return ~state;
}

}  // namespace base
