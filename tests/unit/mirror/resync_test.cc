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

class ResyncTest : public ::testing::Test {
 protected:
  ResyncTest()
      : meta_(io_, kBitmapOffsetBytes + kBitmapPageBytes),
        log_(io_, &meta_, kVolume, kRegion, std::vector<uint8_t>(kBitmapAreaBytes, 0)),
        store_(io_, kVolume),
        volume_(io_, store_, nullptr, Mode::kFlush, &log_),
        pool_(8 << 20) {}

  // Completes metadata rounds until none is pending.
  void CompleteMetadata() {
    Drain(io_);
    while (meta_.pending_count() > 0) {
      meta_.CompleteAll();
      Drain(io_);
    }
  }

  std::shared_ptr<Resync> MakeResync(uint64_t flush_batch_bytes = Resync::kFlushBatchBytes) {
    return std::make_shared<Resync>(
        io_, volume_, log_, pool_,
        [this](uint64_t offset, std::span<const std::byte>, PeerDone done) {
          sent_offsets_.push_back(offset);
          peer_writes_.push_back(std::move(done));
        },
        [this](uint64_t offset, uint64_t, PeerDone done) {
          sent_offsets_.push_back(offset);
          peer_writes_.push_back(std::move(done));
        },
        [this](PeerDone done) { peer_flushes_.push_back(std::move(done)); },
        /*rate_bytes_per_s=*/0, flush_batch_bytes);
  }

  asio::io_context io_;
  FakeStore meta_;
  WriteIntentLog log_;
  FakeStore store_;
  Volume volume_;
  base::BufferPool pool_;
  std::vector<uint64_t> sent_offsets_;
  std::vector<PeerDone> peer_writes_;
  std::vector<PeerDone> peer_flushes_;
};

TEST_F(ResyncTest, ClientWriteIntoACopiedBlockIsNotHeldByTheBatchFlush) {
  log_.MarkAll();
  log_.Persist([](base::Status) {});
  CompleteMetadata();
  ASSERT_EQ(log_.marked_regions(), kVolume / kRegion);

  auto resync = MakeResync();
  std::optional<bool> finished;
  resync->Start([&](bool complete) { finished = complete; });
  store_.CompleteAll();  // The blocks' local reads.
  Drain(io_);
  ASSERT_EQ(peer_writes_.size(), 2u);
  for (PeerDone& done : peer_writes_) {
    done(PeerOutcome::kConfirmed);
  }
  Drain(io_);
  // Nothing else to copy: the batch's flush is out, and the test holds the peer's answer.
  ASSERT_EQ(peer_flushes_.size(), 1u);
  EXPECT_EQ(resync->progress().done_bytes, kVolume);

  // A client write into the first block while its flush is pending starts at once.
  std::vector<std::byte> data(4096, std::byte{0x5a});
  bool written = false;
  ASSERT_TRUE(
      volume_.Write(kRegion + 8192, data, false, [&](base::Status st) { written = st.ok(); }).ok());
  Drain(io_);
  EXPECT_EQ(store_.pending_count(FakeStore::Kind::kWrite), 1u)
      << "the client write waited for the resync batch";
  store_.CompleteAll();  // The client write (and the local datasync of the batch).
  Drain(io_);
  EXPECT_TRUE(written);

  peer_flushes_[0](PeerOutcome::kConfirmed);
  store_.CompleteAll();
  Drain(io_);
  ASSERT_TRUE(finished.has_value());
  EXPECT_TRUE(*finished);
  // Every region is clear except the one written after its copy (not known durable on both).
  EXPECT_EQ(log_.marked_regions(), 1u);
  auto runs = log_.MarkedRuns();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].offset_bytes, kRegion);
  EXPECT_EQ(runs[0].length_bytes, kRegion);
}

TEST_F(ResyncTest, AFailedBatchFlushClearsNothing) {
  log_.MarkAll();
  log_.Persist([](base::Status) {});
  CompleteMetadata();

  auto resync = MakeResync();
  std::optional<bool> finished;
  resync->Start([&](bool complete) { finished = complete; });
  store_.CompleteAll();
  Drain(io_);
  for (PeerDone& done : peer_writes_) {
    done(PeerOutcome::kConfirmed);
  }
  Drain(io_);
  ASSERT_EQ(peer_flushes_.size(), 1u);
  peer_flushes_[0](PeerOutcome::kDegraded);  // The link dropped before the peer's datasync.
  store_.CompleteAll();
  Drain(io_);
  ASSERT_TRUE(finished.has_value());
  EXPECT_FALSE(*finished);
  EXPECT_EQ(log_.marked_regions(), kVolume / kRegion) << "unflushed copies must stay marked";
}

TEST(ResyncPauseTest, CopyingPausesWhileAWholeBatchWaitsBehindARunningFlush) {
  constexpr uint64_t kBlocks = Resync::kMaxCopying + 8;
  constexpr uint64_t kBig = kBlocks * Resync::kBlockBytes;
  asio::io_context io;
  FakeStore meta(io, kBitmapOffsetBytes + kBitmapPageBytes);
  WriteIntentLog log(io, &meta, kBig, kRegion, std::vector<uint8_t>(kBitmapAreaBytes, 0));
  FakeStore store(io, kBig);
  Volume volume(io, store, nullptr, Mode::kFlush, &log);
  base::BufferPool pool(64 << 20);
  log.MarkAll();
  log.Persist([](base::Status) {});
  Drain(io);
  meta.CompleteAll();
  Drain(io);
  std::vector<PeerDone> writes;
  std::vector<PeerDone> flushes;
  auto resync = std::make_shared<Resync>(
      io, volume, log, pool,
      [&](uint64_t, std::span<const std::byte>, PeerDone done) {
        writes.push_back(std::move(done));
      },
      [&](uint64_t, uint64_t, PeerDone done) { writes.push_back(std::move(done)); },
      [&](PeerDone done) { flushes.push_back(std::move(done)); }, /*rate_bytes_per_s=*/0,
      /*flush_batch_bytes=*/Resync::kBlockBytes);
  std::optional<bool> finished;
  resync->Start([&](bool complete) { finished = complete; });
  store.CompleteAll();
  Drain(io);
  ASSERT_EQ(writes.size(), static_cast<size_t>(Resync::kMaxCopying));
  // Block 0 confirmed: a batch, its flush starts, and a new block takes the free slot.
  writes[0](PeerOutcome::kConfirmed);
  Drain(io);
  ASSERT_EQ(flushes.size(), 1u);
  store.CompleteAll();  // That block's read.
  Drain(io);
  EXPECT_EQ(writes.size(), static_cast<size_t>(Resync::kMaxCopying) + 1);
  // Block 1 confirmed while that flush runs: a whole batch waits, so nothing new is issued.
  writes[1](PeerOutcome::kConfirmed);
  store.CompleteAll();
  Drain(io);
  EXPECT_EQ(writes.size(), static_cast<size_t>(Resync::kMaxCopying) + 1);
  // The flush completes: the waiting batch's flush starts and copying resumes.
  flushes[0](PeerOutcome::kConfirmed);
  store.CompleteAll();  // The local datasync.
  Drain(io);
  EXPECT_EQ(flushes.size(), 2u);
  store.CompleteAll();
  Drain(io);
  EXPECT_EQ(writes.size(), static_cast<size_t>(Resync::kMaxCopying) + 2);
  // Everything else confirmed and flushed: the resync completes with nothing marked.
  for (size_t i = 2; i < writes.size() || !finished; ++i) {
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
    store.CompleteAll();
    Drain(io);
    ASSERT_LT(i, 10 * kBlocks) << "the resync does not finish";
  }
  EXPECT_TRUE(*finished);
  EXPECT_EQ(log.marked_regions(), 0u);
}

}  // namespace
}  // namespace mirror
