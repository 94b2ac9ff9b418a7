// Proves the acknowledgement rule of the mirrored write path on fakes: no write or flush is
// answered before both the local store and the peer link have confirmed what the mode promises,
// a degraded peer never fails a write, and overlapping writes reach the peer one at a time.

#include <gtest/gtest.h>

#include <chrono>
#include <deque>

#include "mirror/volume.h"
#include "tests/unit/support/fake_store.h"
#include "tests/unit/support/loop.h"

namespace mirror {
namespace {

using testing_support::FakeStore;

class FakePeerLink final : public PeerLink {
 public:
  struct Op {
    enum Kind { kWrite, kZero, kFlush } kind;
    uint64_t offset_bytes;
    uint64_t length_bytes;
    bool durable;
    PeerDone done;
  };
  void ReplicateWrite(uint64_t offset, std::span<const std::byte> data, bool durable,
                      PeerDone done) override {
    ops.push_back({Op::kWrite, offset, data.size(), durable, std::move(done)});
  }
  void ReplicateZero(uint64_t offset, uint64_t length, nbd::ZeroOptions, bool, bool durable,
                     PeerDone done) override {
    ops.push_back({Op::kZero, offset, length, durable, std::move(done)});
  }
  void ReplicateFlush(PeerDone done) override {
    ops.push_back({Op::kFlush, 0, 0, true, std::move(done)});
  }
  void OnLocalWriteFailed() override { ++local_write_failures; }
  void Answer(PeerOutcome outcome) {
    ASSERT_FALSE(ops.empty());
    Op op = std::move(ops.front());
    ops.pop_front();
    op.done(outcome);
  }
  std::deque<Op> ops;
  int local_write_failures = 0;
};

std::vector<std::byte> Bytes(size_t n, uint8_t value) {
  return std::vector<std::byte>(n, std::byte{value});
}

class MirroredVolumeTest : public ::testing::Test {
 protected:
  asio::io_context io_;
  FakeStore store_{io_, 1 << 20};
  FakePeerLink peer_;
};

TEST_F(MirroredVolumeTest, SyncWriteWaitsForLocalDatasyncAndPeerConfirmation) {
  Volume volume(io_, store_, &peer_, Mode::kSync);
  auto data = Bytes(4096, 1);
  // Alone: written through. The second is not alone: a plain write and a datasync.
  ASSERT_TRUE(volume.Write(65536, data, false, [](base::Status) {}).ok());
  bool replied = false;
  ASSERT_TRUE(volume.Write(0, data, false, [&](base::Status st) { replied = st.ok(); }).ok());
  ASSERT_EQ(peer_.ops.size(), 2u);
  EXPECT_TRUE(peer_.ops.back().durable) << "sync mode must ask the peer for durability";
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWriteThrough));
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWrite));
  EXPECT_FALSE(replied);
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kDatasync));
  EXPECT_FALSE(replied) << "replied before the peer confirmed";
  peer_.Answer(PeerOutcome::kConfirmed);
  peer_.Answer(PeerOutcome::kConfirmed);
  EXPECT_TRUE(replied);
}

// The standby refuses an empty operation as malformed and drops the link, so none may reach it:
// an empty TRIM or WRITE_ZEROES from a client succeeds with nothing written anywhere.
TEST_F(MirroredVolumeTest, EmptyTrimAndZeroesNeverReachTheStoreOrThePeer) {
  Volume volume(io_, store_, &peer_, Mode::kSync);
  int replied = 0;
  ASSERT_TRUE(volume.Trim(4096, 0, true, [&](base::Status st) { replied += st.ok(); }).ok());
  ASSERT_TRUE(
      volume.WriteZeroes(8192, 0, {}, false, [&](base::Status st) { replied += st.ok(); }).ok());
  ASSERT_TRUE(volume
                  .WriteZeroes(1 << 20, 0, {.fast_only = true}, false,
                               [&](base::Status st) { replied += st.ok(); })
                  .ok());
  EXPECT_TRUE(testing_support::RunUntil(io_, [&] { return replied == 3; }));
  EXPECT_EQ(store_.pending_count(), 0u);
  EXPECT_TRUE(peer_.ops.empty()) << "an empty operation was sent to the peer";
}

TEST_F(MirroredVolumeTest, LoneSyncWriteIsWrittenThroughAndWaitsForThePeer) {
  Volume volume(io_, store_, &peer_, Mode::kSync);
  auto data = Bytes(4096, 2);
  bool replied = false;
  ASSERT_TRUE(volume.Write(0, data, false, [&](base::Status st) { replied = st.ok(); }).ok());
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWriteThrough));
  EXPECT_EQ(store_.durable()[0], std::byte{2});
  EXPECT_FALSE(replied) << "replied before the peer confirmed";
  peer_.Answer(PeerOutcome::kConfirmed);
  EXPECT_TRUE(replied);
  EXPECT_EQ(store_.datasyncs_submitted(), 0);
}

TEST_F(MirroredVolumeTest, PeerConfirmationAloneIsNotEnough) {
  Volume volume(io_, store_, &peer_, Mode::kFlush);
  auto data = Bytes(512, 2);
  bool replied = false;
  ASSERT_TRUE(volume.Write(0, data, false, [&](base::Status) { replied = true; }).ok());
  peer_.Answer(PeerOutcome::kConfirmed);
  EXPECT_FALSE(replied) << "replied before the local write completed";
  store_.CompleteAll();
  EXPECT_TRUE(replied);
  EXPECT_EQ(store_.datasyncs_submitted(), 0) << "flush mode writes need no datasync";
}

TEST_F(MirroredVolumeTest, FuaInFlushModeIsDurableOnBothSides) {
  Volume volume(io_, store_, &peer_, Mode::kFlush);
  auto data = Bytes(512, 3);
  bool replied = false;
  ASSERT_TRUE(volume.Write(0, data, true, [&](base::Status) { replied = true; }).ok());
  EXPECT_TRUE(peer_.ops.front().durable);
  store_.CompleteAll();
  EXPECT_EQ(store_.durable()[0], std::byte{3});
  peer_.Answer(PeerOutcome::kConfirmed);
  EXPECT_TRUE(replied);
}

TEST_F(MirroredVolumeTest, FlushWaitsForBothSides) {
  Volume volume(io_, store_, &peer_, Mode::kFlush);
  auto data = Bytes(512, 4);
  ASSERT_TRUE(volume.Write(0, data, false, [](base::Status) {}).ok());
  store_.CompleteAll();
  peer_.Answer(PeerOutcome::kConfirmed);
  bool flushed = false;
  ASSERT_TRUE(volume.Flush([&](base::Status st) { flushed = st.ok(); }).ok());
  store_.CompleteAll();
  EXPECT_FALSE(flushed) << "flush answered before the peer flushed";
  ASSERT_EQ(peer_.ops.front().kind, FakePeerLink::Op::kFlush);
  peer_.Answer(PeerOutcome::kConfirmed);
  EXPECT_TRUE(flushed);
}

TEST_F(MirroredVolumeTest, SyncFlushAsksThePeerNothing) {
  // Every write replied to in mode sync is durable on both already: the FLUSH that covers it
  // needs no round trip, and no datasync either.
  Volume volume(io_, store_, &peer_, Mode::kSync);
  auto data = Bytes(4096, 9);
  bool replied = false;
  ASSERT_TRUE(volume.Write(0, data, false, [&](base::Status st) { replied = st.ok(); }).ok());
  store_.CompleteAll();
  peer_.Answer(PeerOutcome::kConfirmed);
  ASSERT_TRUE(replied);
  const uint64_t datasyncs = store_.datasyncs_submitted();
  bool flushed = false;
  ASSERT_TRUE(volume.Flush([&](base::Status st) { flushed = st.ok(); }).ok());
  EXPECT_TRUE(peer_.ops.empty()) << "a sync-mode FLUSH was sent to the peer";
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return flushed; }));
  EXPECT_EQ(store_.datasyncs_submitted(), datasyncs);
}

TEST_F(MirroredVolumeTest, SyncFlushAfterAFailedWriteSyncsLocally) {
  // A failed write may have left part of itself unsynced (a buffered fallback store): the next
  // FLUSH still datasyncs locally, and still fails if that datasync fails.
  Volume volume(io_, store_, &peer_, Mode::kSync);
  auto data = Bytes(4096, 10);
  base::Status result;
  bool other_replied = false;
  // The first, alone, is written through; the second, not alone, is a plain write (whose
  // failure is that request's error; a write-through's would fail the disk).
  ASSERT_TRUE(volume.Write(65536, data, false, [&](base::Status) { other_replied = true; }).ok());
  ASSERT_TRUE(volume.Write(0, data, false, [&](base::Status st) { result = st; }).ok());
  ASSERT_TRUE(store_.FailOldestOf(FakeStore::Kind::kWrite, EIO));
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWriteThrough));
  peer_.Answer(PeerOutcome::kConfirmed);
  peer_.Answer(PeerOutcome::kConfirmed);
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return !result.ok() && other_replied; }));
  EXPECT_FALSE(volume.disk_failed()) << "a failed plain write is that request's error only";
  bool flushed = false;
  ASSERT_TRUE(volume.Flush([&](base::Status st) { flushed = st.ok(); }).ok());
  EXPECT_TRUE(peer_.ops.empty());
  EXPECT_FALSE(flushed);
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kDatasync));
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return flushed; }));
}

// Runs one FLUSH through `volume` to its reply, answering the peer's part if it has one.
void FlushToTheEnd(asio::io_context& io, Volume& volume, FakeStore& store, FakePeerLink& peer) {
  bool flushed = false;
  ASSERT_TRUE(volume.Flush([&](base::Status st) { flushed = st.ok(); }).ok());
  store.CompleteAll();
  if (!peer.ops.empty()) {
    peer.Answer(PeerOutcome::kConfirmed);
  }
  ASSERT_TRUE(testing_support::RunUntil(io, [&] { return flushed; }));
}

TEST_F(MirroredVolumeTest, SyncsAheadOnlyForALoneWriteOfAClientThatFlushes) {
  Volume volume(io_, store_, &peer_, Mode::kFlush);
  auto data = Bytes(4096, 11);
  ASSERT_TRUE(volume.Write(0, data, false, [](base::Status) {}).ok());
  store_.CompleteAll();
  peer_.Answer(PeerOutcome::kConfirmed);
  FlushToTheEnd(io_, volume, store_, peer_);  // The client flushes after each write.
  // Two writes in flight: neither local completion may start a datasync ahead.
  uint64_t before = store_.datasyncs_submitted();
  // (The first, alone at its start, is written through: the FLUSH is expected after it.)
  ASSERT_TRUE(volume.Write(0, data, false, [](base::Status) {}).ok());
  ASSERT_TRUE(volume.Write(8192, data, false, [](base::Status) {}).ok());
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWriteThrough));
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWrite));
  EXPECT_EQ(store_.datasyncs_submitted(), before) << "synced ahead with another write in flight";
  peer_.Answer(PeerOutcome::kConfirmed);
  peer_.Answer(PeerOutcome::kConfirmed);
  FlushToTheEnd(io_, volume, store_, peer_);  // Now it flushes after two writes.
  // Alone in flight, but the first of two: a plain write; the second: written through, and
  // the FLUSH that follows needs no datasync of its own.
  before = store_.datasyncs_submitted();
  const uint64_t through_before = volume.group_commit().write_through_count();
  ASSERT_TRUE(volume.Write(0, data, false, [](base::Status) {}).ok());
  EXPECT_EQ(store_.pending_count(FakeStore::Kind::kWriteThrough), 0u);
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWrite));
  EXPECT_EQ(store_.datasyncs_submitted(), before);
  peer_.Answer(PeerOutcome::kConfirmed);
  ASSERT_TRUE(volume.Write(8192, data, false, [](base::Status) {}).ok());
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWriteThrough))
      << "the last write before the expected FLUSH was not written through";
  EXPECT_EQ(volume.group_commit().write_through_count(), through_before + 1);
  peer_.Answer(PeerOutcome::kConfirmed);
  FlushToTheEnd(io_, volume, store_, peer_);
  EXPECT_EQ(store_.datasyncs_submitted(), before + 1)
      << "one datasync, for the plain write, and none for the write-through";
  // The same pattern but the last write shares its flight with another at submission: plain
  // writes, and the datasync starts ahead when the last completes alone.
  before = store_.datasyncs_submitted();
  ASSERT_TRUE(volume.Write(0, data, false, [](base::Status) {}).ok());
  ASSERT_TRUE(volume.Write(8192, data, false, [](base::Status) {}).ok());
  EXPECT_EQ(store_.pending_count(FakeStore::Kind::kWriteThrough), 0u);
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWrite));
  peer_.Answer(PeerOutcome::kConfirmed);
  testing_support::Drain(io_);
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWrite));
  EXPECT_EQ(store_.datasyncs_submitted(), before + 1) << "no datasync ahead of the expected FLUSH";
  EXPECT_EQ(volume.group_commit().sync_ahead_count(), 1u);
}

TEST_F(MirroredVolumeTest, WrittenThroughWriteIsDurableOnThePeerAndItsFlushAsksThePeerNothing) {
  Volume volume(io_, store_, &peer_, Mode::kFlush);
  auto data = Bytes(4096, 12);
  // A plain write, confirmed by the peer without durability: the FLUSH must ask the peer.
  ASSERT_TRUE(volume.Write(0, data, false, [](base::Status) {}).ok());
  ASSERT_EQ(peer_.ops.size(), 1u);
  EXPECT_FALSE(peer_.ops.front().durable);
  store_.CompleteAll();
  peer_.Answer(PeerOutcome::kConfirmed);
  bool flushed = false;
  ASSERT_TRUE(volume.Flush([&](base::Status st) { flushed = st.ok(); }).ok());
  ASSERT_EQ(peer_.ops.size(), 1u) << "a FLUSH after a volatile write did not ask the peer";
  EXPECT_EQ(peer_.ops.front().kind, FakePeerLink::Op::kFlush);
  store_.CompleteAll();
  testing_support::Drain(io_);
  EXPECT_FALSE(flushed) << "answered before the peer flushed";
  peer_.Answer(PeerOutcome::kConfirmed);
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return flushed; }));
  EXPECT_EQ(volume.stats().flushes_without_peer, 0u);
  // The client flushes after each write: the next write is written through, here and there.
  const uint64_t datasyncs = store_.datasyncs_submitted();
  bool replied = false;
  ASSERT_TRUE(volume.Write(0, data, false, [&](base::Status st) { replied = st.ok(); }).ok());
  ASSERT_EQ(peer_.ops.size(), 1u);
  EXPECT_TRUE(peer_.ops.front().durable) << "written through here but not asked durable there";
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kWriteThrough));
  peer_.Answer(PeerOutcome::kConfirmed);
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return replied; }));
  flushed = false;
  ASSERT_TRUE(volume.Flush([&](base::Status st) { flushed = st.ok(); }).ok());
  EXPECT_TRUE(peer_.ops.empty()) << "the peer was asked to flush what it holds durably";
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return flushed; }));
  EXPECT_EQ(volume.stats().flushes_without_peer, 1u);
  EXPECT_EQ(store_.datasyncs_submitted(), datasyncs);
}

TEST_F(MirroredVolumeTest, PeerFlushCoversOnlyTheWritesConfirmedBeforeItWasSent) {
  Volume volume(io_, store_, &peer_, Mode::kFlush);
  auto data = Bytes(4096, 13);
  ASSERT_TRUE(volume.Write(0, data, false, [](base::Status) {}).ok());
  store_.CompleteAll();
  peer_.Answer(PeerOutcome::kConfirmed);
  bool first = false;
  ASSERT_TRUE(volume.Flush([&](base::Status st) { first = st.ok(); }).ok());
  // Two more writes, the second not alone in flight (so a plain write), are confirmed before
  // the first FLUSH's peer part: that Flush was sent before the peer had them.
  ASSERT_TRUE(volume.Write(8192, data, false, [](base::Status) {}).ok());
  ASSERT_TRUE(volume.Write(16384, data, false, [](base::Status) {}).ok());
  ASSERT_EQ(peer_.ops.size(), 3u);
  EXPECT_FALSE(peer_.ops.back().durable);
  store_.CompleteAll();
  FakePeerLink::Op flush_op = std::move(peer_.ops.front());
  peer_.ops.pop_front();
  peer_.Answer(PeerOutcome::kConfirmed);
  peer_.Answer(PeerOutcome::kConfirmed);
  flush_op.done(PeerOutcome::kConfirmed);
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return first; }));
  bool second = false;
  ASSERT_TRUE(volume.Flush([&](base::Status st) { second = st.ok(); }).ok());
  ASSERT_EQ(peer_.ops.size(), 1u) << "the third write was never flushed on the peer";
  EXPECT_EQ(peer_.ops.front().kind, FakePeerLink::Op::kFlush);
  store_.CompleteAll();  // The local datasync for the plain write.
  peer_.Answer(PeerOutcome::kConfirmed);
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return second; }));
  // Both are covered now: a third FLUSH asks nothing.
  bool third = false;
  ASSERT_TRUE(volume.Flush([&](base::Status st) { third = st.ok(); }).ok());
  EXPECT_TRUE(peer_.ops.empty());
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return third; }));
  EXPECT_EQ(volume.stats().flushes_without_peer, 1u);
}

TEST_F(MirroredVolumeTest, LoneSyncModeWritesAreWrittenThroughNotSyncedAhead) {
  Volume volume(io_, store_, &peer_, Mode::kSync);
  auto data = Bytes(4096, 12);
  for (int i = 0; i < 3; ++i) {
    bool replied = false;
    ASSERT_TRUE(volume.Write(0, data, false, [&](base::Status st) { replied = st.ok(); }).ok());
    store_.CompleteAll();
    peer_.Answer(PeerOutcome::kConfirmed);
    ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return replied; }));
    FlushToTheEnd(io_, volume, store_, peer_);
  }
  EXPECT_EQ(store_.datasyncs_submitted(), 0);
  EXPECT_EQ(volume.group_commit().write_through_count(), 3u);
  EXPECT_EQ(volume.group_commit().sync_ahead_count(), 0u);
}

TEST_F(MirroredVolumeTest, DegradedPeerNeverFailsAWrite) {
  Volume volume(io_, store_, &peer_, Mode::kSync);
  auto data = Bytes(512, 5);
  base::Status result = base::Status::Error(EIO, "unset");
  ASSERT_TRUE(volume.Write(0, data, false, [&](base::Status st) { result = st; }).ok());
  peer_.Answer(PeerOutcome::kDegraded);
  store_.CompleteAll();
  EXPECT_TRUE(result.ok());
  EXPECT_EQ(volume.stats().degraded_writes, 1u);
}

// The link could not record durably that the peer is out of date: a write (or FLUSH) it did not
// mirror must fail rather than be acknowledged.
TEST_F(MirroredVolumeTest, UnrecordedPeerLossFailsTheWriteAndTheFlush) {
  Volume volume(io_, store_, &peer_, Mode::kFlush);
  auto data = Bytes(4096, 5);
  base::Status wrote = base::Status::Ok(), flushed = base::Status::Ok();
  ASSERT_TRUE(volume.Write(0, data, false, [&](base::Status st) { wrote = st; }).ok());
  peer_.Answer(PeerOutcome::kUnrecorded);
  store_.CompleteAll();
  EXPECT_EQ(wrote.errno_value(), EIO) << wrote.ToString();
  EXPECT_EQ(volume.stats().degraded_writes, 0u);
  ASSERT_TRUE(volume.Write(8192, data, false, [](base::Status) {}).ok());
  peer_.Answer(PeerOutcome::kConfirmed);
  store_.CompleteAll();
  ASSERT_TRUE(volume.Flush([&](base::Status st) { flushed = st; }).ok());
  ASSERT_FALSE(peer_.ops.empty()) << "the FLUSH must ask the peer";
  peer_.Answer(PeerOutcome::kUnrecorded);
  store_.CompleteAll();
  EXPECT_EQ(flushed.errno_value(), EIO) << flushed.ToString();
}

TEST_F(MirroredVolumeTest, OverlappingWriteReachesThePeerOnlyAfterTheFirstIsConfirmed) {
  Volume volume(io_, store_, &peer_, Mode::kFlush);
  auto a = Bytes(4096, 6), b = Bytes(4096, 7);
  ASSERT_TRUE(volume.Write(0, a, false, [](base::Status) {}).ok());
  ASSERT_TRUE(volume.Write(1024, b, false, [](base::Status) {}).ok());
  EXPECT_EQ(peer_.ops.size(), 1u);
  store_.CompleteAll();
  EXPECT_EQ(peer_.ops.size(), 1u) << "local completion alone must not release the range";
  peer_.Answer(PeerOutcome::kConfirmed);
  ASSERT_EQ(peer_.ops.size(), 1u);
  EXPECT_EQ(peer_.ops.front().offset_bytes, 1024u);
}

TEST_F(MirroredVolumeTest, FailedLocalWriteFailsEvenIfThePeerConfirmed) {
  Volume volume(io_, store_, &peer_, Mode::kFlush);
  auto data = Bytes(512, 8);
  base::Status result;
  ASSERT_TRUE(volume.Write(0, data, false, [&](base::Status st) { result = st; }).ok());
  peer_.Answer(PeerOutcome::kConfirmed);
  ASSERT_TRUE(store_.FailOldest(EIO));
  EXPECT_EQ(result.errno_value(), EIO);
}

// NBD spec: a FAST_ZERO the server cannot do quickly "MUST fail quickly with NBD_ENOTSUP" and
// "SHOULD NOT alter the contents of the export". So the peer is asked only once the local store
// zeroed fast: a refusal neither waits for the peer nor changes its copy, and is no disk error
// (no resync of the range, no outdated peer).
TEST_F(MirroredVolumeTest, RefusedFastZeroNeverReachesThePeer) {
  Volume volume(io_, store_, &peer_, Mode::kSync);
  nbd::ZeroOptions fast;
  fast.fast_only = true;
  base::Status result;
  bool replied = false;
  ASSERT_TRUE(volume.WriteZeroes(0, 65536, fast, false, [&](base::Status st) {
    result = st;
    replied = true;
  }).ok());
  EXPECT_TRUE(peer_.ops.empty()) << "the peer was asked before the local store answered";
  ASSERT_TRUE(store_.FailOldest(ENOTSUP));
  testing_support::Drain(io_);
  ASSERT_TRUE(replied) << "the refusal waited for something";
  EXPECT_EQ(result.errno_value(), ENOTSUP);
  EXPECT_TRUE(peer_.ops.empty()) << "a refused fast zero was sent to the peer";
  EXPECT_EQ(peer_.local_write_failures, 0) << "a refusal was treated as a failed write";
  EXPECT_EQ(volume.stats().errors, 0u);
}

// Without a peer the refusal is the same answer: ENOTSUP, and no disk error counted.
TEST_F(MirroredVolumeTest, RefusedFastZeroIsNoErrorWithoutAPeer) {
  Volume volume(io_, store_, nullptr, Mode::kFlush);
  nbd::ZeroOptions fast;
  fast.fast_only = true;
  base::Status result;
  ASSERT_TRUE(volume.WriteZeroes(0, 65536, fast, false, [&](base::Status st) { result = st; }).ok());
  ASSERT_TRUE(store_.FailOldest(ENOTSUP));
  testing_support::Drain(io_);
  EXPECT_EQ(result.errno_value(), ENOTSUP);
  EXPECT_EQ(volume.stats().errors, 0u);
}

TEST_F(MirroredVolumeTest, FastZeroReachesThePeerOnceDoneLocally) {
  Volume volume(io_, store_, &peer_, Mode::kFlush);
  nbd::ZeroOptions fast;
  fast.fast_only = true;
  bool replied = false;
  ASSERT_TRUE(
      volume.WriteZeroes(4096, 8192, fast, false, [&](base::Status st) { replied = st.ok(); })
          .ok());
  EXPECT_TRUE(peer_.ops.empty());
  ASSERT_TRUE(store_.CompleteOldestOf(FakeStore::Kind::kZero));
  ASSERT_EQ(peer_.ops.size(), 1u) << "the peer was not asked after the local zeroing";
  EXPECT_EQ(peer_.ops.front().kind, FakePeerLink::Op::kZero);
  EXPECT_EQ(peer_.ops.front().offset_bytes, 4096u);
  EXPECT_FALSE(replied) << "replied before the peer confirmed";
  peer_.Answer(PeerOutcome::kConfirmed);
  EXPECT_TRUE(replied);
}

// Lets at least `us` microseconds of real time pass (the latency counters read the real clock).
void LetTimePass(int64_t us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  while (std::chrono::steady_clock::now() < until) {
  }
}

TEST_F(MirroredVolumeTest, LatencyCountersSplitAWriteAndAFlushIntoTheirParts) {
  Volume volume(io_, store_, &peer_, Mode::kFlush);
  auto data = Bytes(4096, 8);
  bool replied = false;
  ASSERT_TRUE(volume.Write(0, data, false, [&](base::Status) { replied = true; }).ok());
  store_.CompleteAll();
  LetTimePass(3000);  // The peer answers 3 ms after the local write completed.
  peer_.Answer(PeerOutcome::kConfirmed);
  ASSERT_TRUE(replied);
  VolumeStats s = volume.stats();
  EXPECT_EQ(s.modify.count(), 1u);
  EXPECT_EQ(s.modify_peer.count(), 1u);
  EXPECT_GE(s.modify_peer.sum_us(), 3000u);
  EXPECT_LT(s.modify_local_us, s.modify_peer.sum_us());
  EXPECT_GE(s.modify.sum_us(), s.modify_peer.sum_us());
  EXPECT_LE(s.modify_queue_us, s.modify.sum_us());

  // A degraded answer counts as a reply, not as a peer confirmation.
  ASSERT_TRUE(volume.Write(8192, data, false, [](base::Status) {}).ok());
  peer_.Answer(PeerOutcome::kDegraded);
  store_.CompleteAll();
  EXPECT_EQ(volume.stats().modify.count(), 2u);
  EXPECT_EQ(volume.stats().modify_peer.count(), 1u);

  bool flushed = false;
  ASSERT_TRUE(volume.Flush([&](base::Status) { flushed = true; }).ok());
  ASSERT_EQ(peer_.ops.front().kind, FakePeerLink::Op::kFlush);
  peer_.Answer(PeerOutcome::kConfirmed);
  LetTimePass(3000);  // This time the local datasync is the slow side.
  store_.CompleteAll();
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return flushed; }));
  s = volume.stats();
  EXPECT_EQ(s.flush.count(), 1u);
  EXPECT_EQ(s.flush_peer.count(), 1u);
  EXPECT_GE(s.flush_local_us, 3000u);
  EXPECT_LT(s.flush_peer.sum_us(), s.flush_local_us);
  EXPECT_GE(s.flush.sum_us(), s.flush_local_us);
}

}  // namespace
}  // namespace mirror
