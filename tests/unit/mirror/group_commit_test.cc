// Proves group commit: one datasync serves every waiter whose writes it covers, a running
// datasync never answers for writes completed after it started, and a failed datasync is never
// followed by a reported success.

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

}  // namespace
}  // namespace mirror
