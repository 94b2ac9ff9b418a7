// The standby's applier refuses an operation that does not follow the previous one on its link:
// a frame lost, repeated or reordered between the hosts is caught at the next frame, the link
// dropped, and nothing of the offending frame written.

#include "mirror/replica_applier.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "base/buffer_pool.h"
#include "mirror/metadata.h"
#include "mirror/write_intent_log.h"
#include "tests/unit/support/fake_store.h"
#include "tests/unit/support/loop.h"
#include "tests/unit/support/standby_parts.h"
#include "transport/peer.pb.h"

namespace mirror {
namespace {

using testing_support::Drain;
using testing_support::FakeStore;
namespace pb = nbdmirror::peer;

constexpr uint64_t kVolume = 64 * 1024;
constexpr uint64_t kRegion = 4096;

// Records what the applier sends and whether it dropped the link.
class FakeLink final : public transport::FrameLink {
 public:
  void StartStreaming(transport::FrameHandler* handler) override { handler_ = handler; }
  void Send(transport::FrameType type, const google::protobuf::MessageLite& message,
            std::span<const std::byte>) override {
    if (type == transport::FrameType::kAck) {
      pb::Ack ack;
      ASSERT_TRUE(ack.ParseFromString(message.SerializeAsString()));
      acked.push_back(ack.seq());
      ack_errors += ack.error() != 0 ? 1 : 0;
    }
  }
  void Close(base::Status why) override {
    closed_ = true;
    close_reason = why.ToString();
  }
  bool closed() const override { return closed_; }

  std::vector<uint64_t> acked;
  uint64_t ack_errors = 0;
  std::string close_reason;

 private:
  transport::FrameHandler* handler_ = nullptr;
  bool closed_ = false;
};

class ReplicaApplierTest : public ::testing::Test {
 protected:
  ReplicaApplierTest() : standby_(io_, kVolume, kRegion) {}

  std::shared_ptr<FakeLink> Attach() {
    auto link = std::make_shared<FakeLink>();
    applier_.Attach(link, "a");
    return link;
  }

  // A Write of `length` bytes of `fill` at `offset`, numbered `seq` (durable: mode sync, FUA).
  transport::Frame Write(uint64_t seq, uint64_t offset, uint64_t length, std::byte fill,
                         bool durable = false) {
    pb::Write write;
    write.set_seq(seq);
    write.set_durable(durable);
    write.set_offset_bytes(offset);
    write.set_length_bytes(static_cast<uint32_t>(length));
    const std::string message = write.SerializeAsString();
    transport::Frame frame;
    frame.type = transport::FrameType::kWrite;
    for (char c : message) {
      frame.message.push_back(static_cast<std::byte>(c));
    }
    auto buffer = pool_.TryAcquire(length);
    EXPECT_TRUE(buffer.has_value());
    std::fill_n(buffer->data(), length, fill);
    frame.payload = std::move(*buffer);
    return frame;
  }

  // A Zero of `length` bytes at `offset`, numbered `seq`.
  static transport::Frame Zero(uint64_t seq, uint64_t offset, uint64_t length) {
    pb::Zero zero;
    zero.set_seq(seq);
    zero.set_offset_bytes(offset);
    zero.set_length_bytes(length);
    const std::string message = zero.SerializeAsString();
    transport::Frame frame;
    frame.type = transport::FrameType::kZero;
    for (char c : message) {
      frame.message.push_back(static_cast<std::byte>(c));
    }
    return frame;
  }

  void CompleteAll() {
    Drain(io_);
    data_.CompleteAll();
    Drain(io_);
  }

  asio::io_context io_;
  base::BufferPool pool_{1 << 20};
  testing_support::StandbyParts standby_;
  FakeStore& data_ = standby_.data;
  ReplicaApplier& applier_ = standby_.applier;
};

TEST_F(ReplicaApplierTest, ConsecutiveOperationsAreApplied) {
  auto link = Attach();
  applier_.OnFrame(Write(7, 0, 4096, std::byte{1}));
  applier_.OnFrame(Write(8, 4096, 4096, std::byte{2}));
  CompleteAll();
  EXPECT_FALSE(link->closed());
  EXPECT_EQ(link->acked, (std::vector<uint64_t>{7, 8}));
  EXPECT_EQ(data_.data()[4096], std::byte{2});
}

TEST_F(ReplicaApplierTest, RepeatedOperationDropsTheLinkAndWritesNothing) {
  auto link = Attach();
  applier_.OnFrame(Write(7, 0, 4096, std::byte{1}));
  CompleteAll();
  applier_.OnFrame(Write(7, 8192, 4096, std::byte{3}));
  EXPECT_TRUE(link->closed());
  EXPECT_NE(link->close_reason.find("seq 7 follows seq 7"), std::string::npos)
      << link->close_reason;
  EXPECT_EQ(data_.pending_count(), 0u);
  CompleteAll();
  EXPECT_EQ(data_.data()[8192], std::byte{0});
  EXPECT_EQ(link->acked, (std::vector<uint64_t>{7}));
}

TEST_F(ReplicaApplierTest, MissingOperationDropsTheLinkAtTheNextOne) {
  auto link = Attach();
  applier_.OnFrame(Write(1, 0, 4096, std::byte{1}));
  applier_.OnFrame(Write(3, 8192, 4096, std::byte{3}));
  EXPECT_TRUE(link->closed());
  CompleteAll();
  EXPECT_EQ(data_.data()[8192], std::byte{0});
}

// The primary never sends an empty operation (its NBD layer answers empty requests itself). One
// from a broken peer must not reach the store, where an empty write cannot make progress and an
// empty fallocate is EINVAL: either would come back as a disk error and could fail the disk.
TEST_F(ReplicaApplierTest, EmptyWriteDropsTheLinkAndReachesNoStore) {
  auto link = Attach();
  applier_.OnFrame(Write(1, 0, 4096, std::byte{1}));
  applier_.OnFrame(Write(2, 8192, 0, std::byte{2}));
  EXPECT_TRUE(link->closed());
  EXPECT_NE(link->close_reason.find("Write of 0 bytes"), std::string::npos) << link->close_reason;
  EXPECT_EQ(data_.pending_count(), 1u);  // the first Write only
  CompleteAll();
  EXPECT_EQ(data_.data()[0], std::byte{1});
  EXPECT_FALSE(applier_.disk_failed());
}

TEST_F(ReplicaApplierTest, EmptyZeroDropsTheLinkAndReachesNoStore) {
  auto link = Attach();
  applier_.OnFrame(Zero(1, 4096, 0));
  EXPECT_TRUE(link->closed());
  EXPECT_NE(link->close_reason.find("Zero of 0 bytes"), std::string::npos) << link->close_reason;
  EXPECT_EQ(data_.pending_count(), 0u);
  CompleteAll();
  EXPECT_TRUE(link->acked.empty());
  EXPECT_FALSE(applier_.disk_failed());
}

TEST_F(ReplicaApplierTest, EachLinkStartsItsOwnSequence) {
  auto first = Attach();
  applier_.OnFrame(Write(5, 0, 4096, std::byte{1}));
  CompleteAll();
  applier_.OnClosed(base::Status::Error(ECONNRESET, "cut"));
  // The primary's numbers go on across links (held operations are sent again with new ones).
  auto second = Attach();
  applier_.OnFrame(Write(42, 4096, 4096, std::byte{2}));
  CompleteAll();
  EXPECT_FALSE(second->closed());
  EXPECT_EQ(second->acked, (std::vector<uint64_t>{42}));
}

TEST_F(ReplicaApplierTest, ADurableWriteAloneIsWrittenThroughAndAckedWithoutADatasync) {
  auto link = Attach();
  applier_.OnFrame(Write(1, 0, 4096, std::byte{5}, /*durable=*/true));
  ASSERT_EQ(data_.pending_count(FakeStore::Kind::kWriteThrough), 1u);
  Drain(io_);
  EXPECT_TRUE(link->acked.empty()) << "acknowledged before the store completed the write";
  ASSERT_TRUE(data_.CompleteOldestOf(FakeStore::Kind::kWriteThrough));
  Drain(io_);
  EXPECT_EQ(link->acked, (std::vector<uint64_t>{1}));
  EXPECT_EQ(data_.durable()[0], std::byte{5});
  EXPECT_EQ(data_.datasyncs_submitted(), 0);
}

TEST_F(ReplicaApplierTest, DurableWritesAmongOthersWaitForADatasync) {
  auto link = Attach();
  applier_.OnFrame(Write(1, 0, 4096, std::byte{5}, /*durable=*/true));  // Alone: through.
  applier_.OnFrame(Write(2, 4096, 4096, std::byte{6}, /*durable=*/true));
  applier_.OnFrame(Write(3, 8192, 4096, std::byte{7}, /*durable=*/true));
  EXPECT_EQ(data_.pending_count(FakeStore::Kind::kWriteThrough), 1u);
  EXPECT_EQ(data_.pending_count(FakeStore::Kind::kWrite), 2u);
  ASSERT_TRUE(data_.CompleteOldestOf(FakeStore::Kind::kWrite));
  ASSERT_TRUE(data_.CompleteOldestOf(FakeStore::Kind::kWrite));
  Drain(io_);
  EXPECT_TRUE(link->acked.empty()) << "a durable write acknowledged before its datasync";
  CompleteAll();
  EXPECT_GE(data_.datasyncs_submitted(), 1);
  EXPECT_EQ(link->acked.size(), 3u);
  EXPECT_EQ(data_.durable()[8192], std::byte{7});
}

TEST_F(ReplicaApplierTest, AFailedLoneWriteThroughFailsItsWriteNotTheDisk) {
  auto link = Attach();
  applier_.OnFrame(Write(1, 0, 4096, std::byte{5}, /*durable=*/true));
  ASSERT_TRUE(data_.FailOldestOf(FakeStore::Kind::kWriteThrough, EIO));
  Drain(io_);
  EXPECT_EQ(link->acked, (std::vector<uint64_t>{1}));
  EXPECT_EQ(link->ack_errors, 1u) << "the failure was not reported to the primary";
  EXPECT_FALSE(applier_.disk_failed());
}

}  // namespace
}  // namespace mirror
