#pragma once
// Mutual authentication of two peers by a shared secret: HMAC-SHA256 challenge and response,
// in both directions, before any other message.
//
//   acceptor  -> dialer    AuthChallenge{nA}
//   dialer    -> acceptor  AuthResponse{mac = H(secret, "dialer"   || nA || nD), nonce = nD}
//   acceptor  -> dialer    AuthResponse{mac = H(secret, "acceptor" || nD || nA)}
//
// Each side proves knowledge of the secret over a fresh nonce chosen by the other, so a
// recorded exchange cannot be replayed, and the role labels stop a reflected answer.

#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"

namespace transport {

inline constexpr size_t kNonceBytes = 32;
using Mac = std::array<std::byte, 32>;

std::vector<std::byte> RandomNonce();
Mac ComputeMac(const std::string& secret, const std::string& label,
               std::span<const std::byte> first_nonce, std::span<const std::byte> second_nonce);
// Constant-time comparison of a received MAC.
bool MacMatches(const Mac& expected, std::span<const std::byte> received);

// Reads a secret file: its content with trailing newlines removed. Refuses an empty file and
// files readable by group or others.
base::Result<std::string> ReadSecretFile(const std::string& path);

}  // namespace transport
