// The standby's handshake with a primary that reconnects while operations of its previous link
// are still finishing. Those operations can change what the handshake must decide from: a
// datasync that fails the disk, or a resync's end that records the copy UpToDate. The handshake
// waits for them first, so a failed disk refuses the new primary and the new plan is not
// overwritten by the old resync's end. (Both were found by tests/fuzz/fuzz_peer.)

#include "mirror/peer_listener.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "base/async_event.h"
#include "base/buffer_pool.h"
#include "mirror/metadata.h"
#include "mirror/replica_applier.h"
#include "mirror/write_intent_log.h"
#include "tests/unit/support/fake_store.h"
#include "tests/unit/support/standby_parts.h"
#include "tests/unit/support/loop.h"
#include "transport/peer.pb.h"

namespace mirror {
namespace {

using testing_support::Drain;
using testing_support::FakeStore;
using transport::FrameType;
namespace pb = nbdmirror::peer;

constexpr uint64_t kVolume = 64 * 1024;
constexpr uint64_t kRegion = 4096;
constexpr uint64_t kGen = 0x1111;
constexpr const char* kUuid = "0123456789abcdef0123456789abcdef";

// A handshake link fed by the test: frames it pushes are read in order; what the listener
// sends is recorded by type. Once streaming, the applier is its handler.
class ScriptedLink final : public transport::MessageLink {
 public:
  explicit ScriptedLink(asio::io_context& io) : io_(io), readable_(io.get_executor()) {}

  template <typename Message>
  void Push(FrameType type, const Message& message, base::Buffer payload = {}) {
    transport::Frame frame;
    frame.type = type;
    frame.payload = std::move(payload);
    const std::string bytes = message.SerializeAsString();
    for (char c : bytes) {
      frame.message.push_back(static_cast<std::byte>(c));
    }
    if (handler_ != nullptr) {
      handler_->OnFrame(std::move(frame));
    } else {
      inbox_.push_back(std::move(frame));
      readable_.Notify();
    }
  }
  bool Sent(FrameType type) const {
    return std::find(sent_.begin(), sent_.end(), type) != sent_.end();
  }

  const std::string& remote() const override { return remote_; }
  asio::awaitable<base::Status> SendMessage(FrameType type,
                                            const google::protobuf::MessageLite&) override {
    sent_.push_back(type);
    co_return closed_ ? base::Status::Error(ECONNRESET, "closed") : base::Status::Ok();
  }
  asio::awaitable<base::Result<transport::Frame>> ReadFrame(std::chrono::milliseconds) override {
    while (inbox_.empty() && !closed_) {
      co_await readable_.Wait();
    }
    if (inbox_.empty()) {
      co_return base::Status::Error(ECONNRESET, "closed");
    }
    transport::Frame frame = std::move(inbox_.front());
    inbox_.pop_front();
    co_return frame;
  }
  void AdaptToPeerTimeout(std::chrono::milliseconds) override {}
  std::chrono::milliseconds handshake_deadline() const override {
    return std::chrono::seconds(1);
  }
  void StartStreaming(transport::FrameHandler* handler) override { handler_ = handler; }
  void Send(FrameType type, const google::protobuf::MessageLite&,
            std::span<const std::byte>) override {
    sent_.push_back(type);
  }
  void Close(base::Status why) override {
    if (closed_) {
      return;
    }
    closed_ = true;
    readable_.Notify();
    if (handler_ != nullptr) {
      asio::post(io_, [handler = handler_, why] { handler->OnClosed(why); });
    }
  }
  bool closed() const override { return closed_; }

 private:
  asio::io_context& io_;
  base::AsyncEvent readable_;
  std::string remote_ = "scripted";
  std::deque<transport::Frame> inbox_;
  std::vector<FrameType> sent_;
  transport::FrameHandler* handler_ = nullptr;
  bool closed_ = false;
};

class PeerListenerTest : public ::testing::Test {
 protected:
  PeerListenerTest()
      : standby_(io_, kVolume, kRegion),
        listener_(io_, Options(), standby_.superblock, standby_.log, pool_, &standby_.applier) {}
  ~PeerListenerTest() override {
    for (auto& link : links_) {
      link->Close(base::Status::Ok());
    }
    Settle();
  }

  static PeerListenerOptions Options() {
    PeerListenerOptions options;
    options.node_id = "b";
    options.peer_node_id = "a";
    return options;
  }

  // A primary at generation kGen connects and proposes `kind`; the handshake runs as far as it
  // can with every metadata write completed.
  std::shared_ptr<ScriptedLink> Connect(pb::SyncPlan::Kind kind) {
    auto link = std::make_shared<ScriptedLink>(io_);
    links_.push_back(link);
    pb::Hello hello;
    hello.set_protocol_version(transport::kPeerProtocolVersion);
    hello.set_node_id("a");
    hello.set_role(pb::ROLE_PRIMARY);
    hello.set_volume_uuid(kUuid);
    hello.set_size_bytes(kVolume);
    hello.set_disk(pb::DISK_UP_TO_DATE);
    hello.set_timeout_ms(5000);
    hello.set_current_gen(kGen);
    link->Push(FrameType::kHello, hello);
    pb::SyncPlan plan;
    plan.set_volume_uuid(kUuid);
    plan.set_kind(kind);
    plan.set_target_gen(kGen);
    link->Push(FrameType::kSyncPlan, plan);
    asio::co_spawn(io_, listener_.Serve(link), asio::detached);
    Settle();
    return link;
  }
  // Runs the loop and completes metadata I/O until nothing more happens.
  void Settle() {
    do {
      Drain(io_);
    } while (meta_.CompleteOldest());
  }

  asio::io_context io_;
  base::BufferPool pool_{1 << 20};
  testing_support::StandbyParts standby_;
  FakeStore& data_ = standby_.data;
  FakeStore& meta_ = standby_.meta;
  VolumeMetadata& md_ = standby_.md;
  WriteIntentLog& log_ = standby_.log;
  ReplicaApplier& applier_ = standby_.applier;
  PeerListener listener_;
  std::vector<std::shared_ptr<ScriptedLink>> links_;
};

TEST_F(PeerListenerTest, APrimaryReconnectingWhileTheOldLinksDatasyncFailsIsRefused) {
  auto first = Connect(pb::SyncPlan::KIND_FULL);
  ASSERT_TRUE(first->Sent(FrameType::kReady));
  // A write, then a Flush on the first link: the Flush's datasync is held in the store.
  pb::Write write;
  write.set_seq(1);
  write.set_length_bytes(4096);
  write.set_resync(true);
  first->Push(FrameType::kWrite, write, *pool_.TryAcquire(4096));
  Drain(io_);
  ASSERT_TRUE(data_.CompleteOldestOf(FakeStore::Kind::kWrite));
  Drain(io_);
  pb::Flush flush;
  flush.set_seq(2);
  first->Push(FrameType::kFlush, flush);
  Drain(io_);
  ASSERT_EQ(data_.pending_count(FakeStore::Kind::kDatasync), 1u);
  first->Close(base::Status::Error(ECONNRESET, "link cut"));
  Drain(io_);

  auto second = Connect(pb::SyncPlan::KIND_NONE);
  EXPECT_FALSE(second->Sent(FrameType::kReady));
  ASSERT_TRUE(data_.FailOldestOf(FakeStore::Kind::kDatasync, EIO));
  Settle();
  EXPECT_TRUE(applier_.disk_failed());
  EXPECT_FALSE(second->Sent(FrameType::kReady)) << "Ready to a primary with the disk failed";
  EXPECT_TRUE(second->Sent(FrameType::kRefuse));
  EXPECT_FALSE(applier_.attached());
  EXPECT_EQ(listener_.refused_count(), 1u);
}

TEST_F(PeerListenerTest, AnOldResyncsEndDoesNotOverwriteTheNewPlan) {
  // Marks of this node's own, so that ending a resync has a bitmap page to write.
  log_.MarkRange(0, kRegion);
  log_.Persist([](base::Status) {});
  Settle();
  auto first = Connect(pb::SyncPlan::KIND_FULL);
  ASSERT_TRUE(first->Sent(FrameType::kReady));
  ASSERT_EQ(md_.disk, DiskState::kInconsistent);
  pb::ResyncDone done;
  done.set_seq(1);
  done.set_current_gen(kGen);
  first->Push(FrameType::kResyncDone, done);
  Drain(io_);
  data_.CompleteAll();
  Drain(io_);
  // The resync's end now waits for its bitmap write: held while the link drops and the primary
  // comes back with a full resync.
  ASSERT_GT(meta_.pending_count(), 0u);
  first->Close(base::Status::Error(ECONNRESET, "link cut"));
  Drain(io_);
  auto second = Connect(pb::SyncPlan::KIND_FULL);
  ASSERT_TRUE(second->Sent(FrameType::kReady));
  EXPECT_EQ(md_.disk, DiskState::kInconsistent)
      << "a resync is about to start, yet the copy is recorded "
      << DiskStateName(md_.disk);
  EXPECT_TRUE(applier_.attached());
}

}  // namespace
}  // namespace mirror
