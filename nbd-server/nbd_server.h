#pragma once
// NbdServer: listens on Unix or TCP endpoints and runs one NbdConnection per client, all on
// the caller's io_context, all serving the same BlockDevice.
//
// Every connection serves the same device, and the device's Flush covers writes completed on
// any connection, which is what lets us advertise CAN_MULTI_CONN.

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/asio.h"
#include "base/endpoint.h"
#include "base/status.h"
#include "nbd-server/block_device.h"
#include "base/buffer_pool.h"
#include "nbd-server/export_info.h"

namespace nbd {

class NbdConnection;

class NbdServer {
 public:
  // All borrowed; they must outlive the server.
  NbdServer(asio::io_context& io, BlockDevice& device, const ExportInfo& info, base::BufferPool& pool);
  ~NbdServer();

  // Binds and starts accepting. A stale Unix socket file is replaced; any other file at that
  // path is an error.
  base::Status Listen(const base::Endpoint& endpoint);

  // Stops accepting, stops every connection's reader, and calls `drained` once every
  // connection has finished its in-flight requests and closed. A client that has not taken its
  // replies within `grace` (it stopped reading its socket) is cut off; its requests still
  // finish on the device, unacknowledged.
  void Stop(std::function<void()> drained,
            std::chrono::milliseconds grace = std::chrono::seconds(10));

  size_t connection_count() const { return connections_.size(); }

 private:
  using Acceptor = asio::basic_socket_acceptor<asio::generic::stream_protocol>;
  asio::awaitable<void> AcceptLoop(Acceptor& acceptor, std::string name);
  asio::awaitable<void> Serve(std::shared_ptr<NbdConnection> connection);
  void MaybeDrained();

  asio::io_context& io_;
  BlockDevice& device_;
  const ExportInfo& info_;
  base::BufferPool& pool_;
  std::vector<std::unique_ptr<Acceptor>> acceptors_;
  std::vector<std::string> unix_paths_;
  std::unordered_map<NbdConnection*, std::weak_ptr<NbdConnection>> connections_;
  uint64_t next_client_id_ = 1;
  bool stopping_ = false;
  std::function<void()> drained_;
  std::unique_ptr<asio::steady_timer> grace_timer_;
};

}  // namespace nbd
