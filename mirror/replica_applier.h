#pragma once
// ReplicaApplier: the secondary's side of the mirror. It applies what the primary sends to the
// local store and acknowledges each operation once the store says so: after the write for a
// non-durable write, after a group-committed datasync covering it for a durable one (mode sync,
// FUA, Flush), or at once for a write-through (a write alone in flight that must be durable, or
// that a Flush is expected to follow: GroupCommit::ShouldWriteThrough). Writes are applied
// concurrently: the primary never has two overlapping writes in flight.
//
// DigestRequest (online verify): the range is read and its SHA-256 sent back in the Ack.
//
// Every received operation is validated first (its sequence number follows the previous one's on
// this link, a range of at least one byte inside the volume, payload length equal to the declared
// length); anything invalid drops the link and nothing of it is written. The primary numbers the
// operations of a link consecutively (Replicator::SendOrHold), so a frame lost, repeated or
// reordered on the way (by a proxy, say: TCP itself does none of these) is caught at the next
// frame.
//
// Loop thread only. Store and metadata are borrowed and must outlive the applier.

#include <memory>
#include <optional>
#include <string>

#include "base/asio.h"
#include "base/async_event.h"
#include "base/elapsed.h"
#include "base/latency_histogram.h"
#include "mirror/group_commit.h"
#include "mirror/local_store.h"
#include "mirror/metadata.h"
#include "mirror/write_intent_log.h"
#include "transport/frame_link.h"

namespace mirror {

struct ApplierStats {
  uint64_t writes = 0;
  uint64_t written_bytes = 0;
  uint64_t resync_bytes = 0;
  uint64_t flushes = 0;
  uint64_t ops_in_flight = 0;
  // As the primary's latency histograms (VolumeStats): from a frame's arrival to its
  // acknowledgement being queued. Writes and zeroes, then flushes.
  base::LatencyHistogram apply;
  base::LatencyHistogram apply_flush;
};

class ReplicaApplier final : public transport::FrameHandler {
 public:
  // At ResyncDone the copy becomes UpToDate at the primary's generation and `intent_log` (this
  // node's own marks, from a time it was primary) is cleared.
  ReplicaApplier(asio::io_context& io, LocalStore& store, Superblock& metadata,
                 WriteIntentLog& intent_log);

  bool attached() const { return link_ != nullptr; }
  bool idle() const { return stats_.ops_in_flight == 0; }
  // Waits until operations of earlier links have all completed, so they cannot land after what
  // a new primary sends.
  asio::awaitable<void> WaitIdle();
  // Makes every applied write durable (used at shutdown).
  void FlushAll(StoreDone done) { group_commit_.RequestDurable(std::move(done)); }
  void Attach(std::shared_ptr<transport::FrameLink> link, std::string primary_node_id);

  void OnFrame(transport::Frame frame) override;
  void OnClosed(const base::Status& why) override;

  const ApplierStats& stats() const { return stats_; }
  // Percentiles (microseconds) of apply times (writes and zeroes) over the last one to two
  // minutes; 0 when there were none.
  uint64_t RecentApplyQuantile(double q) {
    return recent_apply_.Quantile(q, std::chrono::steady_clock::now());
  }
  const std::string& primary_node_id() const { return primary_node_id_; }
  bool disk_failed() const { return group_commit_.failed(); }
  const GroupCommit& group_commit() const { return group_commit_; }
  GroupCommit& group_commit() { return group_commit_; }

 private:
  using WeakLink = std::weak_ptr<transport::FrameLink>;
  void ApplyWrite(transport::Frame frame);
  void ApplyZero(const transport::Frame& frame);
  void ApplyFlush(const transport::Frame& frame, bool resync_done);
  void FinishResync(const WeakLink& link, uint64_t seq, uint64_t current_gen);
  void ApplyDigestRequest(const transport::Frame& frame);
  // `written_through`: the write went to the store as a write-through (durable when done).
  void Finish(const WeakLink& link, uint64_t seq, bool durable, base::Status status,
              base::SteadyTime arrived, bool written_through = false);
  void SendAck(const WeakLink& link, uint64_t seq, const base::Status& status,
               const std::string& digest = {});
  void Reject(const std::string& why);
  // False (and the link dropped) unless `seq` follows the previous operation's on this link.
  bool InSequence(uint64_t seq);

  asio::io_context& io_;
  LocalStore& store_;
  Superblock& metadata_;
  WriteIntentLog& intent_log_;
  GroupCommit group_commit_;
  static constexpr int kMaxDigestReads = 8;
  int digest_reads_in_flight_ = 0;
  std::shared_ptr<transport::FrameLink> link_;
  std::optional<uint64_t> last_seq_;  // Of the last operation received on link_.
  std::string primary_node_id_;
  ApplierStats stats_;
  base::RecentLatency recent_apply_;
  base::AsyncEvent idle_event_;
};

}  // namespace mirror
