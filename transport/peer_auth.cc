#include "transport/peer_auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "base/check.h"

namespace transport {

std::vector<std::byte> RandomNonce() {
  std::vector<std::byte> nonce(kNonceBytes);
  CHECK(RAND_bytes(reinterpret_cast<unsigned char*>(nonce.data()), kNonceBytes) == 1);
  return nonce;
}

Mac ComputeMac(const std::string& secret, const std::string& label,
               std::span<const std::byte> first_nonce, std::span<const std::byte> second_nonce) {
  std::vector<unsigned char> input(label.begin(), label.end());
  input.push_back(0);
  for (auto part : {first_nonce, second_nonce}) {
    const auto* p = reinterpret_cast<const unsigned char*>(part.data());
    input.insert(input.end(), p, p + part.size());
  }
  Mac mac{};
  unsigned int length = 0;
  CHECK(HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), input.data(),
             input.size(), reinterpret_cast<unsigned char*>(mac.data()), &length) != nullptr);
  CHECK(length == mac.size());
  return mac;
}

bool MacMatches(const Mac& expected, std::span<const std::byte> received) {
  return received.size() == expected.size() &&
         CRYPTO_memcmp(expected.data(), received.data(), expected.size()) == 0;
}

base::Result<std::string> ReadSecretFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return base::Status::FromErrno("secret file " + path);
  }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return base::Status::Error(EPERM, "secret file " + path +
                                          " is readable by others; chmod 600 it");
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  std::string secret = content.str();
  while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) {
    secret.pop_back();
  }
  if (secret.empty()) {
    return base::Status::Error(EINVAL, "secret file " + path + " is empty");
  }
  return secret;
}

}  // namespace transport
