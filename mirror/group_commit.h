#pragma once
// GroupCommit: one datasync for many waiters.
//
// Writes report completion with NoteWriteCompleted(). RequestDurable(done) calls back once
// every write that completed before the request is on stable storage. If a datasync is already
// running it cannot cover writes completed after it started, so later requests join the next
// batch; everything that piles up while one datasync runs shares the next. Requests that arrive
// with nothing written since the last successful datasync complete without one.
//
// A failed datasync fails its batch with EIO and marks the store failed for good: after a
// failed fsync the kernel may forget the dirty pages, so a later "successful" sync proves
// nothing. Every later request fails too; status shows the disk as Failed.
//
// Syncing ahead: a client that flushes after every write or few writes (fio's fsync=1, a
// database's commit through a filesystem) pays, per FLUSH, the round trip between the reply to
// its last write and the FLUSH's arrival before the datasync even starts. So when the client's
// last FLUSH came after at most kSyncAheadMaxWrites writes, no longer than kSyncAheadWindow ago,
// and the write completing now brings the count since it up to that many with no other write in
// flight, the datasync starts at once, unasked; the FLUSH that follows joins it. A client that
// never flushes, or flushes after many writes, never triggers it. The cost when the guess is
// wrong is one datasync nobody waited for (`sync_ahead_datasyncs` in status). Writes that are
// durable by themselves (mode sync, FUA) start their own datasync, unless written through
// (below), and never sync ahead.
//
// Writing through: better still than a datasync started at a write's completion is a write
// that is durable when it completes (LocalStore::WriteThrough, RWF_DSYNC): the kernel issues
// the flush right after the write, without the round trip through the loop (on a virtio disk
// 17k such writes per second against 13–14k write-then-datasync pairs). ShouldWriteThrough()
// says so, before a write is submitted, for a write alone in flight that must be durable
// (mode sync, FUA), or that is the last before an expected FLUSH (the prediction above, made
// one write earlier). A completed write-through needs no datasync, so it is not counted among
// the writes a datasync must cover; the FLUSH that follows finds nothing to sync
// (`write_through_writes` in status). With other writes in flight group commit is cheaper and
// is used instead.
//
// A failed write-through: the kernel flushes only after a successful write, so the error came
// from the write (as a failed plain write's) or from the flush, which would also have covered
// every other completed write not yet durable: the failed-datasync case, after which no later
// datasync may be trusted. So when nothing else awaited durability while it ran (nothing
// completed and unsynced when it started, no datasync running, no write completed meanwhile:
// the usual case, a lone write after a FLUSH), its failure is its request's alone, as a failed
// plain write's is (the next durable request syncs, in case part of it landed). Otherwise the
// disk is failed, as by a failed datasync.
//
// Loop thread only; callbacks come from the loop, never from inside RequestDurable.

#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

#include "base/asio.h"
#include "base/status.h"
#include "mirror/local_store.h"

namespace mirror {

class GroupCommit {
 public:
  GroupCommit(asio::io_context& io, LocalStore& store) : io_(io), store_(store) {}

  static constexpr uint64_t kSyncAheadMaxWrites = 16;
  static constexpr std::chrono::milliseconds kSyncAheadWindow{1000};

  // A write (or zero, trim) completed. `may_sync_ahead`: it was the only one in flight and its
  // caller will not ask for durability itself (a durable write's RequestDurable follows anyway).
  void NoteWriteCompleted(bool may_sync_ahead = false);
  // Before submitting a write: whether to submit it as a write-through (see the file comment).
  // `durable`: its caller needs it durable (mode sync, FUA); `alone`: no other write is in
  // flight.
  bool ShouldWriteThrough(bool durable, bool alone) const;
  // A write-through is submitted (after ShouldWriteThrough said so) / completed: durable by
  // itself, or failed (see the file comment for when that fails the disk).
  void NoteWriteThroughStarted();
  void NoteWriteThroughCompleted(const base::Status& status);
  // A client FLUSH arrived (before it calls RequestDurable): what syncing ahead predicts from.
  void NoteFlush();
  void RequestDurable(StoreDone done);
  // Every completed write is durable and no datasync has failed: RequestDurable would only
  // post its callback.
  bool AllDurable() const { return completed_writes_ == durable_writes_ && !failed(); }

  bool failed() const { return !failure_.ok(); }
  const base::Status& failure() const { return failure_; }
  uint64_t datasync_count() const { return datasync_count_; }
  uint64_t sync_ahead_count() const { return sync_ahead_count_; }
  uint64_t write_through_count() const { return write_through_count_; }

  // The clock syncing ahead reads (kSyncAheadWindow); a simulation gives its own, so that a
  // schedule replays the same whatever the speed of the machine running it.
  using Clock = std::chrono::steady_clock;
  void SetClock(std::function<Clock::time_point()> now) { now_ = std::move(now); }

 private:
  // Whether a FLUSH is expected once `more` further writes have completed.
  bool FlushExpected(uint64_t more = 0) const;
  void Fail(const char* what, base::Status status);
  void StartDatasync();
  void OnDatasyncDone(base::Status status);

  asio::io_context& io_;
  LocalStore& store_;
  uint64_t completed_writes_ = 0;
  uint64_t durable_writes_ = 0;    // Covered by the last successful datasync.
  uint64_t syncing_writes_ = 0;    // Covered by the running datasync.
  bool syncing_ = false;
  std::vector<StoreDone> running_batch_;
  std::vector<StoreDone> next_batch_;
  base::Status failure_;
  uint64_t datasync_count_ = 0;
  uint64_t sync_ahead_count_ = 0;
  uint64_t write_through_count_ = 0;
  // Write-throughs in flight (one at most: each starts alone), whether the last one started with
  // nothing else awaiting durability, and the completed writes then.
  uint64_t write_throughs_in_flight_ = 0;
  bool write_through_isolated_ = false;
  uint64_t completed_at_write_through_ = 0;
  // Syncing ahead: writes completed since the last client FLUSH, how many the one before it
  // covered (0: none, or no FLUSH yet), and when the last FLUSH came.
  uint64_t writes_since_flush_ = 0;
  uint64_t writes_per_flush_ = 0;
  Clock::time_point last_flush_;
  std::function<Clock::time_point()> now_ = [] { return Clock::now(); };
};

}  // namespace mirror
