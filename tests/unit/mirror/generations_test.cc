// Proves the connect-time decision of mirror/generations.h case by case, following the life of
// a pair: in sync, standby outage, primary crash, failover and rejoin, split brain, the
// operator's discard, and unrelated copies.

#include "mirror/generations.h"

#include <gtest/gtest.h>

namespace mirror {
namespace {

// A copy in sync with its peer: the peer holds its current generation.
Generations InSync(uint64_t gen) { return {gen, gen, {}, true}; }

TEST(GenerationsTest, NewSecondaryGetsAFullResync) {
  EXPECT_EQ(DecideSync({7, 0, {}}, {}, false, false).kind, SyncKind::kFull);
}

TEST(GenerationsTest, SameGenerationWithNothingMarkedNeedsNothing) {
  EXPECT_EQ(DecideSync(InSync(7), InSync(7), true, false).kind, SyncKind::kNone);
}

TEST(GenerationsTest, SameGenerationAfterACrashResyncsTheMarkedRegions) {
  // The primary died mid-write: same generation, but its bitmap marks in-flight regions.
  EXPECT_EQ(DecideSync(InSync(7), InSync(7), true, true).kind, SyncKind::kIncremental);
  // A resync of that kind was interrupted: the secondary is Inconsistent at that generation.
  EXPECT_EQ(DecideSync(InSync(7), InSync(7), false, false).kind, SyncKind::kIncremental);
}

TEST(GenerationsTest, PrimaryThatWroteAloneResyncsIncrementally) {
  Generations primary = InSync(7);
  DivergeFromPeer(primary);
  EXPECT_NE(primary.current, 7u);
  EXPECT_EQ(primary.bitmap, 7u);
  EXPECT_EQ(primary.history, std::vector<uint64_t>{7});
  EXPECT_EQ(DecideSync(primary, InSync(7), true, true).kind, SyncKind::kIncremental);
  // A second outage (the resync in between was interrupted): still incremental from 7.
  DivergeFromPeer(primary);
  EXPECT_EQ(primary.bitmap, 7u);
  EXPECT_EQ(DecideSync(primary, InSync(7), false, true).kind, SyncKind::kIncremental);
}

TEST(GenerationsTest, LostResyncDoneAckThenWritesAloneIsNeverTakenForInSync) {
  // A full resync to generation X of a primary at 7; the secondary adopted 7 at ResyncDone but
  // its acknowledgement was lost, so the primary still has bitmap X, and then wrote alone.
  Generations primary{7, 0x99, {}, /*current_shared=*/true};
  Generations secondary = InSync(7);
  DivergeFromPeer(primary);
  EXPECT_EQ(DecideSync(primary, secondary, true, true).kind, SyncKind::kFull);
  // If the secondary was promoted and wrote too, the old primary rejoining is split brain.
  DivergeFromPeer(secondary);
  EXPECT_EQ(DecideSync(secondary, primary, true, true).kind, SyncKind::kSplitBrain);
}

TEST(GenerationsTest, FailoverAndRejoinIsIncremental) {
  // b was promoted and wrote; a (old primary, crashed while in sync) rejoins as secondary.
  Generations b = InSync(7);
  DivergeFromPeer(b);
  EXPECT_EQ(DecideSync(b, InSync(7), true, true).kind, SyncKind::kIncremental);
}

TEST(GenerationsTest, BothWroteAloneIsSplitBrainUntilOneSideDiscards) {
  Generations a = InSync(7);
  Generations b = InSync(7);
  DivergeFromPeer(a);
  DivergeFromPeer(b);
  EXPECT_EQ(DecideSync(a, b, true, true).kind, SyncKind::kSplitBrain);
  EXPECT_EQ(DecideSync(b, a, true, true).kind, SyncKind::kSplitBrain);
  // `nbdmirror discard-changes` on b: back to the shared generation, marks kept.
  b.current = b.bitmap;
  EXPECT_EQ(DecideSync(a, b, false, true).kind, SyncKind::kIncremental);
}

TEST(GenerationsTest, SecondaryAheadOfThePrimaryIsRefused) {
  // b was primary for a while and wrote; a comes back as primary without having written.
  Generations b = InSync(7);
  DivergeFromPeer(b);
  EXPECT_EQ(DecideSync(InSync(7), b, true, true).kind, SyncKind::kPeerAhead);
}

TEST(GenerationsTest, SecondaryManyGenerationsBehindGetsAFullResync) {
  Generations primary = InSync(1);
  for (uint64_t gen : {2, 3, 4}) {
    DivergeFromPeer(primary);  // Outage: new current, bitmap base stays 1...
    // ...then a resync to some standby brings the bitmap base up to date.
    primary.bitmap = primary.current;
    (void)gen;
  }
  EXPECT_EQ(DecideSync(primary, InSync(1), true, false).kind, SyncKind::kFull);
}

TEST(GenerationsTest, CopiesWithNothingInCommonAreUnrelated) {
  EXPECT_EQ(DecideSync(InSync(7), InSync(8), true, false).kind, SyncKind::kUnrelated);
}

TEST(GenerationsTest, MintedGenerationIsNotSharedUntilThePeerGetsIt) {
  Generations g = InSync(7);
  DivergeFromPeer(g);
  EXPECT_FALSE(g.current_shared);
  EXPECT_EQ(g.bitmap, 7u);
}

TEST(GenerationsTest, HistoryKeepsTheNewestFew) {
  Generations g = InSync(1);
  for (int i = 0; i < 10; ++i) {
    g.bitmap = g.current;
    DivergeFromPeer(g);
  }
  EXPECT_EQ(g.history.size(), Generations::kHistoryLength);
  EXPECT_EQ(g.history.front(), g.bitmap);
}

TEST(GenerationsTest, RefusalsAreTheThreeUnsafeKinds) {
  EXPECT_TRUE(IsRefusal(SyncKind::kSplitBrain));
  EXPECT_TRUE(IsRefusal(SyncKind::kPeerAhead));
  EXPECT_TRUE(IsRefusal(SyncKind::kUnrelated));
  EXPECT_FALSE(IsRefusal(SyncKind::kFull));
  EXPECT_FALSE(IsRefusal(SyncKind::kIncremental));
  EXPECT_FALSE(IsRefusal(SyncKind::kNone));
}

}  // namespace
}  // namespace mirror
