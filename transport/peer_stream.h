#pragma once
// PeerStream: one TCP connection to the peer, plain or inside TLS (OpenSSL through Asio).
// Coroutine reads and writes with errors as Status values; loop thread only.

#include <boost/asio/ssl.hpp>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/asio.h"
#include "base/status.h"

namespace transport {

struct TlsOptions {
  std::string cert_file;  // This node's certificate (PEM).
  std::string key_file;   // Its private key (PEM).
  std::string ca_file;    // The CA that signed the peer's certificate; both sides verify.
  bool enabled() const { return !cert_file.empty(); }
};

// Builds the TLS context for either side: TLS 1.2+, certificates verified both ways.
base::Result<std::shared_ptr<asio::ssl::context>> MakeTlsContext(const TlsOptions& options);

class PeerStream {
 public:
  using Tcp = asio::ip::tcp::socket;

  // `tls` may be null for plain TCP; otherwise it must outlive the stream.
  PeerStream(Tcp socket, asio::ssl::context* tls);

  // Runs the TLS handshake (no-op without TLS). `dialer` picks the client side.
  asio::awaitable<base::Status> Handshake(bool dialer);
  asio::awaitable<base::Status> ReadExact(asio::mutable_buffer buffer);
  // Reads what is available (at least one byte).
  asio::awaitable<base::Result<size_t>> ReadSome(asio::mutable_buffer buffer);
  // Sends all of `buffers`; may consume the vector (plain TCP sends what it can on the spot,
  // without a trip round the loop).
  asio::awaitable<base::Status> WriteAll(std::vector<asio::const_buffer>& buffers);
  // One non-blocking send of what the socket takes now; returns the bytes sent. Over TLS it
  // sends nothing (a TLS record cannot be cut short and finished later by another call).
  size_t WriteNow(std::span<const asio::const_buffer> buffers, boost::system::error_code& ec);
  void Close();

  const std::string& remote() const { return remote_; }
  asio::any_io_executor executor() { return tcp().get_executor(); }

 private:
  Tcp& tcp() { return tls_ ? tls_->next_layer() : *plain_; }

  std::optional<Tcp> plain_;
  std::optional<asio::ssl::stream<Tcp>> tls_;
  std::string remote_;
};

}  // namespace transport
