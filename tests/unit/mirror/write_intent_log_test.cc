// Proves the write-intent log's rules on a fake metadata store whose writes and datasyncs
// complete only when the test says: a write into a clean region starts only once the page
// marking it is durable; marked regions cost no I/O; marks arriving together share a round; a
// failed datasync fails every write that waited and every later one; clean cycles clear only
// regions untouched during the cycle; resync clears skip regions with writes in flight; marked
// runs are region-aligned and clipped to the volume.

#include "mirror/write_intent_log.h"

#include <gtest/gtest.h>

#include "mirror/metadata.h"
#include "tests/unit/support/fake_store.h"
#include "tests/unit/support/loop.h"

namespace mirror {
namespace {

using testing_support::Drain;
using testing_support::FakeStore;

constexpr uint64_t kRegion = 64 * 1024;
constexpr uint64_t kVolume = 100 * kRegion + 4096;  // 101 regions, the last one short.

class WriteIntentLogTest : public ::testing::Test {
 protected:
  WriteIntentLogTest()
      : meta_(io_, kBitmapOffsetBytes + kBitmapPageBytes),
        log_(io_, &meta_, kVolume, kRegion, std::vector<uint8_t>(kBitmapAreaBytes, 0)) {}

  // The bit for `region` as the durable copy of the metadata store holds it.
  bool DurablyMarked(uint64_t region) {
    std::vector<uint8_t> bits(kBitmapAreaBytes);
    std::span<const std::byte> page(meta_.durable().data() + kBitmapOffsetBytes, kBitmapPageBytes);
    if (!DecodeBitmapPage(0, page, bits)) {
      return false;
    }
    return (bits[region / 8] >> (region % 8)) & 1;
  }

  // Completes the round in progress: its page writes, then its datasync.
  void CompleteRound() {
    while (meta_.CompleteOldestOf(FakeStore::Kind::kWrite)) {
    }
    Drain(io_);
    ASSERT_TRUE(meta_.CompleteOldestOf(FakeStore::Kind::kDatasync));
    Drain(io_);
  }

  // Completes rounds until no metadata I/O is pending.
  void CompleteAllRounds() {
    while (meta_.pending_count() > 0) {
      CompleteRound();
    }
  }

  asio::io_context io_;
  FakeStore meta_;
  WriteIntentLog log_;
};

TEST_F(WriteIntentLogTest, WriteIntoCleanRegionWaitsUntilItsMarkIsDurable) {
  bool ready = false;
  EXPECT_FALSE(log_.Mark(3 * kRegion + 100, 4096, [&](base::Status st) {
    EXPECT_TRUE(st.ok());
    ready = true;
  }));
  Drain(io_);
  EXPECT_FALSE(ready);
  ASSERT_TRUE(meta_.CompleteOldestOf(FakeStore::Kind::kWrite));
  Drain(io_);
  EXPECT_FALSE(ready) << "written but not yet synced";
  EXPECT_FALSE(DurablyMarked(3));
  ASSERT_TRUE(meta_.CompleteOldestOf(FakeStore::Kind::kDatasync));
  Drain(io_);
  EXPECT_TRUE(ready);
  EXPECT_TRUE(DurablyMarked(3));
  EXPECT_EQ(log_.marked_regions(), 1u);
}

TEST_F(WriteIntentLogTest, DurableWritesMakeARoundWithoutADatasync) {
  log_.set_writes_are_durable(true);
  bool ready = false;
  log_.Mark(0, 4096, [&](base::Status st) { ready = st.ok(); });
  ASSERT_TRUE(meta_.CompleteOldestOf(FakeStore::Kind::kWrite));
  Drain(io_);
  EXPECT_TRUE(ready);
  EXPECT_EQ(meta_.pending_count(), 0u);
  EXPECT_EQ(log_.stats().datasyncs, 0u);
}

TEST_F(WriteIntentLogTest, MarkedRegionsCostNoMetadataIo) {
  log_.Mark(0, 4096, [](base::Status) {});
  CompleteRound();
  log_.Unmark(0, 4096);
  const uint64_t writes_before = log_.stats().page_writes;
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(log_.Mark(i % 16 * 4096, 4096, [](base::Status) { FAIL(); }));
    log_.Unmark(i % 16 * 4096, 4096);
  }
  EXPECT_EQ(log_.stats().page_writes, writes_before);
  EXPECT_EQ(meta_.pending_count(), 0u);
}

TEST_F(WriteIntentLogTest, WriteToARegionWhoseMarkIsStillInFlightWaitsToo) {
  int ready = 0;
  log_.Mark(0, 4096, [&](base::Status) { ++ready; });
  // Same region, mark not yet durable: it must not go ahead.
  EXPECT_FALSE(log_.Mark(8192, 4096, [&](base::Status) { ++ready; }));
  CompleteRound();
  EXPECT_EQ(ready, 2);
}

TEST_F(WriteIntentLogTest, DurableRegionIsNotHeldUpByANewMarkInTheSamePage) {
  log_.Mark(0, 4096, [](base::Status) {});
  CompleteRound();
  log_.Unmark(0, 4096);
  // Region 5 (same bitmap page) starts a round; region 0 is durably marked already, so a write
  // into it goes ahead while that round runs, and after it, even with region 7 waiting next.
  bool five_ready = false;
  EXPECT_FALSE(log_.Mark(5 * kRegion, 4096, [&](base::Status st) { five_ready = st.ok(); }));
  EXPECT_TRUE(log_.Mark(0, 4096, [](base::Status) { FAIL(); }));
  log_.Unmark(0, 4096);
  bool seven_ready = false;
  EXPECT_FALSE(log_.Mark(7 * kRegion, 4096, [&](base::Status st) { seven_ready = st.ok(); }));
  // Region 5 again while its mark is in flight: it waits.
  bool five_again = false;
  EXPECT_FALSE(log_.Mark(5 * kRegion + 8192, 4096, [&](base::Status st) { five_again = st.ok(); }));
  EXPECT_TRUE(log_.Mark(0, 4096, [](base::Status) { FAIL(); }));
  log_.Unmark(0, 4096);
  CompleteRound();
  EXPECT_TRUE(five_ready);
  EXPECT_TRUE(five_again);
  EXPECT_FALSE(seven_ready);
  EXPECT_TRUE(DurablyMarked(5));
  CompleteRound();
  EXPECT_TRUE(seven_ready);
  EXPECT_TRUE(DurablyMarked(7));
  // Both durable now: no waiting, no I/O.
  EXPECT_TRUE(log_.Mark(5 * kRegion, 4096, [](base::Status) { FAIL(); }));
  EXPECT_TRUE(log_.Mark(7 * kRegion, 4096, [](base::Status) { FAIL(); }));
  EXPECT_EQ(meta_.pending_count(), 0u);
}

TEST_F(WriteIntentLogTest, MarkAheadMarksTheAlignedChunkInTheSameRound) {
  log_.set_mark_ahead_bytes(16 * kRegion);
  bool ready = false;
  EXPECT_FALSE(log_.Mark(20 * kRegion, 4096, [&](base::Status st) { ready = st.ok(); }));
  EXPECT_EQ(log_.marked_regions(), 16u) << "regions 16..31";
  // A neighbour in the chunk waits for the same round, not a later one.
  bool neighbour = false;
  EXPECT_FALSE(log_.Mark(30 * kRegion, 4096, [&](base::Status st) { neighbour = st.ok(); }));
  CompleteRound();
  EXPECT_TRUE(ready);
  EXPECT_TRUE(neighbour);
  EXPECT_EQ(meta_.pending_count(), 0u);
  for (uint64_t r = 16; r < 32; ++r) {
    EXPECT_TRUE(DurablyMarked(r)) << r;
  }
  EXPECT_FALSE(DurablyMarked(15));
  EXPECT_FALSE(DurablyMarked(32));
  EXPECT_TRUE(log_.Mark(17 * kRegion, 4096, [](base::Status) { FAIL(); }));
  log_.Unmark(17 * kRegion, 4096);
  log_.Unmark(20 * kRegion, 4096);
  log_.Unmark(30 * kRegion, 4096);
  // The last chunk is clipped to the volume (101 regions).
  log_.Mark(100 * kRegion, 4096, [](base::Status) {});
  EXPECT_EQ(log_.marked_regions(), 16u + 5u) << "regions 96..100";
  CompleteAllRounds();
  log_.Unmark(100 * kRegion, 4096);
  // Regions marked ahead but never written clear in a clean cycle like any untouched region.
  const uint64_t cycle = log_.BeginClean();
  log_.Mark(17 * kRegion, 4096, [](base::Status) { FAIL(); });
  log_.Unmark(17 * kRegion, 4096);
  log_.FinishClean(cycle);
  EXPECT_EQ(log_.marked_regions(), 1u);
  // Not allowed (the peer is away: marks are what its resync will copy): region-sized again.
  log_.set_mark_ahead_allowed([] { return false; });
  log_.Mark(40 * kRegion, 4096, [](base::Status) {});
  EXPECT_EQ(log_.marked_regions(), 2u);
  CompleteAllRounds();
  log_.Unmark(40 * kRegion, 4096);
}

TEST_F(WriteIntentLogTest, MarksArrivingTogetherShareOneRound) {
  int ready = 0;
  for (uint64_t r = 0; r < 10; ++r) {
    log_.Mark(r * kRegion, 4096, [&](base::Status) { ++ready; });
  }
  // One round in flight (page 0); the marks after the first wait for the next round.
  CompleteRound();
  if (ready < 10) {
    CompleteRound();
  }
  EXPECT_EQ(ready, 10);
  EXPECT_LE(log_.stats().datasyncs, 2u);
}

TEST_F(WriteIntentLogTest, FailedDatasyncFailsWaitersAndEveryLaterWrite) {
  base::Status first;
  log_.Mark(0, 4096, [&](base::Status st) { first = st; });
  meta_.set_fail_datasync(true);
  CompleteRound();
  EXPECT_EQ(first.errno_value(), EIO);
  EXPECT_TRUE(log_.failed());
  base::Status later;
  // Even an already-marked region: the log can no longer be trusted to record anything.
  EXPECT_FALSE(log_.Mark(0, 4096, [&](base::Status st) { later = st; }));
  Drain(io_);
  EXPECT_EQ(later.errno_value(), EIO);
}

TEST_F(WriteIntentLogTest, CleanCycleClearsOnlyRegionsUntouchedDuringIt) {
  for (uint64_t r : {1, 2, 3}) {
    log_.Mark(r * kRegion, 4096, [](base::Status) {});
  }
  CompleteAllRounds();
  log_.Unmark(1 * kRegion, 4096);
  log_.Unmark(2 * kRegion, 4096);
  // Region 3 is still in flight at the start of the cycle.
  const uint64_t cycle = log_.BeginClean();
  log_.Unmark(3 * kRegion, 4096);
  // Region 2 is written again during the cycle.
  ASSERT_TRUE(log_.Mark(2 * kRegion, 4096, [](base::Status) {}));
  log_.Unmark(2 * kRegion, 4096);
  EXPECT_EQ(log_.FinishClean(cycle), 1u);
  EXPECT_EQ(log_.marked_regions(), 2u);
  EXPECT_EQ(log_.NextMarked(0, kVolume)->offset_bytes, 2 * kRegion);
  // The clear is written back (lazily: nobody waits for it).
  CompleteRound();
  EXPECT_FALSE(DurablyMarked(1));
  EXPECT_TRUE(DurablyMarked(2));
}

// Found by the simulation: a clean cycle waiting for its flushes while a verify marked a block
// that differed cleared the verify's mark, and the resync after the verify skipped the block.
TEST_F(WriteIntentLogTest, CleanCycleKeepsRegionsMarkedWithoutAWriteDuringIt) {
  const uint64_t cycle = log_.BeginClean();
  log_.MarkRange(5 * kRegion, kRegion);
  EXPECT_EQ(log_.FinishClean(cycle), 0u);
  EXPECT_EQ(log_.marked_regions(), 1u);
  // The next cycle, begun after the mark, may clear it.
  EXPECT_EQ(log_.FinishClean(log_.BeginClean()), 1u);
}

TEST_F(WriteIntentLogTest, KnowsWhetherTheVolumeWasWrittenDuringACleanCycle) {
  log_.BeginClean();
  EXPECT_FALSE(log_.WrittenSinceBeginClean());
  log_.MarkRange(0, kRegion);  // Not a client write.
  EXPECT_FALSE(log_.WrittenSinceBeginClean());
  log_.Mark(kRegion, 4096, [](base::Status) {});
  EXPECT_TRUE(log_.WrittenSinceBeginClean());
  CompleteAllRounds();
  log_.Unmark(kRegion, 4096);
  log_.BeginClean();
  EXPECT_FALSE(log_.WrittenSinceBeginClean());
}

TEST_F(WriteIntentLogTest, StaleCleanCycleClearsNothing) {
  log_.Mark(0, 4096, [](base::Status) {});
  CompleteRound();
  log_.Unmark(0, 4096);
  const uint64_t cycle = log_.BeginClean();
  log_.AbortClean();  // The link dropped during the cycle's flush.
  EXPECT_EQ(log_.FinishClean(cycle), 0u);
  EXPECT_EQ(log_.marked_regions(), 1u);
}

TEST_F(WriteIntentLogTest, ResyncClearSkipsPartialAndInFlightRegions) {
  log_.MarkRange(0, 4 * kRegion);
  log_.Persist([](base::Status) {});
  CompleteRound();
  // Covers region 0 partly, 1 and 2 wholly, 3 not at all.
  log_.NoteCopied(100, 3 * kRegion - 100);
  ASSERT_TRUE(log_.Mark(1 * kRegion, 512, [](base::Status) {}));  // 1: a write since the copy.
  EXPECT_EQ(log_.ClearCopied(100, 3 * kRegion - 100), 1u);
  EXPECT_EQ(log_.marked_regions(), 3u);
  auto runs = log_.MarkedRuns();
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].offset_bytes, 0u);
  EXPECT_EQ(runs[0].length_bytes, 2 * kRegion);
  EXPECT_EQ(runs[1].offset_bytes, 3 * kRegion);
}

TEST_F(WriteIntentLogTest, ResyncClearKeepsRegionsWrittenSinceTheCopyEvenAfterTheWriteEnded) {
  log_.MarkRange(0, 3 * kRegion);
  log_.Persist([](base::Status) {});
  CompleteRound();
  log_.NoteCopied(0, 3 * kRegion);
  // A client write into region 2 after the copy, finished before the batch's flush: it may
  // not be durable on both (the flush that follows may have started before it completed).
  ASSERT_TRUE(log_.Mark(2 * kRegion, 4096, [](base::Status) {}));
  log_.Unmark(2 * kRegion, 4096);
  // A verify mismatch (or the peer's marks) in region 1 after the copy.
  log_.MarkRange(kRegion, 10);
  EXPECT_EQ(log_.ClearCopied(0, 3 * kRegion), 1u);
  auto runs = log_.MarkedRuns();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].offset_bytes, kRegion);
  EXPECT_EQ(runs[0].length_bytes, 2 * kRegion);
  // The copies are forgotten: clearing again (a later batch over the same range) clears
  // nothing without a new NoteCopied.
  EXPECT_EQ(log_.ClearCopied(0, 3 * kRegion), 0u);
  log_.NoteCopied(kRegion, 2 * kRegion);
  EXPECT_EQ(log_.ClearCopied(0, 3 * kRegion), 2u);
  EXPECT_EQ(log_.marked_regions(), 0u);
}

TEST_F(WriteIntentLogTest, RunsAreAlignedCappedAndClippedToTheVolume) {
  log_.MarkRange(98 * kRegion + 10, kVolume - 98 * kRegion - 10);  // Regions 98..100.
  log_.MarkRange(5 * kRegion, 20 * kRegion);                        // Regions 5..24.
  EXPECT_EQ(log_.marked_bytes(), 20 * kRegion + 2 * kRegion + 4096);
  auto first = log_.NextMarked(0, 16 * kRegion);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->offset_bytes, 5 * kRegion);
  EXPECT_EQ(first->length_bytes, 16 * kRegion);
  auto last = log_.NextMarked(30 * kRegion, 16 * kRegion);
  ASSERT_TRUE(last);
  EXPECT_EQ(last->offset_bytes, 98 * kRegion);
  EXPECT_EQ(last->offset_bytes + last->length_bytes, kVolume);
  EXPECT_FALSE(log_.NextMarked(kVolume, kRegion));
}

TEST_F(WriteIntentLogTest, DisabledLogTracksNothingAndCountsEverythingAsMarked) {
  WriteIntentLog off(io_, &meta_, kVolume, kRegion, std::vector<uint8_t>(kBitmapAreaBytes, 0),
                     /*enabled=*/false);
  EXPECT_TRUE(off.Mark(0, 4096, [](base::Status) { FAIL(); }));
  off.Unmark(0, 4096);
  EXPECT_EQ(off.marked_bytes(), kVolume);
  EXPECT_EQ(meta_.pending_count(), 0u);
}

}  // namespace
}  // namespace mirror
