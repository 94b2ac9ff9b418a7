#include "mirror/metrics_server.h"

#include <spdlog/spdlog.h>

#include <array>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstring>
#include <string_view>

namespace mirror {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using base::Status;

constexpr size_t kHeaderLimitBytes = 8 * 1024;
constexpr const char* kExpositionType = "text/plain; version=0.0.4; charset=utf-8";

struct Answer {
  http::status status = http::status::ok;
  std::string body;
  std::string content_type = "text/plain; charset=utf-8";
  bool allow_header = false;  // 405 says which methods there are.
};

// Sends one response; for HEAD (`head_only`) the headers announce the body without sending it.
asio::awaitable<boost::system::error_code> Send(beast::tcp_stream& stream, Answer answer,
                                                unsigned version, bool keep_alive, bool head_only) {
  http::response<http::string_body> res{answer.status, version};
  res.set(http::field::server, "nbdmirror");
  res.set(http::field::content_type, answer.content_type);
  if (answer.allow_header) {
    res.set(http::field::allow, "GET, HEAD");
  }
  res.keep_alive(keep_alive);
  const size_t body_bytes = answer.body.size();
  if (!head_only) {
    res.body() = std::move(answer.body);
  }
  res.prepare_payload();
  if (head_only) {
    res.content_length(body_bytes);
  }
  boost::system::error_code ec;
  stream.expires_after(MetricsServer::kRequestTimeout);
  if (head_only) {
    http::response_serializer<http::string_body> sr{res};
    sr.split(true);
    co_await http::async_write_header(stream, sr, asio::redirect_error(asio::use_awaitable, ec));
  } else {
    co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
  }
  co_return ec;
}

bool IsHttpParseError(const boost::system::error_code& ec) {
  return &ec.category() == &http::make_error_code(http::error::bad_method).category();
}

}  // namespace

MetricsServer::MetricsServer(asio::io_context& io, Render render)
    : io_(io), shared_(std::make_shared<Shared>(Shared{std::move(render)})), acceptor_(io) {}

MetricsServer::~MetricsServer() = default;

Status MetricsServer::Listen(const base::Endpoint& endpoint) {
  if (endpoint.is_unix) {
    return Status::Error(EINVAL, "--metrics takes HOST:PORT (Prometheus scrapes over TCP)");
  }
  auto resolved = endpoint.Resolve();
  if (!resolved.ok()) {
    return resolved.status();
  }
  boost::system::error_code ec;
  // The generic endpoint holds a sockaddr_in or sockaddr_in6; TCP's acceptor wants its own type.
  asio::ip::tcp::endpoint tcp_endpoint;
  std::memcpy(tcp_endpoint.data(), resolved.value().data(), resolved.value().size());
  tcp_endpoint.resize(resolved.value().size());
  acceptor_.open(tcp_endpoint.protocol(), ec);
  if (!ec) {
    acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  }
  if (!ec) {
    acceptor_.bind(tcp_endpoint, ec);
  }
  if (!ec) {
    acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  }
  if (ec) {
    return Status::Error(ec.value(), "cannot serve metrics on " + endpoint.ToString());
  }
  spdlog::info("serving Prometheus metrics on http://{}/metrics", endpoint.ToString());
  asio::co_spawn(io_, AcceptLoop(), asio::detached);
  return Status::Ok();
}

asio::awaitable<void> MetricsServer::AcceptLoop() {
  bool failing = false;
  for (;;) {
    asio::ip::tcp::socket socket(io_);
    boost::system::error_code ec;
    co_await acceptor_.async_accept(socket, asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted) {
      co_return;
    }
    if (ec == asio::error::connection_aborted) {
      continue;
    }
    if (ec) {
      // Out of descriptors or memory: retrying at once would spin the loop that also carries
      // the data path. Pause, and say so once per episode.
      if (!failing) {
        spdlog::warn("metrics: accepting a connection: {}; retrying every 100 ms", ec.message());
      }
      failing = true;
      asio::steady_timer pause(io_, std::chrono::milliseconds(100));
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    failing = false;
    if (shared_->connections >= kMaxConnections) {
      spdlog::warn("metrics: {} connections open already; closing a new one", shared_->connections);
      socket.close(ec);
      continue;
    }
    // Counted here, not when Serve starts running, so a burst of connections cannot all pass the
    // check before the first of them is counted.
    ++shared_->connections;
    asio::co_spawn(io_, Serve(shared_, std::move(socket)), asio::detached);
  }
}

namespace {

// After a refusal: stop sending, then read and drop what the client still sends (briefly), so
// the close does not reset the connection and destroy the answer before the client reads it.
asio::awaitable<void> CloseAfterRefusal(beast::tcp_stream& stream) {
  boost::system::error_code ec;
  stream.socket().shutdown(asio::ip::tcp::socket::shutdown_send, ec);
  stream.expires_after(std::chrono::seconds(1));
  std::array<char, 4096> scratch;
  for (size_t drained = 0; !ec && drained < (1u << 20);) {
    drained += co_await stream.async_read_some(asio::buffer(scratch),
                                               asio::redirect_error(asio::use_awaitable, ec));
  }
}

}  // namespace

asio::awaitable<void> MetricsServer::Serve(std::shared_ptr<Shared> shared,
                                           asio::ip::tcp::socket socket) {
  // Runs at the end, also when the io_context destroys this coroutine without resuming it:
  // `shared` outlives the server in that case.
  struct Leave {
    std::shared_ptr<Shared> shared;
    ~Leave() { --shared->connections; }
  } leave{shared};
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  asio::steady_timer pace(stream.get_executor());
  auto last_request = std::chrono::steady_clock::time_point::min();
  for (bool first = true;; first = false) {
    // At most one request per kMinRequestInterval per connection reaches the renderer.
    const auto now = std::chrono::steady_clock::now();
    if (!first && now - last_request < kMinRequestInterval) {
      boost::system::error_code ignored;
      pace.expires_after(kMinRequestInterval - (now - last_request));
      co_await pace.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    http::request_parser<http::empty_body> parser;
    parser.header_limit(kHeaderLimitBytes);
    parser.body_limit(0);
    stream.expires_after(first ? kRequestTimeout : kIdleTimeout);
    boost::system::error_code ec;
    co_await http::async_read(stream, buffer, parser,
                              asio::redirect_error(asio::use_awaitable, ec));
    last_request = std::chrono::steady_clock::now();
    if (ec) {
      // A malformed, oversized or body-carrying request gets an answer, then the connection
      // closes (its remaining bytes cannot be trusted to frame another request). A timeout, a
      // reset or a clean close just ends it.
      Answer refusal;
      if (ec == http::error::header_limit) {
        refusal = {http::status::request_header_fields_too_large, "headers too large\n"};
      } else if (ec == http::error::body_limit) {
        refusal = {http::status::payload_too_large, "no request body is accepted\n"};
      } else if (IsHttpParseError(ec) && ec != http::error::end_of_stream &&
                 ec != http::error::partial_message) {
        refusal = {http::status::bad_request, "bad request: " + ec.message() + "\n"};
      } else {
        co_return;
      }
      if (!co_await Send(stream, std::move(refusal), 11, false, false)) {
        co_await CloseAfterRefusal(stream);
      }
      co_return;
    }
    const http::request<http::empty_body>& req = parser.get();
    const bool head = req.method() == http::verb::head;
    // The path without a query string (a scrape config may add parameters; none are used).
    const std::string_view target(req.target().data(), req.target().size());
    const std::string_view path = target.substr(0, target.find('?'));
    Answer answer;
    if (req.method() != http::verb::get && !head) {
      answer = {http::status::method_not_allowed, "only GET and HEAD\n"};
      answer.allow_header = true;
    } else if (path == "/metrics") {
      ++shared->scrapes;
      answer.body = shared->render();
      answer.content_type = kExpositionType;
    } else if (path == "/") {
      answer.body = "nbdmirror: metrics at /metrics\n";
    } else {
      answer = {http::status::not_found, "not found; metrics are at /metrics\n"};
    }
    ec = co_await Send(stream, std::move(answer), req.version(), req.keep_alive(), head);
    if (ec || !req.keep_alive()) {
      stream.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ec);
      co_return;
    }
  }
}

}  // namespace mirror
