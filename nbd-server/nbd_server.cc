#include "nbd-server/nbd_server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nbd-server/nbd_connection.h"

namespace nbd {
namespace {

constexpr int kSendBufferBytes = 4 << 20;

}  // namespace

using base::Status;

NbdServer::NbdServer(asio::io_context& io, BlockDevice& device, const ExportInfo& info,
                     base::BufferPool& pool)
    : io_(io), device_(device), info_(info), pool_(pool) {}

NbdServer::~NbdServer() {
  for (const std::string& path : unix_paths_) {
    ::unlink(path.c_str());
  }
}

Status NbdServer::Listen(const base::Endpoint& endpoint) {
  auto resolved = endpoint.Resolve();
  if (!resolved.ok()) {
    return resolved.status();
  }
  if (endpoint.is_unix) {
    struct stat st {};
    if (::lstat(endpoint.path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return Status::Error(EEXIST, endpoint.path + " exists and is not a socket");
      }
      ::unlink(endpoint.path.c_str());
    }
  }
  auto acceptor = std::make_unique<Acceptor>(io_);
  boost::system::error_code ec;
  acceptor->open(resolved.value().protocol(), ec);
  if (!ec && !endpoint.is_unix) {
    acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  }
  if (!ec) {
    acceptor->bind(resolved.value(), ec);
  }
  if (!ec) {
    acceptor->listen(asio::socket_base::max_listen_connections, ec);
  }
  if (ec) {
    return Status::Error(ec.value(), "cannot listen on " + endpoint.ToString() + ": " +
                                         ec.message());
  }
  if (endpoint.is_unix) {
    unix_paths_.push_back(endpoint.path);
  }
  spdlog::info("serving NBD on {}", endpoint.ToString());
  asio::co_spawn(io_, AcceptLoop(*acceptor, endpoint.ToString()), asio::detached);
  acceptors_.push_back(std::move(acceptor));
  return Status::Ok();
}

asio::awaitable<void> NbdServer::AcceptLoop(Acceptor& acceptor, std::string name) {
  while (!stopping_) {
    boost::system::error_code ec;
    NbdConnection::Socket socket(io_);
    co_await acceptor.async_accept(socket, asio::redirect_error(asio::use_awaitable, ec));
    if (stopping_) {
      break;
    }
    if (ec) {
      spdlog::warn("accept on {}: {}", name, ec.message());
      continue;
    }
    if (socket.local_endpoint(ec).protocol().family() != AF_UNIX) {
      // Replies are written in whole batches; Nagle would only delay them.
      const int one = 1;
      ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    // A 1 MiB read reply is written in one piece only if the socket can queue it: with the
    // default buffer (~200 KiB) it went out in ~18 sends with an epoll_wait for room between
    // each. The kernel caps the request at net.core.wmem_max; failure only costs speed.
    socket.set_option(asio::socket_base::send_buffer_size(kSendBufferBytes), ec);
    const std::string client = name + "#" + std::to_string(next_client_id_++);
    auto connection =
        std::make_shared<NbdConnection>(std::move(socket), device_, info_, pool_, client);
    connections_[connection.get()] = connection;
    spdlog::debug("nbd {}: connected", client);
    asio::co_spawn(io_, Serve(std::move(connection)), asio::detached);
  }
}

asio::awaitable<void> NbdServer::Serve(std::shared_ptr<NbdConnection> connection) {
  co_await connection->Run();
  connections_.erase(connection.get());
  MaybeDrained();
}

void NbdServer::Stop(std::function<void()> drained, std::chrono::milliseconds grace) {
  stopping_ = true;
  drained_ = std::move(drained);
  for (auto& acceptor : acceptors_) {
    boost::system::error_code ignored;
    acceptor->close(ignored);
  }
  for (auto& [raw, weak] : connections_) {
    if (auto connection = weak.lock()) {
      connection->Stop();
    }
  }
  grace_timer_ = std::make_unique<asio::steady_timer>(io_, grace);
  grace_timer_->async_wait([this](const boost::system::error_code& ec) {
    if (ec) {
      return;
    }
    for (auto& [raw, weak] : connections_) {
      if (auto connection = weak.lock()) {
        spdlog::warn("a client has not taken its replies; closing its connection");
        connection->Abort();
      }
    }
  });
  // Reported from the loop, never from inside Stop().
  asio::post(io_, [this] { MaybeDrained(); });
}

void NbdServer::MaybeDrained() {
  if (stopping_ && connections_.empty() && drained_) {
    auto drained = std::move(drained_);
    drained_ = nullptr;
    if (grace_timer_) {
      grace_timer_->cancel();
    }
    drained();
  }
}

}  // namespace nbd
