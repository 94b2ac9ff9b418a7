#pragma once
// Sha256: the SHA-256 digest of a byte range (OpenSSL), as 32 raw bytes in a string. Used by
// online verify, where only digests of blocks cross the wire.

#include <cstddef>
#include <span>
#include <string>

namespace base {

std::string Sha256(std::span<const std::byte> data);

}  // namespace base
