// Proves InflightRanges serialises overlapping writes in arrival order and lets disjoint ones
// run side by side, and that the nodes it keeps for reuse hold nothing of a finished write.

#include "mirror/inflight_ranges.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

namespace mirror {
namespace {

TEST(InflightRangesTest, DisjointRangesAreGrantedAtOnce) {
  InflightRanges r;
  InflightRanges::Ticket a = 0, b = 0;
  EXPECT_TRUE(r.Acquire(0, 4096, [] {}, a));
  EXPECT_TRUE(r.Acquire(4096, 4096, [] {}, b));
  EXPECT_EQ(r.held_count(), 2u);
}

TEST(InflightRangesTest, OverlappingWriteWaitsForEarlierOne) {
  InflightRanges r;
  InflightRanges::Ticket a = 0, b = 0;
  bool granted = false;
  ASSERT_TRUE(r.Acquire(0, 8192, [] {}, a));
  EXPECT_FALSE(r.Acquire(4096, 8192, [&] { granted = true; }, b));
  EXPECT_FALSE(granted);
  r.Release(a);
  EXPECT_TRUE(granted);
  EXPECT_EQ(r.held_count(), 1u);
  r.Release(b);
  EXPECT_EQ(r.held_count(), 0u);
}

TEST(InflightRangesTest, WaitersOnTheSameRangeAreGrantedInArrivalOrder) {
  InflightRanges r;
  std::vector<int> order;
  InflightRanges::Ticket t0 = 0, t1 = 0, t2 = 0;
  ASSERT_TRUE(r.Acquire(0, 512, [] {}, t0));
  EXPECT_FALSE(r.Acquire(0, 512, [&] { order.push_back(1); }, t1));
  EXPECT_FALSE(r.Acquire(0, 512, [&] { order.push_back(2); }, t2));
  r.Release(t0);
  ASSERT_EQ(order, std::vector<int>({1}));
  r.Release(t1);
  EXPECT_EQ(order, std::vector<int>({1, 2}));
}

TEST(InflightRangesTest, LaterWriteCannotOvertakeAnEarlierOverlappingWaiter) {
  InflightRanges r;
  InflightRanges::Ticket a = 0, b = 0, c = 0;
  bool c_granted = false;
  ASSERT_TRUE(r.Acquire(0, 512, [] {}, a));
  // b waits for a, and covers [0, 1024).
  EXPECT_FALSE(r.Acquire(0, 1024, [] {}, b));
  // c does not overlap a, but overlaps the waiting b: it must queue behind b.
  EXPECT_FALSE(r.Acquire(512, 512, [&] { c_granted = true; }, c));
  r.Release(a);
  EXPECT_FALSE(c_granted);
  r.Release(b);
  EXPECT_TRUE(c_granted);
}

TEST(InflightRangesTest, ZeroLengthRangesStillSerialise) {
  InflightRanges r;
  InflightRanges::Ticket a = 0, b = 0;
  ASSERT_TRUE(r.Acquire(100, 0, [] {}, a));
  EXPECT_FALSE(r.Acquire(100, 1, [] {}, b));
}

// Released ranges keep their list nodes for reuse; a grant that ran must not stay in one, or the
// write's state (a shared_ptr in the real grant) would outlive the write.
TEST(InflightRangesTest, ReusedNodesKeepNoGrantAlive) {
  InflightRanges r;
  auto state = std::make_shared<int>(7);
  int grants = 0;
  for (int round = 0; round < 3; ++round) {
    InflightRanges::Ticket a = 0, b = 0;
    ASSERT_TRUE(r.Acquire(
        0, 4096, [] {}, a));
    ASSERT_FALSE(r.Acquire(
        0, 4096, [state, &grants] { grants += *state > 0 ? 1 : 0; }, b));
    EXPECT_EQ(state.use_count(), 2);  // The waiting grant holds it.
    r.Release(a);
    EXPECT_EQ(grants, round + 1);
    EXPECT_EQ(state.use_count(), 1);  // Released with the grant that ran.
    r.Release(b);
    EXPECT_EQ(r.held_count(), 0u);
    EXPECT_EQ(r.waiting_count(), 0u);
  }
}

}  // namespace
}  // namespace mirror
