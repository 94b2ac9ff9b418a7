// Proves how a resync block shares its range with client writes, on fake stores and a peer
// the test answers by hand: a block holds its range lock only until the peer confirms it, so a
// client write into a copied block is not held up by the batch's flush; at that flush the
// regions no write touched since their copy are cleared and the written one stays marked.

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

  std::shared_ptr<Resync> MakeResync() {
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
        /*rate_bytes_per_s=*/0);
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

}  // namespace
}  // namespace mirror
