#pragma once
// Volume: the block device the NBD server exports: this host's LocalStore plus, when a peer
// is configured, the PeerLink to the standby's copy.
//
// The life of one write (WRITE, WRITE_ZEROES or TRIM), state by state:
//
//   1. kWaitingForRange  The NBD connection calls Write(). The volume asks InflightRanges for
//                        the byte range. If an earlier write overlapping it is still in flight
//                        (or waiting), this one waits, so overlapping writes reach both copies
//                        in the same order and both end with the same last writer.
//   2. kMarking          The range is held. The write-intent log marks its regions; if any
//                        was clear, the write waits until the bitmap page saying so is
//                        durable (hot regions are already marked: no wait, no I/O).
//   3. kFannedOut        The local write (io_uring) and the replication message to the peer
//                        start together. Except for a FAST_ZERO: the peer is asked once the
//                        local zeroing succeeded, so that a refusal (ENOTSUP, which the NBD
//                        spec wants quick and without changes) changes neither copy.
//                        A WRITE alone in flight that must be durable, or that a FLUSH is
//                        expected to follow, goes to the store as a write-through (durable
//                        when it completes; GroupCommit::ShouldWriteThrough).
//   4. kLocalWritten     The store reports the write done. GroupCommit counts it as completed.
//                        If the write must be durable (mode sync, or FUA) and was not written
//                        through, a group-committed datasync covering it starts now, while
//                        the peer is still working.
//   5. kPeerConfirmed    The peer acknowledged: applied, and durable on its disk when the mode
//                        or FUA asks for it (the peer group-commits too). Or the link
//                        answered kDegraded: the peer is gone and recorded as outdated.
//   6. kReplied          Both sides are done: the range is released, the intent log told the
//                        write is over (its bits stay set until a clean cycle clears them),
//                        and the connection gets `done`, which sends the NBD reply.
//
// A failed local write, or a bitmap that cannot be persisted, fails the request with EIO. A failed
// peer never fails a client's write. FLUSH is a local group-committed datasync plus a Flush to the
// peer; it replies when both are done, so every write replied to before it is durable on both
// hosts, whichever connection it came from (this is what CAN_MULTI_CONN promises). The peer is
// asked only if it holds something to make durable: a write that is written through here (alone
// in flight and a FLUSH expected next) is sent to the peer as durable too, and the volume counts
// the writes the peer confirmed without durability. Once a confirmed peer Flush covers all of
// them, the next FLUSH needs no round trip to the peer. A database's commit (one write, then its
// FLUSH) then costs one peer round trip, not two. In mode sync every write is durable on both
// before its reply, so no FLUSH asks the peer anything. A FLUSH waits for a local datasync only if
// something completed here is not yet durable (GroupCommit skips it otherwise).
//
// Reads go straight to the local store; NBD does not order reads against in-flight writes.
//
// Loop thread only. The store and the link must outlive the volume.

#include <chrono>
#include <cstdint>
#include <memory>

#include "base/asio.h"
#include "base/callback.h"
#include "base/latency_histogram.h"
#include "mirror/group_commit.h"
#include "mirror/inflight_ranges.h"
#include "mirror/local_store.h"
#include "mirror/peer_link.h"
#include "mirror/write_intent_log.h"
#include "nbd-server/block_device.h"

namespace mirror {

// When a write is acknowledged (DESIGN.md, durability modes).
enum class Mode {
  kSync,   // Once on stable storage on both hosts.
  kFlush,  // Once written on both hosts; FLUSH and FUA make it durable on both.
};

// Counters for status and tests. Monotonic except the in-flight gauges.
struct VolumeStats {
  uint64_t reads = 0;
  uint64_t writes = 0;
  uint64_t flushes = 0;
  uint64_t zeroes = 0;
  uint64_t trims = 0;
  uint64_t read_bytes = 0;
  uint64_t written_bytes = 0;
  uint64_t errors = 0;
  uint64_t writes_in_flight = 0;
  uint64_t bytes_in_flight = 0;
  uint64_t range_waits = 0;  // Writes that had to wait for an overlapping one.
  uint64_t degraded_writes = 0;  // Acknowledged without the peer.
  // FLUSHes that asked the peer nothing: it had confirmed every write before them as durable.
  uint64_t flushes_without_peer = 0;

  // Where the time goes, as /proc/diskstats counts it: each histogram's count and sum of
  // microseconds are monotonic, so the mean over an interval is the difference of the sum divided
  // by the difference of the count; the buckets give the distribution. "Modifying" means WRITE,
  // WRITE_ZEROES and TRIM.
  base::LatencyHistogram modify;       // Modifying requests replied to: arrival to reply.
  base::LatencyHistogram modify_peer;  // Those the peer confirmed: handed to the link to then.
  base::LatencyHistogram flush;        // FLUSH requests: arrival to reply.
  base::LatencyHistogram flush_peer;   // FLUSHes the peer confirmed: arrival to confirmation.
  // Parts of the above, as sums of microseconds over the requests of `modify` and `flush`.
  uint64_t modify_queue_us = 0;  // Waiting for an overlapping write and the mark.
  uint64_t modify_local_us = 0;  // Local store operation (plus datasync when durable).
  uint64_t flush_local_us = 0;   // Local group-committed datasync part.
};

class Volume final : public nbd::BlockDevice {
 public:
  // `peer` may be null: a standalone volume. `intent_log` may be null: no dirty tracking (unit
  // tests). Both are borrowed for the volume's life.
  Volume(asio::io_context& io, LocalStore& store, PeerLink* peer, Mode mode,
         WriteIntentLog* intent_log = nullptr);

  uint64_t size_bytes() const override { return store_.size_bytes(); }

  base::Status Read(uint64_t offset_bytes, std::span<std::byte> out,
                    nbd::DoneCallback done) override;
  base::Status Write(uint64_t offset_bytes, std::span<const std::byte> data, bool fua,
                     nbd::DoneCallback done) override;
  base::Status Flush(nbd::DoneCallback done) override;
  base::Status Trim(uint64_t offset_bytes, uint64_t length_bytes, bool fua,
                    nbd::DoneCallback done) override;
  base::Status WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes,
                           nbd::ZeroOptions options, bool fua, nbd::DoneCallback done) override;
  base::Status Cache(uint64_t offset_bytes, uint64_t length_bytes,
                     nbd::DoneCallback done) override;
  base::Status BlockStatus(uint64_t offset_bytes, uint64_t length_bytes,
                           nbd::ExtentsCallback done) override;

  // Range locks for resync: a resync block and a client write never overlap in flight.
  // `granted` runs (possibly inside this call) once the range is held.
  void LockRange(uint64_t offset_bytes, uint64_t length_bytes,
                 std::function<void(InflightRanges::Ticket)> granted);
  void UnlockRange(InflightRanges::Ticket ticket);

  LocalStore& store() { return store_; }
  GroupCommit& group_commit() { return group_commit_; }
  const VolumeStats& stats() const { return stats_; }
  // Latency percentiles (microseconds) of modifying requests and of FLUSHes over the last one to
  // two minutes; 0 when there were none.
  uint64_t RecentModifyQuantile(double q) {
    return recent_modify_.Quantile(q, std::chrono::steady_clock::now());
  }
  uint64_t RecentFlushQuantile(double q) {
    return recent_flush_.Quantile(q, std::chrono::steady_clock::now());
  }
  Mode mode() const { return mode_; }
  bool disk_failed() const { return group_commit_.failed(); }

 private:
  struct PendingWrite;
  // `write_through`: submit it as LocalStore::WriteThrough (only WRITE is ever asked to).
  using StoreCall = base::Callback<base::Status(bool write_through, StoreDone)>;
  // `durable`: the peer must make it durable before it confirms.
  using PeerCall = base::Callback<void(bool durable, PeerDone)>;

  base::Status Modify(uint64_t offset_bytes, uint64_t length_bytes, bool fua, StoreCall store,
                      PeerCall peer, nbd::DoneCallback done, bool fast_zero = false,
                      bool may_write_through = false);
  void MarkIntent(const std::shared_ptr<PendingWrite>& write);
  void FanOut(const std::shared_ptr<PendingWrite>& write);
  void StartPeer(const std::shared_ptr<PendingWrite>& write);
  void OnLocalWritten(const std::shared_ptr<PendingWrite>& write, base::Status status);
  void MaybeFinish(const std::shared_ptr<PendingWrite>& write);
  base::Status CheckRange(uint64_t offset_bytes, uint64_t length_bytes, int past_end_errno) const;

  asio::io_context& io_;
  LocalStore& store_;
  PeerLink* peer_;
  const Mode mode_;
  WriteIntentLog* intent_log_;
  InflightRanges ranges_;
  GroupCommit group_commit_;
  VolumeStats stats_;
  base::RecentLatency recent_modify_;
  base::RecentLatency recent_flush_;
  // Writes (and zeroes, trims) the peer confirmed without making them durable, and how many of
  // those a confirmed peer Flush has covered: equal, and a FLUSH has nothing to ask the peer.
  uint64_t peer_volatile_writes_ = 0;
  uint64_t peer_volatile_flushed_ = 0;
};

}  // namespace mirror
