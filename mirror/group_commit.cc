#include "mirror/group_commit.h"

#include <spdlog/spdlog.h>

namespace mirror {

using base::Status;

void GroupCommit::NoteWriteCompleted(bool may_sync_ahead) {
  ++completed_writes_;
  ++writes_since_flush_;
  if (may_sync_ahead && !syncing_ && !failed() && FlushExpected()) {
    ++sync_ahead_count_;
    StartDatasync();
  }
}

bool GroupCommit::FlushExpected(uint64_t more) const {
  return writes_per_flush_ != 0 && writes_per_flush_ <= kSyncAheadMaxWrites &&
         writes_since_flush_ + more >= writes_per_flush_ && now_() - last_flush_ < kSyncAheadWindow;
}

bool GroupCommit::ShouldWriteThrough(bool durable, bool alone) const {
  // After a failure the ordinary path fails the request (a durable one) or lets it through.
  return alone && !failed() && (durable || FlushExpected(/*more=*/1));
}

void GroupCommit::NoteWriteThroughStarted() {
  ++write_throughs_in_flight_;
  write_through_isolated_ =
      write_throughs_in_flight_ == 1 && !syncing_ && completed_writes_ == durable_writes_;
  completed_at_write_through_ = completed_writes_;
}

void GroupCommit::NoteWriteThroughCompleted(const Status& status) {
  --write_throughs_in_flight_;
  // Part of the client's pattern like any write, but nothing for a datasync to cover.
  ++writes_since_flush_;
  if (status.ok()) {
    ++write_through_count_;
    return;
  }
  if (write_through_isolated_ && write_throughs_in_flight_ == 0 &&
      completed_writes_ == completed_at_write_through_) {
    // Its flush, if that is what failed, covered nothing else: the request fails, the disk does
    // not. Part of it may have landed in a cache: the next durable request syncs.
    ++completed_writes_;
    return;
  }
  Fail("a write-through (its write or its flush, while other writes awaited durability)", status);
}

void GroupCommit::Fail(const char* what, Status status) {
  if (failed()) {
    return;
  }
  spdlog::critical("{} failed; the local disk is marked Failed: {}", what, status.ToString());
  failure_ = std::move(status);
}

void GroupCommit::NoteFlush() {
  writes_per_flush_ = writes_since_flush_;
  writes_since_flush_ = 0;
  last_flush_ = now_();
}

void GroupCommit::RequestDurable(StoreDone done) {
  if (failed()) {
    asio::post(io_, [done = std::move(done), failure = failure_] {
      done(Status::Error(EIO, "earlier datasync failed (" + failure.ToString() + ")"));
    });
    return;
  }
  if (completed_writes_ == durable_writes_) {
    asio::post(io_, [done = std::move(done)] { done(Status::Ok()); });
    return;
  }
  if (syncing_ && completed_writes_ == syncing_writes_) {
    // The running datasync started after every write this request must cover.
    running_batch_.push_back(std::move(done));
    return;
  }
  next_batch_.push_back(std::move(done));
  if (!syncing_) {
    StartDatasync();
  }
}

void GroupCommit::StartDatasync() {
  syncing_ = true;
  syncing_writes_ = completed_writes_;
  running_batch_ = std::move(next_batch_);
  next_batch_.clear();
  ++datasync_count_;
  Status st = store_.Datasync([this](Status result) { OnDatasyncDone(std::move(result)); });
  if (!st.ok()) {
    asio::post(io_, [this, st] { OnDatasyncDone(st); });
  }
}

void GroupCommit::OnDatasyncDone(Status status) {
  syncing_ = false;
  if (status.ok()) {
    durable_writes_ = syncing_writes_;
  } else {
    Fail("datasync", status);
  }
  auto batch = std::move(running_batch_);
  running_batch_.clear();
  for (auto& done : batch) {
    done(status.ok() ? Status::Ok() : Status::Error(EIO, "datasync: " + status.ToString()));
  }
  if (!next_batch_.empty()) {
    if (failed()) {
      auto rest = std::move(next_batch_);
      next_batch_.clear();
      for (auto& done : rest) {
        done(Status::Error(EIO, "earlier datasync failed (" + failure_.ToString() + ")"));
      }
    } else {
      StartDatasync();
    }
  }
}

}  // namespace mirror
