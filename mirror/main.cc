// nbdmirror: the program. Parses the command line and hands over to the daemon, or asks a
// running daemon for its status.

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sched.h>
#include <sys/resource.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "base/cpu_affinity.h"
#include "base/endpoint.h"
#include "mirror/control_server.h"
#include "mirror/daemon.h"

namespace {

constexpr uint16_t kDefaultNbdPort = 10809;
constexpr uint16_t kDefaultPeerPort = 7790;
constexpr uint16_t kDefaultMetricsPort = 9790;

struct RawFlags {
  std::vector<std::string> nbd;
  std::string listen;
  std::string peer;
  std::string metrics;
  uint64_t buffer_mib = 64;
  bool no_direct_io = false;
  uint64_t peer_timeout_ms = 5000;
  uint64_t peer_ack_timeout_ms = 30000;
  std::string resync_rate = "0";
  uint64_t bitmap_region_kib = 0;
  bool no_write_intent_bitmap = false;
  uint64_t bitmap_clean_ms = 5000;
  std::string bitmap_keep_marked = "4G";
  std::optional<int> nice;
  std::optional<std::string> cpu_affinity;
};

// --nice: the daemon's CPU priority, set before any of its threads (io_uring workers included)
// exist, so they all inherit it. A request that cannot be honoured stops the start: an operator
// who asked for it would otherwise get the slower behaviour it was meant to avoid, silently.
base::Status ApplyNice(const std::optional<int>& nice) {
  if (!nice) {
    return base::Status::Ok();
  }
  if (::setpriority(PRIO_PROCESS, 0, *nice) != 0) {
    const int err = errno;
    return base::Status::Error(err, "--nice " + std::to_string(*nice) +
                                        ": cannot set the CPU priority: " + std::strerror(err) +
                                        (err == EACCES || err == EPERM
                                             ? " (a negative value needs root or CAP_SYS_NICE)"
                                             : ""));
  }
  spdlog::info("CPU priority: nice {}", *nice);
  return base::Status::Ok();
}

// --cpu-affinity: like --nice, set before any thread exists, so the io_uring workers are
// restricted too; a list that cannot be honoured stops the start.
base::Status ApplyAffinityFlag(const std::optional<std::string>& text) {
  if (!text) {
    return base::Status::Ok();
  }
  base::Result<std::set<int>> cpus = base::ParseCpuList(*text, CPU_SETSIZE);
  if (!cpus.ok()) {
    return base::Status::Error(EINVAL, "--cpu-affinity: " + cpus.status().message());
  }
  if (base::Status st = base::ApplyCpuAffinity(cpus.value()); !st.ok()) {
    return base::Status::Error(st.errno_value(), "--cpu-affinity: " + st.message());
  }
  spdlog::info("CPU affinity: {}", base::FormatCpuList(cpus.value()));
  return base::Status::Ok();
}

// "0", "40M", "512K", "1G", "100000": bytes (K, M, G are powers of 1024). `flag` names the
// option in the error.
base::Result<uint64_t> ParseBytes(const std::string& flag, const std::string& text) {
  uint64_t value = 0;
  size_t used = 0;
  try {
    value = std::stoull(text, &used);
  } catch (...) {
    return base::Status::Error(EINVAL, flag + " takes a number with an optional K, M or G");
  }
  const std::string unit = text.substr(used);
  const uint64_t scale = unit.empty() ? 1
                         : unit == "K" || unit == "k" ? 1024
                         : unit == "M" || unit == "m" ? 1024 * 1024
                         : unit == "G" || unit == "g" ? 1024ull * 1024 * 1024
                                                      : 0;
  if (scale == 0 || text.empty() || text[0] == '-' ||
      value > std::numeric_limits<uint64_t>::max() / scale) {
    return base::Status::Error(EINVAL, flag + " takes a number with an optional K, M or G");
  }
  return value * scale;
}

base::Status Resolve(const RawFlags& raw, mirror::DaemonOptions& options) {
  if (options.client_stall_timeout_ms != 0 && options.client_stall_timeout_ms < 100) {
    // The watch looks every half timeout: a few milliseconds would be a busy loop.
    return base::Status::Error(EINVAL, "--client-stall-timeout-ms takes 0 (never) or at least 100");
  }
  for (const std::string& spec : raw.nbd) {
    auto endpoint = base::ParseEndpoint(spec, kDefaultNbdPort);
    if (!endpoint.ok()) {
      return base::Status::Error(EINVAL, "--nbd " + spec + ": " + endpoint.status().message());
    }
    options.nbd_endpoints.push_back(endpoint.value());
  }
  if (!raw.listen.empty()) {
    auto endpoint = base::ParseEndpoint(raw.listen, kDefaultPeerPort);
    if (!endpoint.ok() || endpoint.value().is_unix) {
      return base::Status::Error(EINVAL, "--listen takes HOST[:PORT]");
    }
    options.listen = endpoint.value();
  }
  if (!raw.metrics.empty()) {
    auto endpoint = base::ParseEndpoint(raw.metrics, kDefaultMetricsPort);
    if (!endpoint.ok() || endpoint.value().is_unix) {
      return base::Status::Error(EINVAL, "--metrics takes HOST[:PORT] or :PORT");
    }
    options.metrics = endpoint.value();
  }
  if (!raw.peer.empty()) {
    const size_t eq = raw.peer.find('=');
    if (eq == std::string::npos || eq == 0) {
      return base::Status::Error(EINVAL, "--peer takes NAME=HOST[:PORT]");
    }
    auto endpoint = base::ParseEndpoint(raw.peer.substr(eq + 1), kDefaultPeerPort);
    if (!endpoint.ok() || endpoint.value().is_unix) {
      return base::Status::Error(EINVAL, "--peer takes NAME=HOST[:PORT]");
    }
    options.peer_node_id = raw.peer.substr(0, eq);
    options.peer_endpoint = endpoint.value();
  }
  options.direct_io = !raw.no_direct_io;
  options.buffer_budget_bytes = raw.buffer_mib << 20;
  options.peer_timeout = std::chrono::milliseconds(raw.peer_timeout_ms);
  if (raw.peer_ack_timeout_ms != 0 && raw.peer_ack_timeout_ms < 1000) {
    return base::Status::Error(EINVAL, "--peer-ack-timeout-ms takes 0 (never) or at least 1000");
  }
  options.peer_ack_timeout = std::chrono::milliseconds(raw.peer_ack_timeout_ms);
  auto rate = ParseBytes("--resync-rate", raw.resync_rate);
  if (!rate.ok()) {
    return rate.status();
  }
  options.resync_rate_bytes_per_s = rate.value();
  const uint64_t region = raw.bitmap_region_kib * 1024;
  if (raw.bitmap_region_kib != 0 && (region < 4096 || (region & (region - 1)) != 0)) {
    return base::Status::Error(EINVAL, "--bitmap-region-kib takes a power of two, at least 4");
  }
  options.bitmap_region_bytes = region;
  options.write_intent_bitmap = !raw.no_write_intent_bitmap;
  options.bitmap_clean_interval = std::chrono::milliseconds(raw.bitmap_clean_ms);
  auto keep = ParseBytes("--bitmap-keep-marked", raw.bitmap_keep_marked);
  if (!keep.ok()) {
    return keep.status();
  }
  options.bitmap_keep_marked_bytes = keep.value();
  return base::Status::Ok();
}

int ShowStatus(const std::string& control, const std::string& volume, bool json) {
  if (control.empty() && volume.empty()) {
    std::fprintf(stderr, "status needs --control unix:PATH or --volume FILE\n");
    return 2;
  }
  const std::string path = mirror::ControlSocketPath(control, volume);
  auto answer = mirror::QueryControlSocket(path, json ? "status" : "status-text");
  if (!answer.ok()) {
    std::fprintf(stderr, "nbdmirror status: %s\n", answer.status().ToString().c_str());
    return 1;
  }
  std::cout << answer.value();
  return 0;
}

// The value of `key` in a flat JSON object as the control socket writes it (strings unescaped
// only as far as \" and \\); empty if absent.
std::string JsonField(const std::string& json, const std::string& key) {
  const std::string needle = "\"" + key + "\": ";
  const size_t at = json.find(needle);
  if (at == std::string::npos) {
    return "";
  }
  size_t i = at + needle.size();
  std::string out;
  if (i < json.size() && json[i] == '"') {
    for (++i; i < json.size() && json[i] != '"'; ++i) {
      if (json[i] == '\\' && i + 1 < json.size()) {
        ++i;
      }
      out += json[i];
    }
    return out;
  }
  while (i < json.size() && json[i] != ',' && json[i] != '}') {
    out += json[i++];
  }
  return out;
}

// `nbdmirror verify`: starts an online verify on the primary and follows it to the end.
// Exit status: 0 the copies are identical, 1 some blocks differ (marked and being resynced),
// 2 the verify could not run or stopped early.
int RunVerify(const std::string& control, const std::string& volume) {
  const std::string path = mirror::ControlSocketPath(control, volume);
  auto started = mirror::QueryControlSocket(path, "verify");
  if (!started.ok()) {
    std::fprintf(stderr, "nbdmirror verify: %s\n", started.status().ToString().c_str());
    return 2;
  }
  if (const std::string error = JsonField(started.value(), "error"); !error.empty()) {
    std::fprintf(stderr, "nbdmirror verify: %s\n", error.c_str());
    return 2;
  }
  std::string last_line;
  while (true) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    auto status = mirror::QueryControlSocket(path, "status");
    if (!status.ok()) {
      std::fprintf(stderr, "nbdmirror verify: lost the daemon: %s\n",
                   status.status().ToString().c_str());
      return 2;
    }
    const std::string& json = status.value();
    const uint64_t done = std::strtoull(JsonField(json, "verify_done_bytes").c_str(), nullptr, 10);
    const uint64_t total =
        std::strtoull(JsonField(json, "verify_total_bytes").c_str(), nullptr, 10);
    const uint64_t differing =
        std::strtoull(JsonField(json, "verify_differing_bytes").c_str(), nullptr, 10);
    char line[160];
    std::snprintf(line, sizeof(line), "verify: %llu of %llu MiB compared, %llu bytes differ",
                  static_cast<unsigned long long>(done >> 20),
                  static_cast<unsigned long long>(total >> 20),
                  static_cast<unsigned long long>(differing));
    if (line != last_line) {
      std::printf("%s\n", line);
      std::fflush(stdout);
      last_line = line;
    }
    if (JsonField(json, "verify_finished") != "true") {
      continue;
    }
    if (const std::string error = JsonField(json, "verify_error"); !error.empty()) {
      std::printf("verify stopped early: %s\n", error.c_str());
      return 2;
    }
    if (differing == 0) {
      std::printf("verify: the copies are identical\n");
      return 0;
    }
    std::printf("verify: differing ranges (offset+length): %s\n",
                JsonField(json, "verify_differing_ranges").c_str());
    std::printf("verify: %llu bytes differ; they are marked and being resynchronised\n",
                static_cast<unsigned long long>(differing));
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"nbdmirror: a synchronously mirrored block volume, exported over NBD"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->capture_default_str();

  mirror::DaemonOptions options;
  RawFlags raw;
  CLI::App* run = app.add_subcommand("run", "serve a volume (until SIGINT/SIGTERM)");
  run->add_option("--volume", options.volume_path, "backing file or block device")->required();
  run->add_option("--node", options.node_id, "this node's name")->capture_default_str();
  run->add_flag("--primary", options.primary,
                "be the primary: export over NBD and mirror to the peer (default: secondary)");
  run->add_option("--nbd", raw.nbd,
                  "primary: where to serve NBD: unix:PATH, HOST:PORT, HOST or :PORT (TCP "
                  "defaults to 127.0.0.1:10809); repeatable");
  run->add_option("--listen", raw.listen,
                  "accept the peer on HOST[:PORT] (default port 7790); needed on a secondary");
  run->add_option("--peer", raw.peer,
                  "the other node: NAME=HOST[:PORT] (default port 7790); without it a primary "
                  "runs standalone");
  run->add_option("--mode", options.mode,
                  "sync: acknowledge once durable on both hosts (default with --peer); flush: "
                  "once written on both, FLUSH/FUA make it durable (default without a peer)")
      ->check(CLI::IsMember({"sync", "flush"}));
  run->add_option("--on-peer-loss", options.on_peer_loss,
                  "degrade: keep serving and mark the peer outdated; block: hold writes until "
                  "the peer is back and has them (they fail with ESHUTDOWN if the daemon stops first)")
      ->capture_default_str()
      ->check(CLI::IsMember({"degrade", "block"}));
  run->add_option("--peer-timeout-ms", raw.peer_timeout_ms,
                  "declare the peer lost after this long without a frame (heartbeats every "
                  "quarter of it)")
      ->capture_default_str()
      ->check(CLI::Range(100, 600000));
  run->add_option("--peer-ack-timeout-ms", raw.peer_ack_timeout_ms,
                  "primary: declare the peer lost when, with operations waiting for it, it "
                  "acknowledges nothing for this long though its heartbeats still come (a hung "
                  "disk); 0: never")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{0}, uint64_t{3600000}));
  run->add_option("--secret-file", options.secret_file,
                  "shared secret both peers prove with HMAC-SHA256 (file mode 0600)");
  run->add_option("--tls-cert", options.tls_cert_file, "TLS for the peer link: this node's cert");
  run->add_option("--tls-key", options.tls_key_file, "TLS: this node's private key");
  run->add_option("--tls-ca", options.tls_ca_file, "TLS: CA that signed the peer's certificate");
  run->add_flag("--skip-initial-sync", options.skip_initial_sync,
                "primary: the first pairing with a new peer skips the full sync (both volumes "
                "new and identical, e.g. all zeroes)");
  run->add_option("--metadata", options.metadata_path,
                  "metadata file (default VOLUME.nbdmirror-meta)");
  run->add_option("--control", options.control_path,
                  "control socket for `nbdmirror status`, unix:PATH or PATH (default "
                  "VOLUME.control)");
  run->add_option("--metrics", raw.metrics,
                  "serve Prometheus metrics over HTTP at http://HOST:PORT/metrics; HOST[:PORT] or "
                  ":PORT (host defaults to 127.0.0.1, port to 9790)");
  run->add_option("--export-name", options.export_name,
                  "export name offered to clients (\"\" is always accepted too)");
  run->add_option("--buffer-mib", raw.buffer_mib,
                  "memory for in-flight payloads (NBD clients and the peer link)")
      ->capture_default_str()
      ->check(CLI::Range(64, 4096));
  run->add_option("--client-stall-timeout-ms", options.client_stall_timeout_ms,
                  "drop an NBD client that leaves a WRITE's payload unsent, or its replies "
                  "unread, this long, so its buffers go back to the shared pool (0 = never)")
      ->capture_default_str()
      ->check(CLI::Range(0, 3600000));
  run->add_flag("--no-direct-io", raw.no_direct_io, "use the page cache instead of O_DIRECT");
  run->add_option("--resync-rate", raw.resync_rate,
                  "primary: cap resync traffic at this many bytes per second (K, M, G suffixes: "
                  "40M = 40 MiB/s); 0 = unlimited")
      ->capture_default_str();
  run->add_option("--bitmap-region-kib", raw.bitmap_region_kib,
                  "write-intent bitmap granularity for a new volume (default 64; fixed once the "
                  "metadata exists)");
  run->add_option("--bitmap-clean-ms", raw.bitmap_clean_ms,
                  "primary: length of a bitmap clean cycle: with the peer in sync, a region no "
                  "write touched for a whole cycle may be cleared (see --bitmap-keep-marked)")
      ->capture_default_str()
      ->check(CLI::Range(100, 3600000));
  run->add_option("--bitmap-keep-marked", raw.bitmap_keep_marked,
                  "primary: while writes keep coming, leave regions marked until more than this "
                  "is marked (K, M, G); a busy volume then pays no metadata writes for marking "
                  "regions again (nor, in mode flush, flushes for cleaning), and a crash resyncs "
                  "at most about this much more; an idle volume is cleaned whatever this says; "
                  "0 = clean every cycle")
      ->capture_default_str();
  run->add_option("--nice", raw.nice,
                  "CPU priority of the daemon and its threads, -20 (highest) to 19; e.g. -10 on a "
                  "host where the database's processes share the CPUs, so the mirror's wake-ups do "
                  "not queue behind them (default: inherited)")
      ->check(CLI::Range(-20, 19));
  run->add_option("--cpu-affinity", raw.cpu_affinity,
                  "run the daemon and its threads on these CPUs only, e.g. 1 or 0-3,6; on a disk "
                  "whose completions arrive on one CPU (one interrupt queue: see README), that "
                  "CPU spares each write a cross-CPU wake-up (default: inherited)");
  run->add_flag("--no-write-intent-bitmap", raw.no_write_intent_bitmap,
                "BENCHMARKING: no dirty tracking; every resync after an outage is a full one");
  run->add_option("--fault", options.fault_rules,
                  "TESTING ONLY: fail matching I/O with EIO (read:OFF:LEN, write:OFF:LEN, "
                  "datasync); repeatable");

  std::string status_control;
  std::string status_volume;
  bool status_json = false;
  CLI::App* status = app.add_subcommand("status", "show a running daemon's state");
  status->add_option("--control", status_control, "control socket (unix:PATH or PATH)");
  status->add_option("--volume", status_volume, "find the control socket from the volume path");
  status->add_flag("--json", status_json, "machine-readable output (keys documented in README)");

  std::string verify_control;
  std::string verify_volume;
  CLI::App* verify = app.add_subcommand(
      "verify",
      "on a running primary: compare both copies online by block digests, report the ranges "
      "that differ and resynchronise them (exit 0 identical, 1 differences found, 2 error)");
  verify->add_option("--control", verify_control, "the primary's control socket");
  verify->add_option("--volume", verify_volume, "find the control socket from the volume path");

  std::string discard_volume;
  std::string discard_metadata;
  CLI::App* discard = app.add_subcommand(
      "discard-changes",
      "on a STOPPED node: give up the writes this copy made without its peer (split brain, or "
      "a secondary that is ahead); it becomes Outdated and is resynchronised from the peer when "
      "started as secondary");
  discard->add_option("--volume", discard_volume, "the volume whose changes are discarded")
      ->required();
  discard->add_option("--metadata", discard_metadata,
                      "metadata file (default VOLUME.nbdmirror-meta)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every usage error exits 2, as the other refusals of a bad
    // command line below do (CLI11 would use its own codes, e.g. 105 for a value out of range).
    return app.exit(e) == 0 ? 0 : 2;
  }

  auto level = spdlog::level::from_str(log_level);
  if (level == spdlog::level::off && log_level != "off") {
    std::fprintf(stderr, "unknown --log-level %s\n", log_level.c_str());
    return 2;
  }
  // Logs go to stderr; stdout stays free for command output (status, --json).
  spdlog::set_default_logger(spdlog::stderr_color_mt("nbdmirror"));
  spdlog::set_level(level);
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");

  if (*status) {
    return ShowStatus(status_control, status_volume, status_json);
  }
  if (*verify) {
    if (verify_control.empty() && verify_volume.empty()) {
      std::fprintf(stderr, "verify needs --control unix:PATH or --volume FILE\n");
      return 2;
    }
    return RunVerify(verify_control, verify_volume);
  }
  if (*discard) {
    base::Status st = mirror::DiscardChanges(discard_volume, discard_metadata);
    if (!st.ok()) {
      spdlog::error("discard-changes: {}", st.ToString());
      return 1;
    }
    return 0;
  }
  if (base::Status st = Resolve(raw, options); !st.ok()) {
    spdlog::error("{}", st.message());
    return 2;
  }
  if (base::Status st = ApplyAffinityFlag(raw.cpu_affinity); !st.ok()) {
    spdlog::error("{}", st.message());
    return 2;
  }
  if (base::Status st = ApplyNice(raw.nice); !st.ok()) {
    spdlog::error("{}", st.message());
    return 2;
  }
  base::Status st = mirror::RunDaemon(options);
  if (!st.ok()) {
    spdlog::error("{}", st.ToString());
    return 1;
  }
  return 0;
}
