// Proves the HMAC challenge-response primitives: the same inputs give the same MAC, any change
// of secret, label or nonce order gives another, and secret files are checked.

#include "transport/peer_auth.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

namespace transport {
namespace {

TEST(PeerAuthTest, MacDependsOnSecretLabelAndNonceOrder) {
  const auto a = RandomNonce();
  const auto b = RandomNonce();
  ASSERT_EQ(a.size(), kNonceBytes);
  ASSERT_NE(a, b);
  const Mac mac = ComputeMac("secret", "dialer", a, b);
  EXPECT_TRUE(MacMatches(mac, ComputeMac("secret", "dialer", a, b)));
  EXPECT_FALSE(MacMatches(mac, ComputeMac("secreT", "dialer", a, b)));
  EXPECT_FALSE(MacMatches(mac, ComputeMac("secret", "acceptor", a, b)));
  EXPECT_FALSE(MacMatches(mac, ComputeMac("secret", "dialer", b, a)));
  EXPECT_FALSE(MacMatches(mac, std::span<const std::byte>(mac.data(), 31)));
}

TEST(PeerAuthTest, SecretFileMustBePrivateAndNonEmpty) {
  const std::string path = "/tmp/nbdmirror-secret-test-" + std::to_string(::getpid());
  {
    std::ofstream out(path);
    out << "hunter2\n";
  }
  ::chmod(path.c_str(), 0644);
  EXPECT_EQ(ReadSecretFile(path).status().errno_value(), EPERM);
  ::chmod(path.c_str(), 0600);
  auto secret = ReadSecretFile(path);
  ASSERT_TRUE(secret.ok());
  EXPECT_EQ(secret.value(), "hunter2");
  {
    std::ofstream out(path);
    out << "\n";
  }
  EXPECT_FALSE(ReadSecretFile(path).ok());
  ::unlink(path.c_str());
  EXPECT_FALSE(ReadSecretFile(path).ok());
}

}  // namespace
}  // namespace transport
