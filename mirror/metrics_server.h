#pragma once
// MetricsServer: the Prometheus endpoint (`run --metrics HOST:PORT`), HTTP/1.1 over TCP through
// Boost.Beast on the volume's event loop.
//
//   GET /metrics   the daemon's metrics in the text exposition format (README lists them)
//   HEAD /metrics  the same headers, no body
//   GET /          a one-line pointer to /metrics
//   anything else  404 (unknown path) or 405 (another method), and the connection stays usable
//
// Keep-alive is honoured, as Prometheus uses it. What a client cannot do to the daemon: hold a
// connection silent for long (each request must arrive within kRequestTimeout, and an idle
// keep-alive connection is closed after kIdleTimeout), send more than 8 KiB of headers or any
// body (the request is refused and the connection closed), or open more than kMaxConnections at
// once (further ones are closed on accept). The document is built on the loop thread from the
// same counters as `status`, so it is consistent with itself.

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "base/asio.h"
#include "base/endpoint.h"
#include "base/status.h"

namespace mirror {

class MetricsServer {
 public:
  using Render = std::function<std::string()>;  // Returns the exposition text.

  static constexpr std::chrono::seconds kRequestTimeout{10};
  static constexpr std::chrono::seconds kIdleTimeout{60};
  static constexpr int kMaxConnections = 16;

  MetricsServer(asio::io_context& io, Render render);
  ~MetricsServer();

  // Binds and starts accepting. TCP only.
  base::Status Listen(const base::Endpoint& endpoint);
  uint64_t scrapes() const { return scrapes_; }

 private:
  asio::awaitable<void> AcceptLoop();
  asio::awaitable<void> Serve(asio::ip::tcp::socket socket);

  asio::io_context& io_;
  Render render_;
  asio::ip::tcp::acceptor acceptor_;
  int connections_ = 0;
  uint64_t scrapes_ = 0;
};

}  // namespace mirror
