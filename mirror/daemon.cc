#include "mirror/daemon.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <memory>

#include "mirror/fault_injecting_store.h"
#include "mirror/uring_store.h"
#include "mirror/volume.h"
#include "nbd-server/buffer_pool.h"
#include "nbd-server/nbd_server.h"

namespace mirror {

using base::Status;

Status RunDaemon(const DaemonOptions& options) {
  // A client that vanishes with replies unread must not kill us.
  ::signal(SIGPIPE, SIG_IGN);
  if (!options.primary) {
    return Status::Error(EINVAL,
                         "only --primary is supported without a peer; give --primary to export "
                         "the volume");
  }
  if (options.nbd_endpoints.empty()) {
    return Status::Error(EINVAL, "a primary needs --nbd ENDPOINT");
  }
  asio::io_context io(1);

  UringStoreOptions store_options;
  store_options.direct_io = options.direct_io;
  auto opened = UringStore::Open(io, options.volume_path, store_options);
  if (!opened.ok()) {
    return opened.status();
  }
  std::unique_ptr<UringStore> uring = opened.TakeValue();
  LocalStore* store = uring.get();

  std::vector<FaultRule> rules;
  for (const std::string& text : options.fault_rules) {
    auto rule = ParseFaultRule(text);
    if (!rule.ok()) {
      return rule.status();
    }
    rules.push_back(rule.value());
  }
  std::unique_ptr<FaultInjectingStore> faulty;
  if (!rules.empty()) {
    faulty = std::make_unique<FaultInjectingStore>(io, *uring, std::move(rules));
    store = faulty.get();
    spdlog::warn("fault injection is on: {}", faulty->Describe());
  }
  spdlog::info("volume {}: {} bytes", store->Describe(), store->size_bytes());

  Volume volume(io, *store);
  nbd::ExportInfo info;
  info.name = options.export_name;
  info.description = "nbdmirror volume " + options.volume_path;
  info.size_bytes = volume.size_bytes();
  // Advertise the direct-I/O granularity; smaller requests still work, through the page cache.
  info.min_block_bytes = volume.size_bytes() % 512 == 0 ? 512 : 1;
  info.preferred_block_bytes = 4096;
  nbd::BufferPool pool(options.buffer_budget_bytes);
  nbd::NbdServer server(io, volume, info, pool);
  for (const base::Endpoint& endpoint : options.nbd_endpoints) {
    if (Status st = server.Listen(endpoint); !st.ok()) {
      return st;
    }
  }

  Status exit_status;
  bool stopping = false;
  asio::signal_set signals(io, SIGINT, SIGTERM);
  std::function<void()> wait_signal = [&] {
    signals.async_wait([&](const boost::system::error_code& ec, int signo) {
      if (ec) {
        return;
      }
      if (stopping) {
        spdlog::warn("signal {} again: still draining in-flight requests", signo);
        wait_signal();
        return;
      }
      stopping = true;
      spdlog::info("signal {}: draining {} connection(s)", signo, server.connection_count());
      server.Stop([&] {
        Status flushed = volume.Flush([&](Status st) {
          if (!st.ok()) {
            exit_status = Status::Error(EIO, "final datasync failed: " + st.ToString());
          } else {
            spdlog::info("drained and synced; exiting");
          }
          io.stop();
        });
        if (!flushed.ok()) {
          exit_status = flushed;
          io.stop();
        }
      });
      wait_signal();
    });
  };
  wait_signal();
  spdlog::info("ready");
  io.run();
  return exit_status;
}

}  // namespace mirror
