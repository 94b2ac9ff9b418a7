// Proves the Volume's write path on a fake store whose operations complete only when the test
// says so: overlapping writes are serialised, FUA and FLUSH wait for a datasync that covers
// them, a disk error reaches the caller, and injected faults hit only their ranges.

#include "mirror/volume.h"

#include <gtest/gtest.h>

#include "mirror/fault_injecting_store.h"
#include "tests/unit/support/fake_store.h"
#include "tests/unit/support/loop.h"

namespace mirror {
namespace {

using testing_support::FakeStore;

std::vector<std::byte> Bytes(size_t n, uint8_t value) {
  return std::vector<std::byte>(n, std::byte{value});
}

class VolumeTest : public ::testing::Test {
 protected:
  asio::io_context io_;
  FakeStore store_{io_, 1 << 20};
  Volume volume_{io_, store_, nullptr, Mode::kFlush};
};

TEST_F(VolumeTest, OverlappingWriteStartsOnlyAfterTheEarlierOneCompletes) {
  auto a = Bytes(4096, 0xaa), b = Bytes(4096, 0xbb);
  int done = 0;
  ASSERT_TRUE(volume_.Write(0, a, false, [&](base::Status st) { done += st.ok(); }).ok());
  ASSERT_TRUE(volume_.Write(2048, b, false, [&](base::Status st) { done += st.ok(); }).ok());
  EXPECT_EQ(store_.pending_count(FakeStore::Kind::kWrite), 1u) << "second write must wait";
  ASSERT_TRUE(store_.CompleteOldest());
  EXPECT_EQ(store_.pending_count(FakeStore::Kind::kWrite), 1u);
  store_.CompleteAll();
  EXPECT_EQ(done, 2);
  EXPECT_EQ(store_.data()[2047], std::byte{0xaa});
  EXPECT_EQ(store_.data()[2048], std::byte{0xbb}) << "the later write must win";
  EXPECT_EQ(volume_.stats().range_waits, 1u);
}

// An unaligned write goes through the page cache, which rewrites its whole block later: an
// aligned write elsewhere in that block must wait for it, or its data could be undone.
TEST_F(VolumeTest, WriteIntoTheBlockOfAnUnalignedWriteWaitsForIt) {
  store_.set_footprint_block(4096);
  auto odd = Bytes(100, 0x11), aligned = Bytes(512, 0x22), far = Bytes(512, 0x33);
  int done = 0;
  ASSERT_TRUE(volume_.Write(0, odd, false, [&](base::Status st) { done += st.ok(); }).ok());
  ASSERT_TRUE(volume_.Write(512, aligned, false, [&](base::Status st) { done += st.ok(); }).ok());
  ASSERT_TRUE(volume_.Write(8192, far, false, [&](base::Status st) { done += st.ok(); }).ok());
  EXPECT_EQ(store_.pending_count(FakeStore::Kind::kWrite), 2u)
      << "the write at 512 shares the unaligned write's block; the one at 8192 does not";
  EXPECT_EQ(volume_.stats().range_waits, 1u);
  ASSERT_TRUE(store_.CompleteOldest());
  EXPECT_EQ(store_.pending_count(FakeStore::Kind::kWrite), 2u) << "now the write at 512 starts";
  store_.CompleteAll();
  EXPECT_EQ(done, 3);
  EXPECT_EQ(store_.data()[99], std::byte{0x11});
  EXPECT_EQ(store_.data()[512], std::byte{0x22});
}

TEST_F(VolumeTest, DisjointWritesRunConcurrently) {
  auto a = Bytes(4096, 1);
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(volume_.Write(static_cast<uint64_t>(i) * 4096, a, false, [](base::Status) {}).ok());
  }
  EXPECT_EQ(store_.pending_count(FakeStore::Kind::kWrite), 8u);
  store_.CompleteAll();
}

TEST_F(VolumeTest, FuaWriteAmongOthersIsRepliedOnlyWhenDurable) {
  auto a = Bytes(512, 7);
  ASSERT_TRUE(volume_.Write(8192, a, false, [](base::Status) {}).ok());
  bool replied = false;
  ASSERT_TRUE(volume_.Write(0, a, true, [&](base::Status st) { replied = st.ok(); }).ok());
  EXPECT_EQ(store_.pending_count(FakeStore::Kind::kWriteThrough), 0u)
      << "written through with another write in flight (group commit is cheaper then)";
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWrite));
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWrite));
  EXPECT_FALSE(replied) << "FUA replied before a datasync";
  ASSERT_EQ(store_.pending_count(FakeStore::Kind::kDatasync), 1u);
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kDatasync));
  EXPECT_TRUE(replied);
  EXPECT_EQ(store_.durable()[0], std::byte{7});
}

TEST_F(VolumeTest, LoneFuaWriteIsWrittenThroughWithoutADatasync) {
  auto a = Bytes(512, 8);
  bool replied = false;
  ASSERT_TRUE(volume_.Write(0, a, true, [&](base::Status st) { replied = st.ok(); }).ok());
  ASSERT_EQ(store_.pending_count(FakeStore::Kind::kWriteThrough), 1u);
  EXPECT_EQ(store_.pending_count(FakeStore::Kind::kWrite), 0u);
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWriteThrough));
  EXPECT_TRUE(replied);
  EXPECT_EQ(store_.durable()[0], std::byte{8});
  EXPECT_EQ(store_.datasyncs_submitted(), 0);
  EXPECT_EQ(volume_.group_commit().write_through_count(), 1u);
  // A FLUSH after it has nothing left to sync, nor anything to wait for: answered from inside
  // the call (BlockDevice allows that of a Flush alone).
  bool flushed = false;
  ASSERT_TRUE(volume_.Flush([&](base::Status st) { flushed = st.ok(); }).ok());
  EXPECT_TRUE(flushed);
  EXPECT_EQ(store_.datasyncs_submitted(), 0);
  EXPECT_EQ(volume_.stats().flush.count(), 1u);
}

TEST_F(VolumeTest, AFlushStillCoversPlainWritesCompletedBeforeAWriteThrough) {
  auto a = Bytes(512, 1), b = Bytes(512, 2);
  ASSERT_TRUE(volume_.Write(0, a, false, [](base::Status) {}).ok());
  store_.CompleteAll();  // Completed, not durable.
  ASSERT_TRUE(volume_.Write(4096, b, true, [](base::Status) {}).ok());
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWriteThrough));
  EXPECT_EQ(store_.durable()[0], std::byte{0}) << "the write-through made another write durable";
  bool flushed = false;
  ASSERT_TRUE(volume_.Flush([&](base::Status st) { flushed = st.ok(); }).ok());
  testing_support::Drain(io_);
  EXPECT_FALSE(flushed) << "a FLUSH skipped the datasync a plain write still needed";
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kDatasync));
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return flushed; }));
  EXPECT_EQ(store_.durable()[0], std::byte{1});
  EXPECT_EQ(store_.durable()[4096], std::byte{2});
}

TEST_F(VolumeTest, AFailedLoneWriteThroughFailsItsRequestNotTheDisk) {
  auto a = Bytes(512, 3);
  base::Status written;
  ASSERT_TRUE(volume_.Write(0, a, true, [&](base::Status st) { written = st; }).ok());
  ASSERT_TRUE(store_.FailOldestOf(FakeStore::Kind::kWriteThrough, EIO));
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return !written.ok(); }));
  EXPECT_EQ(written.errno_value(), EIO);
  EXPECT_FALSE(volume_.disk_failed());
  bool flushed = false;
  ASSERT_TRUE(volume_.Flush([&](base::Status st) { flushed = st.ok(); }).ok());
  ASSERT_EQ(store_.pending_count(FakeStore::Kind::kDatasync), 1u)
      << "part of the failed write may sit in a cache";
  store_.CompleteAll();
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return flushed; }));
}

TEST_F(VolumeTest, AFailedWriteThroughWithAnotherWriteUnsyncedFailsTheDisk) {
  // Its error may have come from a flush that also covered the other write: as after a failed
  // datasync, no later FLUSH may report success.
  auto a = Bytes(512, 3);
  base::Status written;
  ASSERT_TRUE(volume_.Write(0, a, true, [&](base::Status st) { written = st; }).ok());
  ASSERT_TRUE(volume_.Write(8192, a, false, [](base::Status) {}).ok());  // Plain: not alone.
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWrite));
  ASSERT_TRUE(store_.FailOldestOf(FakeStore::Kind::kWriteThrough, EIO));
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return !written.ok(); }));
  EXPECT_TRUE(volume_.disk_failed());
  base::Status flushed = base::Status::Ok();
  bool done = false;
  ASSERT_TRUE(volume_
                  .Flush([&](base::Status st) {
                    flushed = st;
                    done = true;
                  })
                  .ok());
  EXPECT_FALSE(done) << "a failed disk's FLUSH was answered at once, as if all were durable";
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return done; }));
  EXPECT_EQ(flushed.errno_value(), EIO);
  EXPECT_EQ(store_.datasyncs_submitted(), 0);
}

TEST_F(VolumeTest, FlushCoversEveryCompletedWrite) {
  auto a = Bytes(512, 1), b = Bytes(512, 2);
  ASSERT_TRUE(volume_.Write(0, a, false, [](base::Status) {}).ok());
  ASSERT_TRUE(volume_.Write(4096, b, false, [](base::Status) {}).ok());
  store_.CompleteAll();
  bool flushed = false;
  ASSERT_TRUE(volume_.Flush([&](base::Status st) { flushed = st.ok(); }).ok());
  store_.CompleteAll();
  EXPECT_TRUE(flushed);
  EXPECT_EQ(store_.durable()[0], std::byte{1});
  EXPECT_EQ(store_.durable()[4096], std::byte{2});
}

TEST_F(VolumeTest, LocalWriteErrorFailsTheRequestAndFreesTheRange) {
  auto a = Bytes(512, 1);
  base::Status first, second;
  ASSERT_TRUE(volume_.Write(0, a, false, [&](base::Status st) { first = st; }).ok());
  ASSERT_TRUE(volume_.Write(0, a, false, [&](base::Status st) { second = st; }).ok());
  ASSERT_TRUE(store_.FailOldest(EIO));
  EXPECT_EQ(first.errno_value(), EIO);
  store_.CompleteAll();
  EXPECT_TRUE(second.ok());
  EXPECT_EQ(volume_.stats().errors, 1u);
}

TEST_F(VolumeTest, OutOfRangeWriteIsRefusedAndNothingIsSubmitted) {
  auto a = Bytes(4096, 1);
  EXPECT_EQ(volume_.Write((1 << 20) - 512, a, false, [](base::Status) {}).errno_value(), ENOSPC);
  EXPECT_EQ(store_.pending_count(), 0u);
}

TEST(FaultInjectingStoreTest, OnlyMatchingRangesFail) {
  asio::io_context io;
  FakeStore inner(io, 1 << 20);
  auto rule = ParseFaultRule("write:8192:4096");
  ASSERT_TRUE(rule.ok());
  FaultInjectingStore store(io, inner, {rule.value()});
  Volume volume(io, store, nullptr, Mode::kFlush);
  auto a = Bytes(4096, 1);
  base::Status hit, miss;
  bool hit_done = false, miss_done = false;
  ASSERT_TRUE(volume.Write(10000, a, false, [&](base::Status st) {
    hit = st;
    hit_done = true;
  }).ok());
  ASSERT_TRUE(volume.Write(0, a, false, [&](base::Status st) {
    miss = st;
    miss_done = true;
  }).ok());
  inner.CompleteAll();
  ASSERT_TRUE(testing_support::RunUntil(io, [&] { return hit_done && miss_done; }));
  EXPECT_EQ(hit.errno_value(), EIO);
  EXPECT_TRUE(miss.ok());
  EXPECT_EQ(store.injected_count(), 1u);
  EXPECT_FALSE(ParseFaultRule("write:x:1").ok());
  EXPECT_FALSE(ParseFaultRule("erase:0:1").ok());
  EXPECT_TRUE(ParseFaultRule("datasync").ok());
}

}  // namespace
}  // namespace mirror
