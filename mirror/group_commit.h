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
// Loop thread only; callbacks come from the loop, never from inside RequestDurable.

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

  void NoteWriteCompleted() { ++completed_writes_; }
  void RequestDurable(StoreDone done);

  bool failed() const { return !failure_.ok(); }
  const base::Status& failure() const { return failure_; }
  uint64_t datasync_count() const { return datasync_count_; }

 private:
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
};

}  // namespace mirror
