#pragma once
// Daemon: one `nbdmirror run` process, on either host.
//
// As primary it opens the volume, exports it over NBD, and (with --peer) mirrors every write to
// the secondary through the Replicator. As secondary it waits on --listen for the primary and
// applies what it sends. Both answer `nbdmirror status` on the control socket.
//
// Shutdown (SIGINT/SIGTERM) on a primary: stop accepting NBD clients, let every request already
// read finish and reply, flush locally and to the peer, record in the metadata whether the peer
// is known to be in sync (the only way a restart can skip the full resync), close the link,
// exit 0. On a secondary: stop accepting, let applied writes finish, datasync, exit 0.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/endpoint.h"
#include "base/status.h"

namespace mirror {

struct DaemonOptions {
  std::string volume_path;
  std::string metadata_path;  // Default: VOLUME.nbdmirror-meta.
  std::string control_path;   // Default: DefaultControlPath(volume).
  bool primary = false;
  std::string node_id = "a";
  std::vector<base::Endpoint> nbd_endpoints;
  std::string export_name;
  std::optional<base::Endpoint> metrics;  // Prometheus endpoint; none by default.
  bool direct_io = true;
  uint64_t buffer_budget_bytes = 64ull << 20;
  uint32_t client_stall_timeout_ms = 60000;  // See nbd::ExportInfo::stall_timeout_ms.
  std::vector<std::string> fault_rules;

  // Mirroring.
  std::optional<base::Endpoint> listen;
  std::string peer_node_id;
  std::optional<base::Endpoint> peer_endpoint;
  std::string secret_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_ca_file;
  std::string mode;          // "sync" or "flush"; empty: sync with a peer, flush without.
  std::string on_peer_loss = "degrade";
  std::chrono::milliseconds peer_timeout{5000};
  std::chrono::milliseconds peer_ack_timeout{30000};  // 0: never.
  bool skip_initial_sync = false;

  // Dirty tracking and resync.
  uint64_t bitmap_region_bytes = 0;  // 0: 64 KiB for a new volume, the recorded one otherwise.
  bool write_intent_bitmap = true;   // false: every resync after an outage is full (benchmarks).
  uint64_t resync_rate_bytes_per_s = 0;  // 0: unlimited.
  std::chrono::milliseconds bitmap_clean_interval{5000};
  uint64_t bitmap_keep_marked_bytes = 4ull << 30;
};

// Runs until a signal stops it. Returns OK after a clean drain and final datasync.
base::Status RunDaemon(const DaemonOptions& options);

// `nbdmirror discard-changes`: on a stopped node, gives up the writes this copy made without its
// peer, so that the peer's copy wins at the next connection (the operator's answer to split
// brain or to a secondary that is ahead). The copy becomes Outdated at its bitmap's base
// generation, keeping its marks so exactly the regions it changed are overwritten. Prints what
// it did to stdout.
base::Status DiscardChanges(const std::string& volume_path, const std::string& metadata_path);

}  // namespace mirror
