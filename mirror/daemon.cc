#include "mirror/daemon.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <sstream>

#include "base/prometheus.h"
#include "mirror/control_server.h"
#include "mirror/fault_injecting_store.h"
#include "mirror/metadata.h"
#include "mirror/metrics_server.h"
#include "mirror/peer_listener.h"
#include "mirror/replica_applier.h"
#include "mirror/replicator.h"
#include "mirror/uring_store.h"
#include "mirror/volume.h"
#include "mirror/write_intent_log.h"
#include "nbd-server/nbd_server.h"
#include "transport/peer_auth.h"
#include "transport/peer_stream.h"

namespace mirror {

using base::Status;

namespace {

// Everything one daemon owns, in construction order; torn down in reverse.
struct Node {
  explicit Node(const DaemonOptions& o) : options(o), io(1) {}

  const DaemonOptions& options;
  // Declared first, destroyed last: handlers still queued in the io_context and operations
  // still owned by the store may hold its buffers until they are destroyed.
  std::unique_ptr<base::BufferPool> pool;
  asio::io_context io;
  std::unique_ptr<UringStore> uring;
  std::unique_ptr<FaultInjectingStore> faulty;
  LocalStore* store = nullptr;
  std::unique_ptr<MetadataFile> metadata;
  std::unique_ptr<UringStore> metadata_store;  // The metadata file, for bitmap pages.
  std::unique_ptr<WriteIntentLog> intent_log;
  std::shared_ptr<asio::ssl::context> tls;
  std::string secret;
  Mode mode = Mode::kSync;
  std::unique_ptr<Replicator> replicator;
  std::unique_ptr<Volume> volume;
  nbd::ExportInfo info;
  std::unique_ptr<nbd::NbdServer> nbd;
  std::unique_ptr<ReplicaApplier> applier;
  std::unique_ptr<PeerListener> listener;
  std::unique_ptr<ControlServer> control;
  std::unique_ptr<MetricsServer> metrics;
  Status exit_status;
  bool stopping = false;
};

Status OpenStore(Node& node) {
  UringStoreOptions store_options;
  store_options.direct_io = node.options.direct_io;
  auto opened = UringStore::Open(node.io, node.options.volume_path, store_options);
  if (!opened.ok()) {
    return opened.status();
  }
  node.uring = opened.TakeValue();
  node.store = node.uring.get();
  std::vector<FaultRule> rules;
  for (const std::string& text : node.options.fault_rules) {
    auto rule = ParseFaultRule(text);
    if (!rule.ok()) {
      return rule.status();
    }
    rules.push_back(rule.value());
  }
  if (!rules.empty()) {
    node.faulty = std::make_unique<FaultInjectingStore>(node.io, *node.uring, std::move(rules));
    node.store = node.faulty.get();
    spdlog::warn("fault injection is on: {}", node.faulty->Describe());
  }
  spdlog::info("volume {}: {} bytes", node.store->Describe(), node.store->size_bytes());
  return Status::Ok();
}

std::string MetadataPathOf(const DaemonOptions& o) {
  return o.metadata_path.empty() ? DefaultMetadataPath(o.volume_path) : o.metadata_path;
}

// Loads or creates the metadata and checks it fits this volume and role. Returns whether the
// peer is known to be in sync (recorded at the last clean shutdown).
base::Result<bool> OpenMetadata(Node& node) {
  const DaemonOptions& o = node.options;
  const std::string path = MetadataPathOf(o);
  auto opened = MetadataFile::Open(path);
  if (!opened.ok()) {
    return opened.status();
  }
  if (opened.value()) {
    node.metadata = std::move(*opened.value());
    const VolumeMetadata& md = node.metadata->get();
    if (md.size_bytes != node.store->size_bytes()) {
      return Status::Error(EINVAL, "volume is " + std::to_string(node.store->size_bytes()) +
                                       " bytes but its metadata " + path + " says " +
                                       std::to_string(md.size_bytes));
    }
    if (md.node_id != o.node_id) {
      return Status::Error(EINVAL, "metadata " + path + " belongs to node '" + md.node_id +
                                       "', not '" + o.node_id + "'");
    }
    if (o.bitmap_region_bytes != 0 && o.bitmap_region_bytes != md.region_bytes) {
      return Status::Error(EINVAL, "metadata " + path + " tracks " +
                                       std::to_string(md.region_bytes) +
                                       "-byte regions; the region size is fixed when a volume "
                                       "is first used");
    }
  } else {
    // A new volume: a primary's copy is the source of truth, a secondary's is unknown.
    VolumeMetadata md;
    md.size_bytes = node.store->size_bytes();
    md.node_id = o.node_id;
    md.volume_uuid = o.primary ? NewVolumeUuid() : "";
    md.disk = o.primary ? DiskState::kUpToDate : DiskState::kInconsistent;
    md.peer_disk = DiskState::kInconsistent;
    md.gens.current = o.primary ? NewGeneration() : 0;
    if (o.bitmap_region_bytes != 0) {
      md.region_bytes = o.bitmap_region_bytes;
    }
    auto created = MetadataFile::Create(path, md);
    if (!created.ok()) {
      return created.status();
    }
    node.metadata = created.TakeValue();
    spdlog::info("new volume metadata {} ({}, {}-byte bitmap regions)", path,
                 o.primary ? "primary, UpToDate" : "secondary, waiting for its first sync",
                 md.region_bytes);
  }
  const VolumeMetadata& md = node.metadata->get();
  if (o.primary && md.disk != DiskState::kUpToDate) {
    return Status::Error(EPERM, std::string("this copy is ") + DiskStateName(md.disk) +
                                    "; it cannot be primary until it has been resynchronised");
  }
  const bool peer_known_good = md.clean && md.peer_disk == DiskState::kUpToDate;
  // Until a clean shutdown says otherwise, a restart must assume the copies may differ. A
  // primary with no peer configured is a plain disk: it tracks nothing, so it gives up its
  // bitmap base and writes under a new generation; a later pairing is a full resync (the old
  // generation in its history tells the returning peer it is behind).
  Status saved = node.metadata->Update([&o](VolumeMetadata& next) {
    next.clean = false;
    if (o.primary && !o.peer_endpoint) {
      RememberGeneration(next.gens, next.gens.current);
      next.gens.current = NewGeneration();
      next.gens.current_shared = false;
      next.gens.bitmap = 0;
    }
  });
  if (!saved.ok()) {
    return saved;
  }
  return peer_known_good;
}

// The bitmap: loaded from the metadata file, written back through its own io_uring store.
Status OpenIntentLog(Node& node) {
  uint64_t torn_pages = 0;
  auto bits = node.metadata->ReadBitmap(&torn_pages);
  if (!bits.ok()) {
    return bits.status();
  }
  if (torn_pages > 0) {
    spdlog::warn("metadata {}: {} bitmap page(s) failed their checksum (torn write?); their "
                 "regions are taken as changed and will be resynchronised",
                 node.metadata->path(), torn_pages);
  }
  UringStoreOptions store_options;
  store_options.direct_io = node.options.direct_io;
  store_options.dsync = true;
  auto store = UringStore::Open(node.io, node.metadata->path(), store_options);
  if (!store.ok()) {
    return store.status();
  }
  node.metadata_store = store.TakeValue();
  const VolumeMetadata& md = node.metadata->get();
  const bool standalone = node.options.primary && !node.options.peer_endpoint;
  node.intent_log = std::make_unique<WriteIntentLog>(
      node.io, node.metadata_store.get(), md.size_bytes, md.region_bytes, bits.TakeValue(),
      node.options.write_intent_bitmap && !standalone);
  node.intent_log->set_writes_are_durable(true);
  if (!node.options.write_intent_bitmap) {
    spdlog::warn("--no-write-intent-bitmap: every resync after an outage copies the volume");
  }
  return Status::Ok();
}

Status SetUpSecurity(Node& node) {
  const DaemonOptions& o = node.options;
  if (!o.secret_file.empty()) {
    auto secret = transport::ReadSecretFile(o.secret_file);
    if (!secret.ok()) {
      return secret.status();
    }
    node.secret = secret.value();
  } else if (o.peer_endpoint || o.listen) {
    spdlog::warn("no --secret-file: the peer link is not authenticated");
  }
  transport::TlsOptions tls{o.tls_cert_file, o.tls_key_file, o.tls_ca_file};
  if (tls.enabled()) {
    auto ctx = transport::MakeTlsContext(tls);
    if (!ctx.ok()) {
      return ctx.status();
    }
    node.tls = ctx.value();
  }
  return Status::Ok();
}

transport::LinkTiming Timing(const DaemonOptions& o) {
  transport::LinkTiming timing;
  timing.timeout = o.peer_timeout;
  timing.heartbeat_interval =
      std::max(std::chrono::milliseconds(50), o.peer_timeout / 4);
  return timing;
}

// One status fact; rendered as JSON for `status --json` and as a line for people.
struct StatusField {
  std::string key;
  std::string value;
  bool is_text;
};

std::vector<StatusField> StatusFields(const Node& node) {
  const auto& md = node.metadata->get();
  std::vector<StatusField> fields;
  auto text = [&fields](const std::string& key, const std::string& value) {
    fields.push_back({key, value, true});
  };
  auto num = [&fields](const std::string& key, uint64_t value) {
    fields.push_back({key, std::to_string(value), false});
  };
  text("role", node.options.primary ? "primary" : "secondary");
  text("node_id", node.options.node_id);
  text("peer_node_id", node.options.peer_node_id);
  text("volume", node.options.volume_path);
  text("volume_uuid", md.volume_uuid);
  num("size_bytes", md.size_bytes);
  num("buffer_budget_bytes", node.pool->budget_bytes());
  num("buffer_in_use_bytes", node.pool->in_use_bytes());
  text("current_gen", GenerationText(md.gens.current));
  text("bitmap_gen", GenerationText(md.gens.bitmap));
  const bool disk_failed = (node.volume && node.volume->disk_failed()) ||
                           (node.applier && node.applier->disk_failed());
  text("disk", disk_failed ? "Failed" : DiskStateName(md.disk));
  std::string connection = "standalone";
  std::string peer_disk = "Unknown";
  uint64_t out_of_sync = 0, resync_done = 0, resync_total = 0;
  if (node.replicator) {
    const Replicator& r = *node.replicator;
    connection = ConnectionStateName(r.connection());
    peer_disk = DiskStateName(r.peer_disk());
    const ResyncProgress p = r.resync();
    resync_done = p.done_bytes;
    resync_total = p.total_bytes;
    if (r.peer_disk() != DiskState::kUpToDate) {
      // What the bitmap marks is what may differ.
      out_of_sync = node.intent_log->marked_bytes();
    }
    num("peer_ops_in_flight", r.pending_count());
    num("held_writes", r.held_count());
    text("last_peer_error", r.last_error());
    text("sync_decision", r.last_sync_kind());
    text("sync_refusal", r.sync_refusal());
    num("resync_rate_bytes_per_s", static_cast<uint64_t>(p.rate_bytes_per_s));
    num("resync_eta_s", static_cast<uint64_t>(p.eta_s + 0.5));
    num("resynced_bytes_total", r.resynced_bytes_total());
    if (const VerifyProgress* v = r.verify()) {
      fields.push_back({"verify_running", v->running ? "true" : "false", false});
      fields.push_back({"verify_finished", v->finished ? "true" : "false", false});
      num("verify_done_bytes", v->done_bytes);
      num("verify_total_bytes", v->total_bytes);
      num("verify_differing_bytes", v->differing_bytes);
      std::string ranges;
      for (const ByteRange& range : v->differing) {
        ranges += (ranges.empty() ? "" : ",") + std::to_string(range.offset_bytes) + "+" +
                  std::to_string(range.length_bytes);
      }
      text("verify_differing_ranges", ranges);
      text("verify_error", v->error);
    }
  } else if (node.applier) {
    connection = node.applier->attached() ? "connected" : "connecting";
    peer_disk = node.applier->attached() ? "UpToDate" : "Unknown";
    resync_done = node.applier->stats().resync_bytes;
    if (md.disk == DiskState::kInconsistent) {
      resync_total = md.size_bytes;
      out_of_sync = md.size_bytes > resync_done ? md.size_bytes - resync_done : 0;
    }
    text("sync_refusal", node.listener ? node.listener->sync_refusal() : "");
    const ApplierStats& as = node.applier->stats();
    num("applied_writes", as.writes);
    num("applied_bytes", as.written_bytes);
    num("ops_in_flight", as.ops_in_flight);
    num("apply_done", as.apply.count());
    num("apply_us", as.apply.sum_us());
    num("apply_flush_done", as.apply_flush.count());
    num("apply_flush_us", as.apply_flush.sum_us());
    num("apply_p50_us", node.applier->RecentApplyQuantile(0.5));
    num("apply_p99_us", node.applier->RecentApplyQuantile(0.99));
    num("datasyncs", node.applier->group_commit().datasync_count());
    num("sync_ahead_datasyncs", node.applier->group_commit().sync_ahead_count());
    num("write_through_writes", node.applier->group_commit().write_through_count());
  }
  text("connection", connection);
  text("peer_disk", peer_disk);
  {
    const WriteIntentLog& log = *node.intent_log;
    const IntentLogStats& ls = log.stats();
    fields.push_back({"split_brain",
                      (node.replicator ? node.replicator->last_sync_kind() == "split-brain"
                                       : node.listener &&
                                             node.listener->sync_refusal().find("split brain") !=
                                                 std::string::npos)
                          ? "true"
                          : "false",
                      false});
    text("write_intent_bitmap", log.enabled() ? "on" : "off");
    num("bitmap_region_bytes", log.region_bytes());
    num("marked_regions", log.marked_regions());
    num("marked_bytes", log.marked_bytes());
    num("metadata_writes", ls.page_writes + ls.datasyncs);
    const uint64_t client_writes = node.volume ? node.volume->stats().writes : 0;
    num("metadata_writes_per_1000_writes",
        client_writes == 0 ? 0 : (ls.page_writes + ls.datasyncs) * 1000 / client_writes);
  }
  num("out_of_sync_bytes", out_of_sync);
  num("resync_done_bytes", resync_done);
  num("resync_total_bytes", resync_total);
  if (node.volume) {
    const VolumeStats& s = node.volume->stats();
    text("mode", node.mode == Mode::kSync ? "sync" : "flush");
    num("writes_in_flight", s.writes_in_flight);
    num("bytes_in_flight", s.bytes_in_flight);
    num("reads", s.reads);
    num("writes", s.writes);
    num("read_bytes", s.read_bytes);
    num("written_bytes", s.written_bytes);
    num("flushes", s.flushes);
    num("flushes_without_peer", s.flushes_without_peer);
    num("degraded_writes", s.degraded_writes);
    num("errors", s.errors);
    num("datasyncs", node.volume->group_commit().datasync_count());
    num("sync_ahead_datasyncs", node.volume->group_commit().sync_ahead_count());
    num("write_through_writes", node.volume->group_commit().write_through_count());
    num("modify_done", s.modify.count());
    num("modify_us", s.modify.sum_us());
    num("modify_queue_us", s.modify_queue_us);
    num("modify_local_us", s.modify_local_us);
    num("modify_peer_done", s.modify_peer.count());
    num("modify_peer_us", s.modify_peer.sum_us());
    num("flush_done", s.flush.count());
    num("flush_us", s.flush.sum_us());
    num("flush_local_us", s.flush_local_us);
    num("flush_peer_done", s.flush_peer.count());
    num("flush_peer_us", s.flush_peer.sum_us());
    Volume& v = *node.volume;
    num("write_p50_us", v.RecentModifyQuantile(0.5));
    num("write_p99_us", v.RecentModifyQuantile(0.99));
    num("flush_p50_us", v.RecentFlushQuantile(0.5));
    num("flush_p99_us", v.RecentFlushQuantile(0.99));
  }
  return fields;
}

// How a status field appears in the Prometheus document.
struct MetricOfField {
  const char* key;     // StatusFields key.
  const char* name;    // Metric name.
  bool counter;        // Else a gauge.
  double scale;        // Multiplies the value (microseconds to seconds).
  const char* help;
};

constexpr MetricOfField kMetricsOfFields[] = {
    {"size_bytes", "nbdmirror_size_bytes", false, 1, "Size of the volume."},
    {"buffer_budget_bytes", "nbdmirror_buffer_budget_bytes", false, 1,
     "Memory for in-flight payloads, shared by NBD clients and the peer link (--buffer-mib)."},
    {"buffer_in_use_bytes", "nbdmirror_buffer_in_use_bytes", false, 1,
     "Of that, held by requests in flight now."},
    {"out_of_sync_bytes", "nbdmirror_out_of_sync_bytes", false, 1,
     "Bytes that may differ between the two copies."},
    {"resync_done_bytes", "nbdmirror_resync_done_bytes", false, 1,
     "Bytes copied by the running or last resync."},
    {"resync_total_bytes", "nbdmirror_resync_total_bytes", false, 1,
     "Bytes the running or last resync has to copy."},
    {"resync_rate_bytes_per_s", "nbdmirror_resync_rate_bytes_per_second", false, 1,
     "Current resync rate."},
    {"resync_eta_s", "nbdmirror_resync_eta_seconds", false, 1,
     "Estimated time to the end of the running resync."},
    {"resynced_bytes_total", "nbdmirror_resynced_bytes_total", true, 1,
     "Bytes copied by resyncs since the daemon started."},
    {"marked_regions", "nbdmirror_bitmap_marked_regions", false, 1,
     "Regions marked in the write-intent bitmap."},
    {"marked_bytes", "nbdmirror_bitmap_marked_bytes", false, 1,
     "Bytes covered by marked regions of the write-intent bitmap."},
    {"bitmap_region_bytes", "nbdmirror_bitmap_region_bytes", false, 1,
     "Granularity of the write-intent bitmap."},
    {"metadata_writes", "nbdmirror_metadata_writes_total", true, 1,
     "Bitmap page writes and metadata datasyncs."},
    {"split_brain", "nbdmirror_split_brain", false, 1,
     "1 while the two copies both changed without each other and syncing is refused."},
    {"peer_ops_in_flight", "nbdmirror_peer_ops_in_flight", false, 1,
     "Operations sent to the peer and not yet confirmed."},
    {"held_writes", "nbdmirror_held_writes", false, 1,
     "Writes held until the peer returns (on-peer-loss block)."},
    {"verify_running", "nbdmirror_verify_running", false, 1, "1 while an online verify runs."},
    {"verify_done_bytes", "nbdmirror_verify_done_bytes", false, 1,
     "Bytes compared by the running or last verify."},
    {"verify_total_bytes", "nbdmirror_verify_total_bytes", false, 1,
     "Bytes the running or last verify compares."},
    {"verify_differing_bytes", "nbdmirror_verify_differing_bytes", false, 1,
     "Bytes the running or last verify found different."},
    {"applied_writes", "nbdmirror_applied_writes_total", true, 1,
     "Standby: writes applied from the primary (zeroes and trims count in the apply histogram)."},
    {"applied_bytes", "nbdmirror_applied_bytes_total", true, 1,
     "Standby: bytes written from the primary's writes."},
    {"ops_in_flight", "nbdmirror_apply_ops_in_flight", false, 1,
     "Standby: operations from the primary being applied."},
    {"writes_in_flight", "nbdmirror_writes_in_flight", false, 1,
     "Modifying NBD requests not yet replied to."},
    {"bytes_in_flight", "nbdmirror_bytes_in_flight", false, 1,
     "Bytes of modifying NBD requests not yet replied to."},
    {"reads", "nbdmirror_reads_total", true, 1, "NBD READ requests."},
    {"writes", "nbdmirror_writes_total", true, 1, "NBD WRITE requests."},
    {"read_bytes", "nbdmirror_read_bytes_total", true, 1, "Bytes read by NBD clients."},
    {"written_bytes", "nbdmirror_written_bytes_total", true, 1, "Bytes written by NBD clients."},
    {"flushes", "nbdmirror_flushes_total", true, 1, "NBD FLUSH requests."},
    {"flushes_without_peer", "nbdmirror_flushes_without_peer_total", true, 1,
     "Of those, answered without a round trip to the peer: it had confirmed every write before "
     "them as durable."},
    {"degraded_writes", "nbdmirror_degraded_writes_total", true, 1,
     "Writes acknowledged without the peer (it was lost; their regions stay marked)."},
    {"errors", "nbdmirror_errors_total", true, 1, "Requests that failed with an I/O error."},
    {"datasyncs", "nbdmirror_datasyncs_total", true, 1,
     "Group-committed datasyncs of the local copy."},
    {"sync_ahead_datasyncs", "nbdmirror_sync_ahead_datasyncs_total", true, 1,
     "Of those, started ahead of an expected FLUSH (the client flushes after every few writes)."},
    {"write_through_writes", "nbdmirror_write_through_writes_total", true, 1,
     "Writes made durable by themselves (RWF_DSYNC), alone in flight and needing no datasync."},
    {"modify_queue_us", "nbdmirror_write_queue_seconds_total", true, 1e-6,
     "Time modifying requests waited for an overlapping write and their bitmap mark."},
    {"modify_local_us", "nbdmirror_write_local_seconds_total", true, 1e-6,
     "Time modifying requests spent in the local store (with its datasync when durable)."},
    {"flush_local_us", "nbdmirror_flush_local_seconds_total", true, 1e-6,
     "Time FLUSH requests spent in the local datasync."},
};

std::string MetricsText(const Node& node) {
  std::map<std::string, StatusField> fields;
  for (StatusField& f : StatusFields(node)) {
    fields[f.key] = f;
  }
  auto text = [&fields](const char* key) {
    auto it = fields.find(key);
    return it == fields.end() ? std::string() : it->second.value;
  };
  base::PrometheusText out;
  base::Labels info = {{"node_id", text("node_id")},
                       {"peer_node_id", text("peer_node_id")},
                       {"volume", text("volume")},
                       {"volume_uuid", text("volume_uuid")},
                       {"current_gen", text("current_gen")},
                       {"bitmap_gen", text("bitmap_gen")}};
  if (node.volume) {
    info.push_back({"mode", text("mode")});
  }
  out.Gauge("nbdmirror_info", "Identity of this node and volume; always 1.", 1, info);
  out.StateSet("nbdmirror_role", "This node's role.", "role", {"primary", "secondary"},
               text("role"));
  out.StateSet("nbdmirror_connection", "State of the link to the peer.", "state",
               {"connected", "connecting", "standalone"}, text("connection"));
  const std::vector<std::string> disk_states = {"UpToDate", "Outdated", "Inconsistent", "Failed"};
  out.StateSet("nbdmirror_disk", "State of this node's copy.", "state", disk_states, text("disk"));
  std::vector<std::string> peer_states = disk_states;
  peer_states.push_back("Unknown");
  out.StateSet("nbdmirror_peer_disk", "State of the peer's copy as this node knows it.", "state",
               peer_states, text("peer_disk"));
  for (const MetricOfField& m : kMetricsOfFields) {
    auto it = fields.find(m.key);
    if (it == fields.end()) {
      continue;
    }
    const std::string& v = it->second.value;
    const double value =
        v == "true" ? 1.0 : v == "false" ? 0.0 : std::strtod(v.c_str(), nullptr) * m.scale;
    if (m.counter) {
      out.Counter(m.name, m.help, value);
    } else {
      out.Gauge(m.name, m.help, value);
    }
  }
  if (node.volume) {
    const VolumeStats& s = node.volume->stats();
    out.Histogram("nbdmirror_write_duration_seconds",
                  "Modifying NBD requests (WRITE, WRITE_ZEROES, TRIM), arrival to reply.",
                  s.modify);
    out.Histogram("nbdmirror_write_peer_duration_seconds",
                  "Modifying requests confirmed by the peer: handed to the link to confirmation.",
                  s.modify_peer);
    out.Histogram("nbdmirror_flush_duration_seconds", "NBD FLUSH requests, arrival to reply.",
                  s.flush);
    out.Histogram("nbdmirror_flush_peer_duration_seconds",
                  "FLUSH requests confirmed by the peer: arrival to the peer's confirmation.",
                  s.flush_peer);
  }
  if (node.applier) {
    const ApplierStats& as = node.applier->stats();
    out.Histogram("nbdmirror_apply_duration_seconds",
                  "Standby: writes and zeroings from the primary, frame arrival to acknowledgement.",
                  as.apply);
    out.Histogram("nbdmirror_apply_flush_duration_seconds",
                  "Standby: flushes from the primary, frame arrival to acknowledgement.",
                  as.apply_flush);
  }
  if (node.metrics) {
    out.Counter("nbdmirror_metrics_scrapes_total", "Requests for /metrics answered.",
                static_cast<double>(node.metrics->scrapes()));
  }
  return out.text();
}

std::string StatusJson(const Node& node) {
  std::string out = "{";
  for (const StatusField& f : StatusFields(node)) {
    out += (out.size() > 1 ? ", " : "") + JsonString(f.key) + ": " +
           (f.is_text ? JsonString(f.value) : f.value);
  }
  return out + "}";
}

std::string StatusText(const Node& node) {
  std::string out;
  for (const StatusField& f : StatusFields(node)) {
    out += f.key + ": " + f.value + "\n";
  }
  return out;
}

Status StartPrimary(Node& node, bool peer_known_good) {
  const DaemonOptions& o = node.options;
  if (o.nbd_endpoints.empty()) {
    return Status::Error(EINVAL, "a primary needs --nbd ENDPOINT");
  }
  if (o.peer_endpoint) {
    ReplicatorOptions r;
    r.node_id = o.node_id;
    r.peer_node_id = o.peer_node_id;
    r.peer_endpoint = *o.peer_endpoint;
    r.secret = node.secret;
    r.tls = node.tls.get();
    r.timing = Timing(o);
    r.on_peer_loss = o.on_peer_loss == "block" ? PeerLossPolicy::kBlock : PeerLossPolicy::kDegrade;
    r.skip_initial_sync = o.skip_initial_sync;
    r.resync_rate_bytes_per_s = o.resync_rate_bytes_per_s;
    r.clean_interval = o.bitmap_clean_interval;
    r.keep_marked_bytes = o.bitmap_keep_marked_bytes;
    r.ack_timeout = o.peer_ack_timeout;
    node.replicator = std::make_unique<Replicator>(node.io, r, *node.metadata, *node.intent_log,
                                                   *node.pool, peer_known_good);
  }
  // Standalone, the volume tracks nothing (see OpenMetadata).
  node.volume = std::make_unique<Volume>(node.io, *node.store, node.replicator.get(), node.mode,
                                         node.replicator ? node.intent_log.get() : nullptr);
  if (node.replicator) {
    node.replicator->SetVolume(node.volume.get());
    node.replicator->Start();
  }
  node.info.name = o.export_name;
  node.info.description = "nbdmirror volume " + o.volume_path;
  node.info.size_bytes = node.volume->size_bytes();
  node.info.min_block_bytes = node.volume->size_bytes() % 512 == 0 ? 512 : 1;
  node.info.preferred_block_bytes = 4096;
  node.info.stall_timeout_ms = o.client_stall_timeout_ms;
  node.nbd = std::make_unique<nbd::NbdServer>(node.io, *node.volume, node.info, *node.pool);
  for (const base::Endpoint& endpoint : o.nbd_endpoints) {
    if (Status st = node.nbd->Listen(endpoint); !st.ok()) {
      return st;
    }
  }
  return Status::Ok();
}

// The last step of a primary's shutdown, once the final flush is done on both sides (or not).
void FinishPrimaryStop(Node& node, const Status& flushed, bool in_sync) {
  Status saved = node.metadata->Update([&](VolumeMetadata& md) {
    md.clean = flushed.ok() && (node.replicator == nullptr || in_sync);
    if (node.replicator) {
      md.peer_disk = in_sync ? DiskState::kUpToDate : node.replicator->peer_disk();
    }
  });
  if (!saved.ok()) {
    spdlog::error("recording clean shutdown: {}", saved.ToString());
  }
  if (node.replicator) {
    spdlog::info("peer {} at shutdown: {}", node.options.peer_node_id,
                 in_sync ? "in sync" : "not in sync; its marked regions will be resynchronised");
    node.replicator->Stop();
  }
  if (node.listener) {
    node.listener->Stop();
  }
  if (node.exit_status.ok()) {
    spdlog::info("drained and synced; exiting");
  } else {
    spdlog::error("drained, but {}; exiting", node.exit_status.ToString());
  }
  node.io.stop();
}

void StopPrimary(Node& node) {
  if (node.replicator) {
    node.replicator->BeginShutdown();
  }
  node.nbd->Stop([&node] {
    Status flushed = node.volume->Flush([&node](Status st) {
      // ESHUTDOWN: the local datasync succeeded but a `block` peer is away; the peer's state is
      // recorded below, and the exit is still clean.
      if (!st.ok() && st.errno_value() != ESHUTDOWN) {
        node.exit_status = Status::Error(EIO, "final datasync failed: " + st.ToString());
      }
      const bool in_sync = node.replicator && node.replicator->PeerInSync();
      if (!st.ok() || !in_sync) {
        FinishPrimaryStop(node, st, in_sync);
        return;
      }
      // Every write is drained and durable on both copies: nothing may differ, so the restart
      // need not resync the regions still marked.
      node.intent_log->ClearAll([&node, st](Status cleared) {
        if (!cleared.ok()) {
          spdlog::error("clearing the write-intent bitmap: {}", cleared.ToString());
        }
        FinishPrimaryStop(node, st, true);
      });
    });
    if (!flushed.ok()) {
      node.exit_status = flushed;
      node.io.stop();
    }
  });
}

void StopSecondary(Node& node) {
  node.listener->Stop();
  asio::co_spawn(
      node.io,
      [&node]() -> asio::awaitable<void> {
        co_await node.applier->WaitIdle();
        node.applier->FlushAll([&node](Status st) {
          if (!st.ok()) {
            node.exit_status = Status::Error(EIO, "final datasync failed: " + st.ToString());
          }
          if (st.ok()) {
            spdlog::info("applied writes drained and synced; exiting");
          }
          node.io.stop();
        });
      },
      asio::detached);
}

}  // namespace

Status RunDaemon(const DaemonOptions& options) {
  // A client that vanishes with replies unread must not kill us.
  ::signal(SIGPIPE, SIG_IGN);
  Node node(options);
  if (!options.primary && !options.listen) {
    return Status::Error(EINVAL, "a secondary needs --listen (and --peer NAME=HOST:PORT)");
  }
  if (options.peer_endpoint.has_value() != !options.peer_node_id.empty()) {
    return Status::Error(EINVAL, "--peer takes NAME=HOST:PORT");
  }
  if (!options.primary && options.peer_node_id.empty()) {
    return Status::Error(EINVAL, "a secondary needs --peer NAME=HOST:PORT naming its primary");
  }
  if (!options.mode.empty() && options.mode != "sync" && options.mode != "flush") {
    return Status::Error(EINVAL, "--mode is sync or flush");
  }
  if (options.on_peer_loss != "degrade" && options.on_peer_loss != "block") {
    return Status::Error(EINVAL, "--on-peer-loss is degrade or block");
  }
  // Without a peer there is only one disk; a plain disk's semantics (flush) is the default.
  node.mode = options.mode == "flush" || (options.mode.empty() && !options.peer_endpoint)
                  ? Mode::kFlush
                  : Mode::kSync;
  if (Status st = OpenStore(node); !st.ok()) {
    return st;
  }
  auto peer_known_good = OpenMetadata(node);
  if (!peer_known_good.ok()) {
    return peer_known_good.status();
  }
  if (Status st = OpenIntentLog(node); !st.ok()) {
    return st;
  }
  if (Status st = SetUpSecurity(node); !st.ok()) {
    return st;
  }
  node.pool = std::make_unique<base::BufferPool>(options.buffer_budget_bytes);

  PeerListenerOptions listener_options{options.node_id, options.peer_node_id, node.secret,
                                       node.tls.get(), Timing(options)};
  if (options.primary) {
    if (Status st = StartPrimary(node, peer_known_good.value()); !st.ok()) {
      return st;
    }
  } else {
    node.applier = std::make_unique<ReplicaApplier>(node.io, *node.store, *node.metadata,
                                                    *node.intent_log);
  }
  if (options.listen) {
    node.listener =
        std::make_unique<PeerListener>(node.io, listener_options, *node.metadata,
                                       *node.intent_log, *node.pool, node.applier.get());
    if (Status st = node.listener->Listen(*options.listen); !st.ok()) {
      return st;
    }
  }
  const std::string control_path = ControlSocketPath(options.control_path, options.volume_path);
  node.control = std::make_unique<ControlServer>(
      node.io, std::map<std::string, ControlServer::Command>{
                   {"status", [&node] { return StatusJson(node); }},
                   {"verify",
                    [&node]() -> std::string {
                      if (!node.replicator) {
                        return "{\"error\": \"verify runs on a primary with a peer\"}";
                      }
                      Status st = node.replicator->StartVerify();
                      return st.ok() ? "{\"started\": true}"
                                     : "{\"error\": " + JsonString(st.message()) + "}";
                    }},
                   {"status-text", [&node] { return StatusText(node); }}});
  if (Status st = node.control->Listen(control_path); !st.ok()) {
    return st;
  }
  if (options.metrics) {
    node.metrics = std::make_unique<MetricsServer>(node.io, [&node] { return MetricsText(node); });
    if (Status st = node.metrics->Listen(*options.metrics); !st.ok()) {
      return st;
    }
  }

  asio::signal_set signals(node.io, SIGINT, SIGTERM);
  std::function<void()> wait_signal = [&] {
    signals.async_wait([&](const boost::system::error_code& ec, int signo) {
      if (ec) {
        return;
      }
      if (node.stopping) {
        spdlog::warn("signal {} again: still draining", signo);
      } else {
        node.stopping = true;
        if (options.primary) {
          spdlog::info("signal {}: draining {} connection(s)", signo,
                       node.nbd->connection_count());
          StopPrimary(node);
        } else {
          spdlog::info("signal {}: draining", signo);
          StopSecondary(node);
        }
      }
      wait_signal();
    });
  };
  wait_signal();
  spdlog::info("ready: {} node {} ({} mode), control socket {}",
               options.primary ? "primary" : "secondary", options.node_id,
               node.mode == Mode::kSync ? "sync" : "flush", control_path);
  node.io.run();
  return node.exit_status;
}

}  // namespace mirror

namespace mirror {

Status DiscardChanges(const std::string& volume_path, const std::string& metadata_path) {
  const std::string path = metadata_path.empty() ? DefaultMetadataPath(volume_path) : metadata_path;
  auto opened = MetadataFile::Open(path);
  if (!opened.ok()) {
    return opened.status();
  }
  if (!opened.value()) {
    return Status::Error(ENOENT, "no metadata at " + path + ": nothing to discard");
  }
  MetadataFile& file = **opened.value();
  const VolumeMetadata before = file.get();
  if (before.gens.bitmap == 0) {
    return Status::Error(EINVAL, "this copy has never been in sync with a peer (no bitmap base "
                                 "generation); there is no peer copy to fall back to");
  }
  // Back to the generation both copies last shared. The marks stay: they name every region
  // this copy changed since, and the next resync overwrites exactly those (plus the peer's).
  Status st = file.Update([](VolumeMetadata& md) {
    md.gens.current = md.gens.bitmap;
    md.gens.current_shared = true;
    md.disk = DiskState::kOutdated;
    md.clean = false;
  });
  if (!st.ok()) {
    return st;
  }
  std::printf("discarded this copy's changes since generation %s (was at %s); it is Outdated "
              "and must be started as secondary to be resynchronised from its peer\n",
              GenerationText(before.gens.bitmap).c_str(),
              GenerationText(before.gens.current).c_str());
  return Status::Ok();
}

}  // namespace mirror
