// Proves how a resync block shares its range with client writes, on fake stores and a peer
// the test answers by hand: a block holds its range lock only until the peer confirms it, so a
// client write into a copied block is not held up by the batch's flush; at that flush the
// regions no write touched since their copy are cleared and the written one stays marked.
// Copying pauses only while a whole batch waits behind a running flush.

#include "mirror/resync.h"

#include <gtest/gtest.h>

#include "mirror/metadata.h"
#include "tests/unit/support/fake_store.h"
#include "tests/unit/support/loop.h"

namespace mirror {
namespace {

using testing_support::Drain;
using testing_support::FakeStore;

constexpr uint64_t kRegion = 64 * 1024;
constexpr uint64_t kVolume = 2 << 20;  // Two resync blocks of 16 regions each.

// A volume on a fake store, every region marked durably, and a resync whose peer messages the
// test answers by hand.
struct Rig {
  explicit Rig(uint64_t volume_bytes)
      : meta(io, kBitmapOffsetBytes + kBitmapPageBytes),
        log(io, &meta, volume_bytes, kRegion, std::vector<uint8_t>(kBitmapAreaBytes, 0)),
        store(io, volume_bytes),
        volume(io, store, nullptr, Mode::kFlush, &log),
        pool(64 << 20) {
    log.MarkAll();
    log.Persist([](base::Status) {});
    Drain(io);
    while (meta.pending_count() > 0) {
      meta.CompleteAll();
      Drain(io);
    }
  }

  void Start(uint64_t flush_batch_bytes = Resync::kFlushBatchBytes) {
    resync = std::make_shared<Resync>(
        io, volume, log, pool,
        [this](uint64_t, std::span<const std::byte>, PeerDone done) {
          peer_writes.push_back(std::move(done));
        },
        [this](uint64_t, uint64_t, PeerDone done) { peer_writes.push_back(std::move(done)); },
        [this](PeerDone done) { peer_flushes.push_back(std::move(done)); },
        /*rate_bytes_per_s=*/0, flush_batch_bytes);
    resync->Start([this](bool complete) { finished = complete; });
  }

  // Completes every pending store operation and runs what that makes ready.
  void CompleteStore() {
    store.CompleteAll();
    Drain(io);
  }

  asio::io_context io;
  FakeStore meta;
  WriteIntentLog log;
  FakeStore store;
  Volume volume;
  base::BufferPool pool;
  std::shared_ptr<Resync> resync;
  std::vector<PeerDone> peer_writes;
  std::vector<PeerDone> peer_flushes;
  std::optional<bool> finished;
};

TEST(ResyncTest, ClientWriteIntoACopiedBlockIsNotHeldByTheBatchFlush) {
  Rig rig(kVolume);
  ASSERT_EQ(rig.log.marked_regions(), kVolume / kRegion);
  rig.Start();
  rig.CompleteStore();  // The blocks' local reads.
  ASSERT_EQ(rig.peer_writes.size(), 2u);
  for (PeerDone& done : rig.peer_writes) {
    done(PeerOutcome::kConfirmed);
  }
  Drain(rig.io);
  // Nothing else to copy: the batch's flush is out, and the test holds the peer's answer.
  ASSERT_EQ(rig.peer_flushes.size(), 1u);
  EXPECT_EQ(rig.resync->progress().done_bytes, kVolume);

  // A client write into the first block while its flush is pending starts at once.
  std::vector<std::byte> data(4096, std::byte{0x5a});
  bool written = false;
  ASSERT_TRUE(
      rig.volume.Write(kRegion + 8192, data, false, [&](base::Status st) { written = st.ok(); })
          .ok());
  Drain(rig.io);
  EXPECT_EQ(rig.store.pending_count(FakeStore::Kind::kWrite), 1u)
      << "the client write waited for the resync batch";
  rig.CompleteStore();  // The client write (and the local datasync of the batch).
  EXPECT_TRUE(written);

  rig.peer_flushes[0](PeerOutcome::kConfirmed);
  rig.CompleteStore();
  ASSERT_TRUE(rig.finished.has_value());
  EXPECT_TRUE(*rig.finished);
  // Every region is clear except the one written after its copy (not known durable on both).
  EXPECT_EQ(rig.log.marked_regions(), 1u);
  auto runs = rig.log.MarkedRuns();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].offset_bytes, kRegion);
  EXPECT_EQ(runs[0].length_bytes, kRegion);
}

TEST(ResyncTest, AFailedBatchFlushClearsNothing) {
  Rig rig(kVolume);
  rig.Start();
  rig.CompleteStore();
  for (PeerDone& done : rig.peer_writes) {
    done(PeerOutcome::kConfirmed);
  }
  Drain(rig.io);
  ASSERT_EQ(rig.peer_flushes.size(), 1u);
  rig.peer_flushes[0](PeerOutcome::kDegraded);  // The link dropped before the peer's datasync.
  rig.CompleteStore();
  ASSERT_TRUE(rig.finished.has_value());
  EXPECT_FALSE(*rig.finished);
  EXPECT_EQ(rig.log.marked_regions(), kVolume / kRegion) << "unflushed copies must stay marked";
}

TEST(ResyncTest, CopyingPausesWhileAWholeBatchWaitsBehindARunningFlush) {
  constexpr uint64_t kBlocks = Resync::kMaxCopying + 8;
  constexpr auto kCopying = static_cast<size_t>(Resync::kMaxCopying);
  Rig rig(kBlocks * Resync::kBlockBytes);
  rig.Start(/*flush_batch_bytes=*/Resync::kBlockBytes);
  auto& writes = rig.peer_writes;
  auto& flushes = rig.peer_flushes;
  rig.CompleteStore();
  ASSERT_EQ(writes.size(), kCopying);
  // Block 0 confirmed: a batch, its flush starts, and a new block takes the free slot.
  writes[0](PeerOutcome::kConfirmed);
  Drain(rig.io);
  ASSERT_EQ(flushes.size(), 1u);
  rig.CompleteStore();  // That block's read.
  EXPECT_EQ(writes.size(), kCopying + 1);
  // Block 1 confirmed while that flush runs: a whole batch waits, so nothing new is issued.
  writes[1](PeerOutcome::kConfirmed);
  rig.CompleteStore();
  EXPECT_EQ(writes.size(), kCopying + 1);
  // The flush completes: the waiting batch's flush starts and copying resumes.
  flushes[0](PeerOutcome::kConfirmed);
  rig.CompleteStore();  // The local datasync.
  EXPECT_EQ(flushes.size(), 2u);
  rig.CompleteStore();
  EXPECT_EQ(writes.size(), kCopying + 2);
  // Everything else confirmed and flushed: the resync completes with nothing marked.
  for (size_t i = 2; i < writes.size() || !rig.finished; ++i) {
    if (i < writes.size()) {
      writes[i](PeerOutcome::kConfirmed);
    }
    for (size_t f = 1; f < flushes.size(); ++f) {
      if (flushes[f]) {
        auto done = std::move(flushes[f]);
        flushes[f] = nullptr;
        done(PeerOutcome::kConfirmed);
      }
    }
    rig.CompleteStore();
    ASSERT_LT(i, 10 * kBlocks) << "the resync does not finish";
  }
  EXPECT_TRUE(*rig.finished);
  EXPECT_EQ(rig.log.marked_regions(), 0u);
}

}  // namespace
}  // namespace mirror
