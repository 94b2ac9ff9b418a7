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
// new connection silent for long (its first request must arrive within kRequestTimeout; a
// keep-alive connection's next one within kIdleTimeout, longer than the usual one-minute scrape
// interval so Prometheus keeps its connection), send more than 8 KiB of headers or any body (the
// request is refused and the connection closed), open more than kMaxConnections at once (further
// ones are closed on accept), or make the loop render more than once per kMinRequestInterval per
// connection. The document is built on the loop thread from the same counters as `status`, so
// it is consistent with itself. A client that keeps kMaxConnections connections busy does lock
// out others: serve metrics only where the monitoring system alone can reach them.

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
  static constexpr std::chrono::seconds kIdleTimeout{90};
  static constexpr std::chrono::milliseconds kMinRequestInterval{100};
  static constexpr int kMaxConnections = 16;

  MetricsServer(asio::io_context& io, Render render);
  ~MetricsServer();

  // Binds and starts accepting. TCP only.
  base::Status Listen(const base::Endpoint& endpoint);
  uint64_t scrapes() const { return shared_->scrapes; }

 private:
  // What connections use. Shared with each connection's coroutine, which may be destroyed (not
  // resumed) after this server when the io_context goes.
  struct Shared {
    Render render;
    int connections = 0;
    uint64_t scrapes = 0;
  };

  asio::awaitable<void> AcceptLoop();
  static asio::awaitable<void> Serve(std::shared_ptr<Shared> shared,
                                     asio::ip::tcp::socket socket);

  asio::io_context& io_;
  std::shared_ptr<Shared> shared_;
  asio::ip::tcp::acceptor acceptor_;
};

}  // namespace mirror
