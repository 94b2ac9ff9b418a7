#include "base/endpoint.h"

#include <charconv>

namespace base {

std::string Endpoint::ToString() const {
  if (is_unix) {
    return "unix:" + path;
  }
  if (host.find(':') != std::string::npos) {
    return "[" + host + "]:" + std::to_string(port);
  }
  return host + ":" + std::to_string(port);
}

Result<Endpoint> ParseEndpoint(const std::string& text, uint16_t default_port) {
  Endpoint ep;
  if (text.rfind("unix:", 0) == 0) {
    ep.is_unix = true;
    ep.path = text.substr(5);
    if (ep.path.empty()) {
      return Status::Error(EINVAL, "empty unix socket path in '" + text + "'");
    }
    if (ep.path.size() >= sizeof(sockaddr_un::sun_path)) {
      return Status::Error(ENAMETOOLONG, "unix socket path too long: '" + ep.path + "'");
    }
    return ep;
  }
  std::string host = text;
  std::string port_text;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string::npos) {
      return Status::Error(EINVAL, "unbalanced '[' in '" + text + "'");
    }
    host = text.substr(1, close - 1);
    if (close + 1 < text.size()) {
      if (text[close + 1] != ':') {
        return Status::Error(EINVAL, "expected ':' after ']' in '" + text + "'");
      }
      port_text = text.substr(close + 2);
    }
  } else if (const size_t colon = text.rfind(':'); colon != std::string::npos) {
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
  }
  ep.host = host.empty() ? "127.0.0.1" : host;
  ep.port = default_port;
  if (!port_text.empty()) {
    unsigned value = 0;
    const auto [end, err] =
        std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
    if (err != std::errc() || end != port_text.data() + port_text.size() || value == 0 ||
        value > 65535) {
      return Status::Error(EINVAL, "bad port '" + port_text + "' in '" + text + "'");
    }
    ep.port = static_cast<uint16_t>(value);
  }
  return ep;
}

Result<asio::generic::stream_protocol::endpoint> Endpoint::Resolve() const {
  if (is_unix) {
    return asio::generic::stream_protocol::endpoint(asio::local::stream_protocol::endpoint(path));
  }
  asio::io_context io;
  asio::ip::tcp::resolver resolver(io);
  boost::system::error_code ec;
  auto results = resolver.resolve(host, std::to_string(port), ec);
  if (ec || results.empty()) {
    return Status::Error(EHOSTUNREACH, "cannot resolve '" + host + "': " + ec.message());
  }
  return asio::generic::stream_protocol::endpoint(results.begin()->endpoint());
}

}  // namespace base
