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
// durable by themselves (mode sync, FUA) start their own datasync and never sync ahead.
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
  // A client FLUSH arrived (before it calls RequestDurable): what syncing ahead predicts from.
  void NoteFlush();
  void RequestDurable(StoreDone done);

  bool failed() const { return !failure_.ok(); }
  const base::Status& failure() const { return failure_; }
  uint64_t datasync_count() const { return datasync_count_; }
  uint64_t sync_ahead_count() const { return sync_ahead_count_; }

  // The clock syncing ahead reads (kSyncAheadWindow); a simulation gives its own, so that a
  // schedule replays the same whatever the speed of the machine running it.
  using Clock = std::chrono::steady_clock;
  void SetClock(std::function<Clock::time_point()> now) { now_ = std::move(now); }

 private:
  bool FlushExpected() const;
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
  // Syncing ahead: writes completed since the last client FLUSH, how many the one before it
  // covered (0: none, or no FLUSH yet), and when the last FLUSH came.
  uint64_t writes_since_flush_ = 0;
  uint64_t writes_per_flush_ = 0;
  Clock::time_point last_flush_;
  std::function<Clock::time_point()> now_ = [] { return Clock::now(); };
};

}  // namespace mirror
