#include "mirror/replicator.h"

#include <spdlog/spdlog.h>

#include "transport/peer.pb.h"

namespace mirror {

using base::Status;
using transport::FrameType;
namespace pb = nbdmirror::peer;

const char* ConnectionStateName(ConnectionState state) {
  switch (state) {
    case ConnectionState::kStandalone:
      return "standalone";
    case ConnectionState::kConnecting:
      return "connecting";
    case ConnectionState::kConnected:
      return "connected";
  }
  return "?";
}

Replicator::Replicator(asio::io_context& io, ReplicatorOptions options, MetadataFile& metadata,
                       base::BufferPool& pool, bool peer_disk_known_good)
    : io_(io),
      options_(std::move(options)),
      metadata_(metadata),
      pool_(pool),
      peer_disk_(peer_disk_known_good ? DiskState::kUpToDate : DiskState::kOutdated) {}

void Replicator::Start() {
  CHECK(volume_ != nullptr);
  connection_ = ConnectionState::kConnecting;
  asio::co_spawn(io_, DialLoop(), asio::detached);
}

void Replicator::BeginShutdown() {
  shutting_down_ = true;
  // Under `block`, held operations would wait forever for a peer that may never come back.
  // They fail instead of being acknowledged: the operator chose to stop without the peer.
  auto held = std::move(held_);
  held_.clear();
  for (Pending& op : held) {
    asio::post(io_, [done = std::move(op.done)] { done(PeerOutcome::kAborted); });
  }
}

void Replicator::Stop() {
  stopping_ = true;
  shutting_down_ = true;
  if (resync_) {
    resync_->Cancel();
  }
  if (link_) {
    link_->Close(Status::Error(ESHUTDOWN, "shutting down"));
  }
}

bool Replicator::PeerInSync() const {
  return Streaming() && peer_disk_ == DiskState::kUpToDate && pending_.empty() && held_.empty();
}

asio::awaitable<void> Replicator::DialLoop() {
  asio::steady_timer retry(io_);
  while (!stopping_) {
    Status st = co_await ConnectOnce();
    if (st.ok()) {
      last_error_.clear();
      // Wait for the link to close; OnClosed notifies.
      while (link_ != nullptr && !stopping_) {
        co_await link_closed_->Wait();
      }
    } else if (!stopping_) {
      if (st.message() != last_error_) {
        spdlog::warn("peer {} ({}): {}", options_.peer_node_id, options_.peer_endpoint.ToString(),
                     st.ToString());
        last_error_ = st.message();
      }
    }
    if (stopping_) {
      break;
    }
    connection_ = ConnectionState::kConnecting;
    retry.expires_after(options_.retry_interval);
    boost::system::error_code ec;
    co_await retry.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  connection_ = ConnectionState::kStandalone;
}

Status Replicator::CheckPeerHello(const google::protobuf::MessageLite& message) const {
  const auto& hello = static_cast<const pb::Hello&>(message);
  const auto& md = metadata_.get();
  if (hello.protocol_version() != transport::kPeerProtocolVersion) {
    return Status::Error(EPROTO, "peer speaks protocol " +
                                     std::to_string(hello.protocol_version()));
  }
  if (hello.node_id() != options_.peer_node_id) {
    return Status::Error(EACCES, "peer calls itself '" + hello.node_id() + "', expected '" +
                                     options_.peer_node_id + "'");
  }
  if (hello.role() == pb::ROLE_PRIMARY) {
    return Status::Error(EEXIST, "peer '" + hello.node_id() +
                                     "' is primary too; refusing to mirror (split brain?)");
  }
  if (hello.size_bytes() != md.size_bytes) {
    return Status::Error(EINVAL, "peer volume has " + std::to_string(hello.size_bytes()) +
                                     " bytes, ours " + std::to_string(md.size_bytes));
  }
  if (!hello.volume_uuid().empty() && hello.volume_uuid() != md.volume_uuid) {
    return Status::Error(EINVAL, "peer holds another volume (" + hello.volume_uuid() +
                                     ", ours " + md.volume_uuid + ")");
  }
  return Status::Ok();
}

asio::awaitable<Status> Replicator::ConnectOnce() {
  asio::ip::tcp::socket socket(io_);
  boost::system::error_code ec;
  asio::ip::tcp::resolver resolver(io_);
  auto results = resolver.resolve(options_.peer_endpoint.host,
                                  std::to_string(options_.peer_endpoint.port), ec);
  if (ec) {
    co_return Status::Error(EHOSTUNREACH, "resolve: " + ec.message());
  }
  // A peer host that drops packets must not hold the connect for the kernel's minutes.
  asio::steady_timer timeout(io_);
  timeout.expires_after(options_.timing.timeout);
  timeout.async_wait([&socket](const boost::system::error_code& timer_ec) {
    if (!timer_ec) {
      boost::system::error_code ignored;
      socket.close(ignored);
    }
  });
  co_await asio::async_connect(socket, results, asio::redirect_error(asio::use_awaitable, ec));
  timeout.cancel();
  if (ec) {
    co_return Status::Error(ECONNREFUSED, "connect: " + ec.message());
  }
  auto link = std::make_shared<transport::PeerConnection>(
      std::make_unique<transport::PeerStream>(std::move(socket), options_.tls), pool_,
      options_.timing);
  if (Status st = co_await link->Authenticate(options_.secret, /*dialer=*/true); !st.ok()) {
    co_return st;
  }
  const auto& md = metadata_.get();
  pb::Hello hello;
  hello.set_protocol_version(transport::kPeerProtocolVersion);
  hello.set_node_id(options_.node_id);
  hello.set_role(pb::ROLE_PRIMARY);
  hello.set_volume_uuid(md.volume_uuid);
  hello.set_size_bytes(md.size_bytes);
  hello.set_disk(pb::DISK_UP_TO_DATE);
  hello.set_timeout_ms(static_cast<uint32_t>(options_.timing.timeout.count()));
  if (Status st = co_await link->SendMessage(FrameType::kHello, hello); !st.ok()) {
    co_return st;
  }
  pb::Hello peer_hello;
  if (Status st = co_await link->Expect(FrameType::kHello, peer_hello); !st.ok()) {
    co_return st;
  }
  if (Status st = CheckPeerHello(peer_hello); !st.ok()) {
    pb::Refuse refuse;
    refuse.set_reason(st.message());
    (void)co_await link->SendMessage(FrameType::kRefuse, refuse);
    co_return st;
  }
  bool full_resync = peer_hello.disk() != pb::DISK_UP_TO_DATE ||
                     peer_hello.volume_uuid().empty() || peer_disk_ != DiskState::kUpToDate;
  if (full_resync && options_.skip_initial_sync && peer_hello.volume_uuid().empty() &&
      md.peer_disk == DiskState::kInconsistent) {
    spdlog::warn("--skip-initial-sync: trusting the operator that both volumes are identical");
    full_resync = false;
  }
  pb::SyncPlan plan;
  plan.set_volume_uuid(md.volume_uuid);
  plan.set_full_resync(full_resync);
  if (Status st = co_await link->SendMessage(FrameType::kSyncPlan, plan); !st.ok()) {
    co_return st;
  }
  pb::Ready ready;
  if (Status st = co_await link->Expect(FrameType::kReady, ready); !st.ok()) {
    co_return st;
  }
  if (stopping_) {
    co_return Status::Error(ESHUTDOWN, "shutting down");
  }
  link->AdaptToPeerTimeout(std::chrono::milliseconds(peer_hello.timeout_ms()));
  link_ = std::move(link);
  link_closed_ = std::make_unique<base::AsyncEvent>(io_.get_executor());
  connection_ = ConnectionState::kConnected;
  link_->StartStreaming(this);
  spdlog::info("peer {} connected from {}: {}", options_.peer_node_id, link_->remote(),
               full_resync ? "full resync" : "in sync");
  ReleaseHeld();
  if (full_resync) {
    MarkPeerDisk(DiskState::kInconsistent);
    StartResync();
  } else {
    MarkPeerDisk(DiskState::kUpToDate);
  }
  co_return Status::Ok();
}

ResyncProgress Replicator::resync() const {
  if (resync_ && resync_->progress().running) {
    return resync_->progress();
  }
  return resync_progress_;
}

void Replicator::MarkPeerDisk(DiskState state) {
  if (peer_disk_ == state && metadata_.get().peer_disk == state) {
    return;
  }
  peer_disk_ = state;
  Status st = metadata_.Update([state](VolumeMetadata& md) { md.peer_disk = state; });
  if (!st.ok()) {
    spdlog::critical("cannot record peer disk {}: {}", DiskStateName(state), st.ToString());
  }
}

void Replicator::StartResync() {
  auto resync = std::make_shared<FullResync>(
      *volume_, pool_,
      [this](uint64_t offset, std::span<const std::byte> data, PeerDone done) {
        SendOrHold(
            [this, offset, data](uint64_t seq) {
              pb::Write write;
              write.set_seq(seq);
              write.set_offset_bytes(offset);
              write.set_length_bytes(static_cast<uint32_t>(data.size()));
              write.set_resync(true);
              link_->Send(FrameType::kWrite, write, data);
            },
            std::move(done), /*resync=*/true);
      },
      [this](uint64_t offset, uint64_t length, PeerDone done) {
        SendOrHold(
            [this, offset, length](uint64_t seq) {
              pb::Zero zero;
              zero.set_seq(seq);
              zero.set_offset_bytes(offset);
              zero.set_length_bytes(length);
              zero.set_may_punch_hole(true);
              link_->Send(FrameType::kZero, zero);
            },
            std::move(done), /*resync=*/true);
      });
  resync_ = resync;
  spdlog::info("resync to {}: {} bytes", options_.peer_node_id, volume_->size_bytes());
  resync->Start([this, resync](bool complete) {
    resync_progress_ = resync->progress();
    OnResyncFinished(complete);
  });
}

void Replicator::OnResyncFinished(bool complete) {
  if (!complete || !Streaming()) {
    spdlog::warn("resync to {} interrupted at {} of {} bytes", options_.peer_node_id,
                 resync_progress_.done_bytes, resync_progress_.total_bytes);
    return;
  }
  // The secondary flushes everything before it records itself UpToDate and acknowledges.
  SendOrHold(
      [this](uint64_t seq) {
        pb::ResyncDone done;
        done.set_seq(seq);
        link_->Send(FrameType::kResyncDone, done);
      },
      [this](PeerOutcome outcome) {
        if (outcome == PeerOutcome::kConfirmed) {
          spdlog::info("resync to {} complete; peer is UpToDate", options_.peer_node_id);
          MarkPeerDisk(DiskState::kUpToDate);
        }
      },
      /*resync=*/true);
}

void Replicator::SendOrHold(SendFn send, PeerDone done, bool resync) {
  if (Streaming()) {
    const uint64_t seq = NextSeq();
    send(seq);
    pending_.emplace(seq, Pending{std::move(send), std::move(done), resync});
    return;
  }
  if (resync) {
    asio::post(io_, [done = std::move(done)] { done(PeerOutcome::kDegraded); });
    return;
  }
  CompleteUnreplicated(Pending{std::move(send), std::move(done), false});
}

void Replicator::CompleteUnreplicated(Pending op) {
  // The operation was not mirrored: the peer's copy is out of date, and that must be on disk
  // before the operation is acknowledged.
  if (peer_disk_ == DiskState::kUpToDate) {
    MarkPeerDisk(DiskState::kOutdated);
  }
  if (options_.on_peer_loss == PeerLossPolicy::kBlock) {
    if (shutting_down_) {
      asio::post(io_, [done = std::move(op.done)] { done(PeerOutcome::kAborted); });
      return;
    }
    held_.push_back(std::move(op));
    return;
  }
  asio::post(io_, [done = std::move(op.done)] { done(PeerOutcome::kDegraded); });
}

void Replicator::ReleaseHeld() {
  auto held = std::move(held_);
  held_.clear();
  for (Pending& op : held) {
    SendOrHold(std::move(op.send), std::move(op.done), /*resync=*/false);
  }
}

void Replicator::ReplicateWrite(uint64_t offset_bytes, std::span<const std::byte> data,
                                bool durable, PeerDone done) {
  SendOrHold(
      [this, offset_bytes, data, durable](uint64_t seq) {
        pb::Write write;
        write.set_seq(seq);
        write.set_offset_bytes(offset_bytes);
        write.set_length_bytes(static_cast<uint32_t>(data.size()));
        write.set_durable(durable);
        link_->Send(FrameType::kWrite, write, data);
      },
      std::move(done), /*resync=*/false);
}

void Replicator::ReplicateZero(uint64_t offset_bytes, uint64_t length_bytes,
                               nbd::ZeroOptions options, bool discard, bool durable,
                               PeerDone done) {
  SendOrHold(
      [this, offset_bytes, length_bytes, options, discard, durable](uint64_t seq) {
        pb::Zero zero;
        zero.set_seq(seq);
        zero.set_offset_bytes(offset_bytes);
        zero.set_length_bytes(length_bytes);
        zero.set_durable(durable);
        zero.set_may_punch_hole(options.may_punch_hole);
        zero.set_discard(discard);
        link_->Send(FrameType::kZero, zero);
      },
      std::move(done), /*resync=*/false);
}

void Replicator::ReplicateFlush(PeerDone done) {
  SendOrHold(
      [this](uint64_t seq) {
        pb::Flush flush;
        flush.set_seq(seq);
        link_->Send(FrameType::kFlush, flush);
      },
      std::move(done), /*resync=*/false);
}

void Replicator::OnFrame(transport::Frame frame) {
  if (frame.type != FrameType::kAck) {
    link_->Close(Status::Error(EPROTO, std::string("unexpected ") +
                                           transport::FrameTypeName(frame.type) +
                                           " from the secondary"));
    return;
  }
  pb::Ack ack;
  if (!frame.Parse(ack)) {
    link_->Close(Status::Error(EPROTO, "Ack does not parse"));
    return;
  }
  auto it = pending_.find(ack.seq());
  if (it == pending_.end()) {
    link_->Close(Status::Error(EPROTO, "Ack for unknown seq " + std::to_string(ack.seq())));
    return;
  }
  if (ack.error() != 0) {
    // The standby's disk failed this write: its copy can no longer be trusted.
    link_->Close(Status::Error(ack.error(), "peer failed to apply seq " +
                                                std::to_string(ack.seq())));
    return;
  }
  PeerDone done = std::move(it->second.done);
  pending_.erase(it);
  done(PeerOutcome::kConfirmed);
}

void Replicator::OnClosed(const Status& why) {
  spdlog::warn("peer {} lost: {}", options_.peer_node_id, why.ToString());
  last_error_ = why.message();
  link_.reset();
  connection_ = ConnectionState::kConnecting;
  if (resync_) {
    resync_progress_ = resync_->progress();
    resync_->Cancel();
  }
  // Recorded before any write in flight is acknowledged without the peer.
  if (peer_disk_ == DiskState::kUpToDate) {
    MarkPeerDisk(DiskState::kOutdated);
  }
  auto pending = std::move(pending_);
  pending_.clear();
  for (auto& [seq, op] : pending) {
    if (op.resync) {
      op.done(PeerOutcome::kDegraded);
    } else {
      CompleteUnreplicated(std::move(op));
    }
  }
  if (link_closed_) {
    link_closed_->Notify();
  }
}

}  // namespace mirror
