#include "base/sha256.h"

#include <openssl/evp.h>

#include "base/check.h"

namespace base {

std::string Sha256(std::span<const std::byte> data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  CHECK(EVP_Digest(data.data(), data.size(), out, &length, EVP_sha256(), nullptr) == 1);
  return std::string(reinterpret_cast<const char*>(out), length);
}

}  // namespace base
