// nbdmirror: the program. Parses the command line and hands over to the daemon.

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>

#include "base/endpoint.h"
#include "mirror/daemon.h"

namespace {

constexpr uint16_t kDefaultNbdPort = 10809;

int Run(const mirror::DaemonOptions& parsed, const std::vector<std::string>& nbd_specs) {
  mirror::DaemonOptions options = parsed;
  for (const std::string& spec : nbd_specs) {
    auto endpoint = base::ParseEndpoint(spec, kDefaultNbdPort);
    if (!endpoint.ok()) {
      spdlog::error("--nbd {}: {}", spec, endpoint.status().message());
      return 2;
    }
    options.nbd_endpoints.push_back(endpoint.value());
  }
  base::Status st = mirror::RunDaemon(options);
  if (!st.ok()) {
    spdlog::error("{}", st.ToString());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"nbdmirror: a synchronously mirrored block volume, exported over NBD"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->capture_default_str();

  mirror::DaemonOptions options;
  std::vector<std::string> nbd_specs;
  uint64_t buffer_mib = options.buffer_budget_bytes >> 20;
  bool no_direct_io = false;
  CLI::App* run = app.add_subcommand("run", "serve a volume (until SIGINT/SIGTERM)");
  run->add_option("--volume", options.volume_path, "backing file or block device")->required();
  run->add_flag("--primary", options.primary, "export the volume over NBD as the primary");
  run->add_option("--nbd", nbd_specs,
                  "where to serve NBD: unix:PATH, HOST:PORT, HOST or :PORT (TCP defaults to "
                  "127.0.0.1:10809); repeatable");
  run->add_option("--export-name", options.export_name,
                  "export name offered to clients (\"\" is always accepted too)");
  run->add_option("--buffer-mib", buffer_mib,
                  "memory for in-flight request payloads, shared by all clients")
      ->capture_default_str()
      ->check(CLI::Range(64, 4096));
  run->add_flag("--no-direct-io", no_direct_io, "use the page cache instead of O_DIRECT");
  run->add_option("--fault", options.fault_rules,
                  "TESTING ONLY: fail matching I/O with EIO (read:OFF:LEN, write:OFF:LEN, "
                  "datasync); repeatable");

  CLI11_PARSE(app, argc, argv);

  auto level = spdlog::level::from_str(log_level);
  if (level == spdlog::level::off && log_level != "off") {
    std::fprintf(stderr, "unknown --log-level %s\n", log_level.c_str());
    return 2;
  }
  // Logs go to stderr; stdout stays free for command output (status, --json).
  spdlog::set_default_logger(spdlog::stderr_color_mt("nbdmirror"));
  spdlog::set_level(level);
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");

  if (*run) {
    options.direct_io = !no_direct_io;
    options.buffer_budget_bytes = buffer_mib << 20;
    return Run(options, nbd_specs);
  }
  return 2;
}
