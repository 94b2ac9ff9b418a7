#pragma once
// Daemon: one `nbdmirror run` process. It opens the volume's local store, builds the Volume,
// serves it over NBD (as primary), and shuts down cleanly on SIGINT/SIGTERM: stop accepting,
// let every in-flight request finish and reply, datasync, exit.

#include <cstdint>
#include <string>
#include <vector>

#include "base/endpoint.h"
#include "base/status.h"

namespace mirror {

struct DaemonOptions {
  std::string volume_path;
  bool primary = false;
  std::vector<base::Endpoint> nbd_endpoints;
  std::string export_name;
  bool direct_io = true;
  uint64_t buffer_budget_bytes = 64ull << 20;
  std::vector<std::string> fault_rules;
};

// Runs until a signal stops it. Returns OK after a clean drain and final datasync.
base::Status RunDaemon(const DaemonOptions& options);

}  // namespace mirror
