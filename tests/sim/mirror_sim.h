#pragma once
// The deterministic mirror simulation: one seeded schedule of client I/O, disk completions in
// random order, frames delivered with any delay, link cuts, timers, and crashes of either host,
// run on the shipped engine of both hosts (mirror::Volume, Replicator, PeerListener,
// ReplicaApplier, WriteIntentLog, GroupCommit, Resync) over simulated disks
// (tests/sim/sim_store.h), links and timers, then healed and checked. See mirror_sim.cc for
// what is simulated and how; mirror_sim_test.cc for how it is run.

#include <cstdint>
#include <string>

namespace sim {

// Deliberately broken engines, to show that the simulation catches them.
enum class Variant {
  kCorrect,
  // Now and then, while the peer is connected and UpToDate, the primary's bitmap is cleared at
  // once, without the local datasync and the peer flush that a clean cycle waits for.
  kCleanWithoutFlush,
};

struct ScheduleOptions {
  uint64_t seed = 1;
  Variant variant = Variant::kCorrect;
  int steps = 400;                // Random actions before the heal.
  bool inject_write_eio = false;  // Let data-store writes fail with EIO (a few per mille).
  bool keep_full_trace = false;   // Report the whole trace, not only its tail.
  // Let client writes reach the volume while a handshake is in progress (the replicator holds
  // them from its sync decision until the link streams). Off: a handshake starts only with no
  // client operation in the volume, and clients wait for it to end.
  bool writes_during_handshake = true;
};

struct ScheduleResult {
  bool ok = true;
  std::string failure;  // What went wrong, with the seed and the trace, when !ok.
  // Some counts, to show the schedules exercise what they claim to.
  uint64_t acked_writes = 0;
  uint64_t primary_crashes = 0;
  uint64_t secondary_crashes = 0;
  uint64_t cuts = 0;
  uint64_t resyncs = 0;
  uint64_t resync_holes = 0;  // Resync blocks sent as Zero.
  uint64_t cleared_regions = 0;
  uint64_t failover_checks = 0;  // Times a promotion of the standby was checked and held.
  uint64_t failovers = 0;        // Times the standby was promoted and the old primary rejoined.
  uint64_t steps_holding_writes = 0;  // Steps with writes held for the peer (`block`).
  uint64_t rots = 0;                  // Bytes of the standby's disk changed behind its back.
  uint64_t verify_repairs = 0;        // Verifies that found differing blocks.
  uint64_t mangled_frames = 0;        // Frames duplicated or reordered on the way.
  uint64_t ack_timeouts = 0;          // Links dropped for acknowledging nothing in time.
  uint64_t standby_disk_failures = 0;  // Standby restarts after a failed datasync.
  uint64_t primary_disk_failures = 0;  // Primary restarts after a failed datasync.
  uint64_t sync_aheads = 0;      // Datasyncs the primary started ahead of an expected FLUSH.
  uint64_t write_throughs = 0;   // Writes either host made durable by themselves (RWF_DSYNC).
  // FLUSHes in mode flush answered without asking the peer (it held every write durably).
  uint64_t flushes_without_peer = 0;
  // The path the schedule took: a hash of its whole trace, and the trace's length.
  uint64_t trace_hash = 0;
  uint64_t trace_lines = 0;
};

ScheduleResult RunSchedule(const ScheduleOptions& options);

}  // namespace sim
