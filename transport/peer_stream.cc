#include "transport/peer_stream.h"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include "base/gathered_write.h"

namespace transport {

using base::Status;

namespace {

Status StreamError(const boost::system::error_code& ec, const char* what) {
  if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated) {
    return Status::Error(ECONNRESET, std::string(what) + ": peer closed the connection");
  }
  const int value = ec.category() == asio::error::get_system_category() && ec.value() > 0
                        ? ec.value()
                        : EPROTO;
  return Status::Error(value, std::string(what) + ": " + ec.message());
}

}  // namespace

base::Result<std::shared_ptr<asio::ssl::context>> MakeTlsContext(const TlsOptions& options) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls);
  boost::system::error_code ec;
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                       asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                       asio::ssl::context::no_tlsv1_1,
                   ec);
  if (!ec) {
    ctx->use_certificate_chain_file(options.cert_file, ec);
  }
  if (ec) {
    return Status::Error(EINVAL, "TLS certificate " + options.cert_file + ": " + ec.message());
  }
  ctx->use_private_key_file(options.key_file, asio::ssl::context::pem, ec);
  if (ec) {
    return Status::Error(EINVAL, "TLS key " + options.key_file + ": " + ec.message());
  }
  if (options.ca_file.empty()) {
    return Status::Error(EINVAL, "TLS needs --tls-ca to verify the peer");
  }
  ctx->load_verify_file(options.ca_file, ec);
  if (ec) {
    return Status::Error(EINVAL, "TLS CA " + options.ca_file + ": " + ec.message());
  }
  ctx->set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
  return ctx;
}

PeerStream::PeerStream(Tcp socket, asio::ssl::context* tls) {
  boost::system::error_code ec;
  const auto endpoint = socket.remote_endpoint(ec);
  remote_ = ec ? "?" : endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
  socket.set_option(asio::ip::tcp::no_delay(true), ec);
  if (tls != nullptr) {
    tls_.emplace(std::move(socket), *tls);
  } else {
    plain_.emplace(std::move(socket));
  }
}

asio::awaitable<Status> PeerStream::Handshake(bool dialer) {
  if (!tls_) {
    co_return Status::Ok();
  }
  boost::system::error_code ec;
  co_await tls_->async_handshake(dialer ? asio::ssl::stream_base::client
                                        : asio::ssl::stream_base::server,
                                 asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    co_return StreamError(ec, "TLS handshake");
  }
  co_return Status::Ok();
}

asio::awaitable<Status> PeerStream::ReadExact(asio::mutable_buffer buffer) {
  boost::system::error_code ec;
  if (tls_) {
    co_await asio::async_read(*tls_, buffer, base::TransferAllUncapped{},
                              asio::redirect_error(asio::use_awaitable, ec));
  } else {
    co_await asio::async_read(*plain_, buffer, base::TransferAllUncapped{},
                              asio::redirect_error(asio::use_awaitable, ec));
  }
  if (ec) {
    co_return StreamError(ec, "receive");
  }
  co_return Status::Ok();
}

asio::awaitable<base::Result<size_t>> PeerStream::ReadSome(asio::mutable_buffer buffer) {
  boost::system::error_code ec;
  size_t n = 0;
  if (tls_) {
    n = co_await tls_->async_read_some(buffer, asio::redirect_error(asio::use_awaitable, ec));
  } else {
    n = co_await plain_->async_read_some(buffer, asio::redirect_error(asio::use_awaitable, ec));
  }
  if (ec) {
    co_return StreamError(ec, "receive");
  }
  co_return n;
}

asio::awaitable<Status> PeerStream::WriteAll(std::vector<asio::const_buffer>& buffers) {
  boost::system::error_code ec;
  if (tls_) {
    co_await asio::async_write(*tls_, buffers, base::TransferAllUncapped{},
                               asio::redirect_error(asio::use_awaitable, ec));
  } else {
    ec = co_await base::WriteGathered(*plain_, buffers);
  }
  if (ec) {
    co_return StreamError(ec, "send");
  }
  co_return Status::Ok();
}

size_t PeerStream::WriteNow(std::span<const asio::const_buffer> buffers,
                            boost::system::error_code& ec) {
  if (tls_) {
    ec.clear();
    return 0;
  }
  return base::SendNow(*plain_, buffers, ec);
}

void PeerStream::Close() {
  boost::system::error_code ignored;
  tcp().shutdown(asio::socket_base::shutdown_both, ignored);
  tcp().close(ignored);
}

}  // namespace transport
