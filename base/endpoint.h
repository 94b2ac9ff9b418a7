#pragma once
// Endpoint: how users name a socket on the command line.
//
//   unix:/run/nbdmirror/pg.sock   a Unix stream socket
//   HOST:PORT, HOST, :PORT        TCP; [v6addr]:PORT for IPv6
//
// A missing host means 127.0.0.1 (loopback by default: NBD has no authentication); a missing
// port means the caller's default.

#include <cstdint>
#include <string>

#include "base/asio.h"
#include "base/status.h"

namespace base {

struct Endpoint {
  bool is_unix = false;
  std::string path;  // Unix sockets.
  std::string host;  // TCP.
  uint16_t port = 0;

  std::string ToString() const;
  // Resolves to a generic endpoint usable by generic stream sockets and acceptors. Host names
  // are resolved synchronously (start-up only).
  Result<asio::generic::stream_protocol::endpoint> Resolve() const;
};

Result<Endpoint> ParseEndpoint(const std::string& text, uint16_t default_port);

}  // namespace base
