// Proves group commit: one datasync serves every waiter whose writes it covers, a running
// datasync never answers for writes completed after it started, a failed datasync is never
// followed by a reported success, and a datasync started ahead of an expected FLUSH serves it
// only for what it covers.

#include "mirror/group_commit.h"

#include <gtest/gtest.h>

#include "tests/unit/support/fake_store.h"
#include "tests/unit/support/loop.h"

namespace mirror {
namespace {

using testing_support::FakeStore;

class GroupCommitTest : public ::testing::Test {
 protected:
  asio::io_context io_;
  FakeStore store_{io_, 4096};
  GroupCommit commit_{io_, store_};
};

TEST_F(GroupCommitTest, NothingWrittenMeansNoDatasync) {
  int done = 0;
  commit_.RequestDurable([&](base::Status st) { done += st.ok(); });
  testing_support::Drain(io_);
  EXPECT_EQ(done, 1);
  EXPECT_EQ(store_.datasyncs_submitted(), 0);
}

TEST_F(GroupCommitTest, WaitersArrivingTogetherShareOneDatasync) {
  commit_.NoteWriteCompleted();
  int done = 0;
  for (int i = 0; i < 5; ++i) {
    commit_.RequestDurable([&](base::Status st) { done += st.ok(); });
  }
  EXPECT_EQ(store_.datasyncs_submitted(), 1);
  store_.CompleteAll();
  EXPECT_EQ(done, 5);
}

TEST_F(GroupCommitTest, RunningDatasyncDoesNotCoverLaterWrites) {
  commit_.NoteWriteCompleted();
  int first = 0, second = 0;
  commit_.RequestDurable([&](base::Status) { ++first; });
  commit_.NoteWriteCompleted();  // Completed after the datasync was submitted.
  commit_.RequestDurable([&](base::Status) { ++second; });
  EXPECT_EQ(store_.datasyncs_submitted(), 1);
  ASSERT_TRUE(store_.CompleteOldest());
  EXPECT_EQ(first, 1);
  EXPECT_EQ(second, 0) << "answered by a datasync that started before its write completed";
  EXPECT_EQ(store_.datasyncs_submitted(), 2);
  store_.CompleteAll();
  EXPECT_EQ(second, 1);
}

TEST_F(GroupCommitTest, WaiterWithNothingNewJoinsTheRunningDatasync) {
  commit_.NoteWriteCompleted();
  int done = 0;
  commit_.RequestDurable([&](base::Status) { ++done; });
  commit_.RequestDurable([&](base::Status) { ++done; });
  store_.CompleteAll();
  EXPECT_EQ(done, 2);
  EXPECT_EQ(store_.datasyncs_submitted(), 1);
}

TEST_F(GroupCommitTest, FailedDatasyncFailsEveryLaterRequestToo) {
  store_.set_fail_datasync(true);
  commit_.NoteWriteCompleted();
  std::vector<int> results;
  commit_.RequestDurable([&](base::Status st) { results.push_back(st.errno_value()); });
  store_.CompleteAll();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0], EIO);
  EXPECT_TRUE(commit_.failed());
  // The disk recovers, but what the failed sync covered is in an unknown state.
  store_.set_fail_datasync(false);
  commit_.NoteWriteCompleted();
  commit_.RequestDurable([&](base::Status st) { results.push_back(st.errno_value()); });
  testing_support::Drain(io_);
  store_.CompleteAll();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[1], EIO);
  EXPECT_EQ(store_.datasyncs_submitted(), 1);
}

// A client's writes and FLUSHes, as the volume reports them; WriteThenFlush leaves a client that
// flushed after its one write, so the next lone write completing starts the datasync.
class SyncAheadTest : public GroupCommitTest {
 protected:
  void LoneWrites(int n) {
    for (int i = 0; i < n; ++i) {
      commit_.NoteWriteCompleted(/*may_sync_ahead=*/true);
    }
  }
  void FlushToTheEnd() {
    commit_.NoteFlush();
    bool flushed = false;
    commit_.RequestDurable([&](base::Status st) { flushed = st.ok(); });
    store_.CompleteAll();
    testing_support::Drain(io_);
    ASSERT_TRUE(flushed);
  }
  void WriteThenFlush() {
    LoneWrites(1);
    FlushToTheEnd();
  }
};

TEST_F(SyncAheadTest, AFlushAfterEachWriteIsAnticipatedAndJoinsTheEarlyDatasync) {
  WriteThenFlush();
  const uint64_t before = store_.datasyncs_submitted();
  EXPECT_EQ(commit_.sync_ahead_count(), 0u) << "the first write had no pattern to go by";
  commit_.NoteWriteCompleted(/*may_sync_ahead=*/true);
  EXPECT_EQ(store_.datasyncs_submitted(), before + 1) << "no datasync ahead of the FLUSH";
  EXPECT_EQ(commit_.sync_ahead_count(), 1u);
  commit_.NoteFlush();
  bool flushed = false;
  commit_.RequestDurable([&](base::Status st) { flushed = st.ok(); });
  EXPECT_EQ(store_.datasyncs_submitted(), before + 1) << "the FLUSH did not join the early one";
  EXPECT_FALSE(flushed);
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kDatasync));
  EXPECT_TRUE(flushed);
}

TEST_F(SyncAheadTest, AnEarlyDatasyncDoesNotAnswerForAWriteCompletedAfterIt) {
  WriteThenFlush();
  commit_.NoteWriteCompleted(/*may_sync_ahead=*/true);  // Starts one ahead.
  commit_.NoteWriteCompleted(/*may_sync_ahead=*/false);  // Completes while it runs.
  commit_.NoteFlush();
  bool flushed = false;
  commit_.RequestDurable([&](base::Status st) { flushed = st.ok(); });
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kDatasync));
  testing_support::Drain(io_);
  EXPECT_FALSE(flushed) << "answered by a datasync that started before its last write completed";
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kDatasync));
  EXPECT_TRUE(flushed);
}

TEST_F(SyncAheadTest, NotWhenTheCallerSaysNo) {
  WriteThenFlush();
  const uint64_t before = store_.datasyncs_submitted();
  commit_.NoteWriteCompleted(/*may_sync_ahead=*/false);
  EXPECT_EQ(store_.datasyncs_submitted(), before);
  EXPECT_EQ(commit_.sync_ahead_count(), 0u);
}

TEST_F(SyncAheadTest, NotForClientsThatNeverOrRarelyFlush) {
  LoneWrites(100);
  EXPECT_EQ(store_.datasyncs_submitted(), 0) << "a client that never flushed";
  FlushToTheEnd();  // After 100 writes: more than kSyncAheadMaxWrites.
  const uint64_t before = store_.datasyncs_submitted();
  LoneWrites(2 * GroupCommit::kSyncAheadMaxWrites);
  EXPECT_EQ(store_.datasyncs_submitted(), before);
  EXPECT_EQ(commit_.sync_ahead_count(), 0u);
}

TEST_F(SyncAheadTest, AClientThatFlushesEveryFourWritesIsAnticipatedAtTheFourth) {
  LoneWrites(4);
  FlushToTheEnd();
  const uint64_t before = store_.datasyncs_submitted();
  LoneWrites(3);
  EXPECT_EQ(store_.datasyncs_submitted(), before) << "synced ahead before the fourth write";
  LoneWrites(1);
  EXPECT_EQ(store_.datasyncs_submitted(), before + 1);
}

// The pattern holds for kSyncAheadWindow after the last FLUSH, read from the clock the caller
// gives (the simulation's virtual one, here a hand-moved one): a client that went quiet for
// longer may have stopped flushing, so its next lone write waits for a FLUSH to ask.
TEST_F(SyncAheadTest, OnlyWithinTheWindowAfterTheLastFlush) {
  GroupCommit::Clock::time_point now{};
  commit_.SetClock([&now] { return now; });
  WriteThenFlush();
  now += GroupCommit::kSyncAheadWindow + std::chrono::milliseconds(1);
  const uint64_t before = store_.datasyncs_submitted();
  LoneWrites(1);
  EXPECT_EQ(store_.datasyncs_submitted(), before) << "synced ahead after the window closed";
  FlushToTheEnd();  // The pattern again, with a fresh window.
  now += GroupCommit::kSyncAheadWindow - std::chrono::milliseconds(1);
  LoneWrites(1);
  EXPECT_EQ(commit_.sync_ahead_count(), 1u) << "no datasync ahead inside the window";
}

TEST_F(SyncAheadTest, NeverAfterAFailedDatasync) {
  WriteThenFlush();
  store_.set_fail_datasync(true);
  commit_.NoteWriteCompleted(/*may_sync_ahead=*/true);  // Ahead; fails.
  store_.CompleteAll();
  ASSERT_TRUE(commit_.failed());
  const uint64_t before = store_.datasyncs_submitted();
  commit_.NoteFlush();
  int result = 0;
  commit_.RequestDurable([&](base::Status st) { result = st.errno_value(); });
  testing_support::Drain(io_);
  EXPECT_EQ(result, EIO) << "the FLUSH after a failed early datasync must fail";
  commit_.NoteWriteCompleted(/*may_sync_ahead=*/true);
  EXPECT_EQ(store_.datasyncs_submitted(), before);
}

// Writing through: decided before a write is submitted, for a write alone in flight.
TEST_F(SyncAheadTest, ADurableWriteAloneIsWrittenThroughNotWhenOthersAreInFlight) {
  EXPECT_TRUE(commit_.ShouldWriteThrough(/*durable=*/true, /*alone=*/true));
  EXPECT_FALSE(commit_.ShouldWriteThrough(/*durable=*/true, /*alone=*/false));
  EXPECT_FALSE(commit_.ShouldWriteThrough(/*durable=*/false, /*alone=*/true))
      << "no FLUSH pattern yet";
}

TEST_F(SyncAheadTest, ThePlainWriteBeforeAnExpectedFlushIsWrittenThrough) {
  LoneWrites(3);
  FlushToTheEnd();  // Every third write is followed by a FLUSH.
  LoneWrites(1);
  EXPECT_FALSE(commit_.ShouldWriteThrough(false, true)) << "the second of three";
  LoneWrites(1);
  EXPECT_TRUE(commit_.ShouldWriteThrough(false, true)) << "the third of three";
  EXPECT_FALSE(commit_.ShouldWriteThrough(false, false)) << "with another in flight";
}

TEST_F(SyncAheadTest, AWriteThroughNeedsNoDatasyncButOtherWritesStillDo) {
  WriteThenFlush();
  const uint64_t before = store_.datasyncs_submitted();
  ASSERT_TRUE(commit_.ShouldWriteThrough(false, true));
  commit_.NoteWriteThroughStarted();
  commit_.NoteWriteThroughCompleted(base::Status::Ok());
  EXPECT_EQ(commit_.write_through_count(), 1u);
  commit_.NoteFlush();
  bool flushed = false;
  commit_.RequestDurable([&](base::Status st) { flushed = st.ok(); });
  testing_support::Drain(io_);
  EXPECT_TRUE(flushed);
  EXPECT_EQ(store_.datasyncs_submitted(), before) << "a datasync for a write-through";
  EXPECT_TRUE(commit_.ShouldWriteThrough(false, true)) << "the pattern (one write) still holds";
  // A plain write completed before a write-through is not made durable by it.
  commit_.NoteWriteCompleted();
  commit_.NoteWriteThroughStarted();
  commit_.NoteWriteThroughCompleted(base::Status::Ok());
  flushed = false;
  commit_.RequestDurable([&](base::Status st) { flushed = st.ok(); });
  EXPECT_EQ(store_.datasyncs_submitted(), before + 1);
  store_.CompleteAll();
  EXPECT_TRUE(flushed);
}

// Failures. The kernel flushes only after a successful write: the error is the write's, or the
// flush's, and a failed flush also covered whatever else was completed and not yet durable.
class WriteThroughFailureTest : public GroupCommitTest {
 protected:
  void FailOne() {
    commit_.NoteWriteThroughStarted();
    commit_.NoteWriteThroughCompleted(base::Status::Error(EIO, "write-through"));
  }
  int Durable() {
    int result = -1;
    commit_.RequestDurable([&](base::Status st) { result = st.errno_value(); });
    testing_support::Drain(io_);
    store_.CompleteAll();
    testing_support::Drain(io_);
    return result;
  }
};

TEST_F(WriteThroughFailureTest, AloneWithNothingUnsyncedOnlyItsRequestFails) {
  FailOne();
  EXPECT_FALSE(commit_.failed());
  EXPECT_EQ(commit_.write_through_count(), 0u);
  EXPECT_EQ(Durable(), 0);
  EXPECT_EQ(store_.datasyncs_submitted(), 1) << "part of it may have landed: the next one syncs";
}

TEST_F(WriteThroughFailureTest, WithUnsyncedWritesBeforeItTheDiskFails) {
  commit_.NoteWriteCompleted();  // Completed, not yet durable: the failed flush covered it.
  FailOne();
  EXPECT_TRUE(commit_.failed());
  EXPECT_EQ(Durable(), EIO);
  EXPECT_EQ(store_.datasyncs_submitted(), 0) << "a datasync retried into a success";
  EXPECT_FALSE(commit_.ShouldWriteThrough(true, true));
}

TEST_F(WriteThroughFailureTest, WithAWriteCompletedWhileItRanTheDiskFails) {
  commit_.NoteWriteThroughStarted();
  commit_.NoteWriteCompleted();
  commit_.NoteWriteThroughCompleted(base::Status::Error(EIO, "write-through"));
  EXPECT_TRUE(commit_.failed());
}

TEST_F(WriteThroughFailureTest, WhileADatasyncRunsTheDiskFails) {
  commit_.NoteWriteCompleted();
  bool synced = false;
  commit_.RequestDurable([&](base::Status st) { synced = st.ok(); });  // Running.
  FailOne();
  EXPECT_TRUE(commit_.failed());
}

}  // namespace
}  // namespace mirror
