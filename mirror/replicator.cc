#include "mirror/replicator.h"

#include <spdlog/spdlog.h>

#include "mirror/await_done.h"
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

Replicator::Replicator(asio::io_context& io, ReplicatorOptions options, Superblock& metadata,
                       WriteIntentLog& intent_log, base::BufferPool& pool,
                       bool peer_disk_known_good)
    : io_(io),
      options_(std::move(options)),
      metadata_(metadata),
      intent_log_(intent_log),
      pool_(pool),
      peer_disk_(peer_disk_known_good ? DiskState::kUpToDate : DiskState::kOutdated) {}

Replicator::~Replicator() {
  intent_log_.set_mark_ahead_allowed(nullptr);
  for (const auto& weak : unfinished_resyncs_) {
    if (auto resync = weak.lock()) {
      resync->Abandon();
    }
  }
}

void Replicator::Start() {
  CHECK(volume_ != nullptr);
  // Mark ahead (1 MiB) only with the peer in sync. Marked regions stay marked while the volume
  // is busy anyway (see CleanLoop), so chunk-sized marks cost nothing more and spare a scattered
  // workload a metadata write per region. While the peer is away the marks are exactly what its
  // resync will copy, so they stay region-sized.
  intent_log_.set_mark_ahead_bytes(options_.mark_ahead_bytes);
  intent_log_.set_mark_ahead_allowed([this] {
    return Streaming() && peer_disk_ == DiskState::kUpToDate;
  });
  connection_ = ConnectionState::kConnecting;
  asio::co_spawn(io_, DialLoop(), asio::detached);
  asio::co_spawn(io_, CleanLoop(), asio::detached);
  if (options_.ack_timeout.count() > 0) {
    asio::co_spawn(io_, AckWatch(), asio::detached);
  }
}

void Replicator::BeginShutdown() {
  shutting_down_ = true;
  // Operations held by a handshake under way wait for its end, as they would without the
  // shutdown: streamed if it succeeds, completed without the peer if it fails (the handshake
  // is bounded by the peer timeout). Completed now, they would be in neither the plan already
  // agreed nor the stream that follows it.
  if (handshaking_) {
    return;
  }
  // Under `block`, held operations would wait forever for a peer that may never come back.
  // They fail instead of being acknowledged: the operator chose to stop without the peer.
  auto held = std::move(held_);
  held_.clear();
  for (Pending& op : held) {
    CompleteUnreplicated(std::move(op));
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
  // A running verify may have marked blocks that differ, and raises peer_disk to Inconsistent
  // only when it ends: until then its marks must not be taken for a clean cycle's.
  const bool verifying = verifier_ && verifier_->progress().running;
  return Streaming() && peer_disk_ == DiskState::kUpToDate && pending_.empty() && held_.empty() &&
         !verifying;
}

asio::awaitable<void> Replicator::Sleep(std::chrono::milliseconds duration) {
  if (options_.sleep) {
    co_await options_.sleep(duration);
    co_return;
  }
  asio::steady_timer timer(io_);
  timer.expires_after(duration);
  boost::system::error_code ec;
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> Replicator::DialLoop() {
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
    co_await Sleep(options_.retry_interval);
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

asio::awaitable<base::Result<std::shared_ptr<transport::MessageLink>>> Replicator::DialTcp() {
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
  co_return std::shared_ptr<transport::MessageLink>(std::move(link));
}

asio::awaitable<Status> Replicator::ConnectOnce() {
  // Not one co_await of a conditional expression: GCC 12 destroys its temporary awaitable twice.
  base::Result<std::shared_ptr<transport::MessageLink>> dialed =
      Status::Error(ENOTCONN, "not dialed");
  if (options_.dial) {
    dialed = co_await options_.dial();
  } else {
    dialed = co_await DialTcp();
  }
  if (!dialed.ok()) {
    co_return dialed.status();
  }
  std::shared_ptr<transport::MessageLink> link = std::move(dialed.value());
  const auto& md = metadata_.get();
  pb::Hello hello;
  hello.set_protocol_version(transport::kPeerProtocolVersion);
  hello.set_node_id(options_.node_id);
  hello.set_role(pb::ROLE_PRIMARY);
  hello.set_volume_uuid(md.volume_uuid);
  hello.set_size_bytes(md.size_bytes);
  hello.set_disk(pb::DISK_UP_TO_DATE);
  hello.set_timeout_ms(static_cast<uint32_t>(options_.timing.timeout.count()));
  hello.set_current_gen(md.gens.current);
  hello.set_bitmap_gen(md.gens.bitmap);
  for (uint64_t gen : md.gens.history) {
    hello.add_history_gens(gen);
  }
  hello.set_marked_bytes(intent_log_.marked_bytes());
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
  // From the decision until the link streams, client operations wait (SendOrHold): one
  // acknowledged without the peer in that window would be in neither the plan nor the stream.
  handshaking_ = true;
  const uint64_t unreplicated_before = unreplicated_count_;
  pb::SyncPlan plan;
  Status agreed = co_await Negotiate(peer_hello, *link, plan);
  handshaking_ = false;
  if (agreed.ok() && unreplicated_count_ != unreplicated_before) {
    // Nothing should complete without the peer while operations are held; if anything did, the
    // plan misses it. Start over: the next plan includes its region.
    agreed = Status::Error(EAGAIN, "an operation completed without the peer during the handshake");
  }
  if (!agreed.ok()) {
    CompleteHeldUnreplicated();
    co_return agreed;
  }
  link->AdaptToPeerTimeout(std::chrono::milliseconds(peer_hello.timeout_ms()));
  link_ = std::move(link);
  ++link_epoch_;
  link_closed_ = std::make_unique<base::AsyncEvent>(io_.get_executor());
  connection_ = ConnectionState::kConnected;
  link_->StartStreaming(this);
  const bool resync = plan.kind() != pb::SyncPlan::KIND_NONE;
  spdlog::info("peer {} connected from {}: {} ({} bytes to resync)", options_.peer_node_id,
               link_->remote(), last_sync_kind_, plan.resync_bytes());
  ReleaseHeld();
  if (resync) {
    MarkPeerDisk(DiskState::kInconsistent);
    StartResync();
  } else {
    MarkPeerDisk(DiskState::kUpToDate);
  }
  co_return Status::Ok();
}

asio::awaitable<Status> Replicator::Negotiate(const pb::Hello& peer_hello,
                                              transport::MessageLink& link, pb::SyncPlan& plan) {
  if (Status st = co_await Plan(peer_hello, link, plan); !st.ok()) {
    pb::Refuse refuse;
    refuse.set_reason(st.message());
    (void)co_await link.SendMessage(FrameType::kRefuse, refuse);
    co_return st;
  }
  if (Status st = co_await link.SendMessage(FrameType::kSyncPlan, plan); !st.ok()) {
    co_return st;
  }
  pb::Ready ready;
  if (Status st = co_await link.Expect(FrameType::kReady, ready); !st.ok()) {
    co_return st;
  }
  if (stopping_) {
    co_return Status::Error(ESHUTDOWN, "shutting down");
  }
  co_return Status::Ok();
}

void Replicator::CompleteHeldUnreplicated() {
  auto held = std::move(held_);
  held_.clear();
  for (Pending& op : held) {
    CompleteUnreplicated(std::move(op));
  }
}

asio::awaitable<Status> Replicator::ReceivePeerBitmap(transport::MessageLink& link,
                                                      std::vector<ByteRange>& runs) {
  const uint64_t size = metadata_.get().size_bytes;
  // A run per region at most, so a peer cannot keep us reading forever.
  const uint64_t max_runs = RegionCount(size, metadata_.get().region_bytes) + 1;
  while (true) {
    pb::BitmapRuns message;
    if (Status st = co_await link.Expect(FrameType::kBitmapRuns, message); !st.ok()) {
      co_return st;
    }
    if (message.offset_bytes_size() != message.length_bytes_size()) {
      co_return Status::Error(EPROTO, "BitmapRuns lists differ in length");
    }
    for (int i = 0; i < message.offset_bytes_size(); ++i) {
      const uint64_t offset = message.offset_bytes(i);
      const uint64_t length = message.length_bytes(i);
      if (offset > size || length > size - offset || runs.size() >= max_runs) {
        co_return Status::Error(EPROTO, "BitmapRuns marks a range past the end of the volume");
      }
      runs.push_back({offset, length});
    }
    if (message.last()) {
      co_return Status::Ok();
    }
  }
}

asio::awaitable<Status> Replicator::Plan(const pb::Hello& peer_hello, transport::MessageLink& link,
                                         pb::SyncPlan& plan) {
  std::vector<ByteRange> peer_runs;
  if (Status st = co_await ReceivePeerBitmap(link, peer_runs); !st.ok()) {
    co_return st;
  }
  const VolumeMetadata& md = metadata_.get();
  Generations peer;
  peer.current = peer_hello.current_gen();
  peer.bitmap = peer_hello.bitmap_gen();
  peer.history.assign(peer_hello.history_gens().begin(), peer_hello.history_gens().end());
  const bool peer_new = peer_hello.volume_uuid().empty() || peer.current == 0;
  SyncDecision decision =
      DecideSync(md.gens, peer, peer_hello.disk() == pb::DISK_UP_TO_DATE,
                 intent_log_.marked_regions() > 0 || !peer_runs.empty());
  if (decision.kind == SyncKind::kFull && peer_new && options_.skip_initial_sync) {
    spdlog::warn("--skip-initial-sync: trusting the operator that both volumes are identical");
    decision = {SyncKind::kNone, "--skip-initial-sync: the operator vouches both are identical"};
  }
  if (IsRefusal(decision.kind)) {
    sync_refusal_ = decision.reason;
    last_sync_kind_ = SyncKindName(decision.kind);
    spdlog::error("refusing to sync with {}: {}. To go on, run `nbdmirror discard-changes` on "
                  "the copy whose changes are to be discarded (see README)",
                  options_.peer_node_id, decision.reason);
    co_return Status::Error(EEXIST, decision.reason);
  }
  if (decision.kind == SyncKind::kIncremental && !intent_log_.enabled()) {
    decision = {SyncKind::kFull, "the write-intent bitmap is off: full resync"};
  }
  sync_refusal_.clear();
  last_sync_kind_ = SyncKindName(decision.kind);
  Generations next = md.gens;
  uint64_t target = next.current;
  switch (decision.kind) {
    case SyncKind::kNone:
      next.bitmap = next.current;
      next.current_shared = true;
      break;
    case SyncKind::kIncremental:
      target = peer.current;
      for (const ByteRange& run : peer_runs) {
        intent_log_.MarkRange(run.offset_bytes, run.length_bytes);
      }
      break;
    default:  // kFull
      RememberGeneration(next, next.bitmap);
      next.bitmap = NewGeneration();
      target = next.bitmap;
      intent_log_.MarkAll();
      break;
  }
  // Durable before the secondary hears of it: a crash from here on resumes this plan.
  const Generations decided_on = md.gens;
  Status st = co_await AwaitDone(io_, [this](StoreDone done) { intent_log_.Persist(std::move(done)); });
  if (st.ok() && !(metadata_.get().gens == decided_on)) {
    // Client operations are held during the handshake, so nothing should change them; if
    // something did, this plan is stale: drop the link and decide again.
    st = Status::Error(EAGAIN, "generations changed during the handshake");
  }
  if (st.ok()) {
    st = metadata_.Update([&next](VolumeMetadata& m) { m.gens = next; });
  }
  if (!st.ok()) {
    co_return Status::Error(EIO, "recording the sync plan: " + st.ToString());
  }
  spdlog::info("sync decision with {}: {}: {}", options_.peer_node_id, last_sync_kind_,
               decision.reason);
  plan.set_volume_uuid(md.volume_uuid);
  plan.set_kind(decision.kind == SyncKind::kNone          ? pb::SyncPlan::KIND_NONE
                : decision.kind == SyncKind::kIncremental ? pb::SyncPlan::KIND_INCREMENTAL
                                                          : pb::SyncPlan::KIND_FULL);
  plan.set_target_gen(target);
  plan.set_resync_bytes(decision.kind == SyncKind::kNone ? 0 : intent_log_.marked_bytes());
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
    metadata_behind_ = true;
  }
}

bool Replicator::RecordDivergence() {
  const VolumeMetadata& md = metadata_.get();
  const bool mint = md.gens.current_shared;
  if (peer_disk_ == DiskState::kUpToDate) {
    peer_disk_ = DiskState::kOutdated;
  }
  if (!mint && md.peer_disk == peer_disk_ && !metadata_behind_) {
    return true;
  }
  // After a failed update memory already holds the minted generation: writing the superblock
  // again (with whatever else changed) is the retry.
  Status st = metadata_.Update([this, mint](VolumeMetadata& next) {
    if (mint) {
      DivergeFromPeer(next.gens);
    }
    next.peer_disk = peer_disk_;
  });
  if (!st.ok()) {
    if (!metadata_behind_) {
      spdlog::critical(
          "cannot record writing without the peer: {}; writes that the peer does not get fail "
          "with EIO until the record succeeds",
          st.ToString());
    }
    metadata_behind_ = true;
    return false;
  }
  if (metadata_behind_) {
    spdlog::warn(
        "the peer's state is recorded again (peer {}, generation {}); writes without "
        "it are acknowledged",
        DiskStateName(peer_disk_), GenerationText(metadata_.get().gens.current));
    metadata_behind_ = false;
  }
  if (mint) {
    spdlog::info("writing without peer {}: new generation {}", options_.peer_node_id,
                 GenerationText(metadata_.get().gens.current));
  }
  return true;
}

void Replicator::StartResync() {
  auto resync = std::make_shared<Resync>(
      io_, *volume_, intent_log_, pool_,
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
      },
      [this](PeerDone done) {
        SendOrHold(
            [this](uint64_t seq) {
              pb::Flush flush;
              flush.set_seq(seq);
              link_->Send(FrameType::kFlush, flush);
            },
            std::move(done), /*resync=*/true);
      },
      options_.resync_rate_bytes_per_s);
  resync_ = resync;
  std::erase_if(unfinished_resyncs_, [](const auto& weak) { return weak.expired(); });
  unfinished_resyncs_.push_back(resync);
  spdlog::info("resync to {}: {} bytes marked", options_.peer_node_id,
               intent_log_.marked_bytes());
  // Counted live until the callback below settles it. Weak: the callback's own reference is
  // the one that keeps the Resync alive until then.
  std::weak_ptr<Resync> counted = resync;
  resync_tally_.Started(resync.get(), [counted] {
    auto r = counted.lock();
    return r ? r->progress().done_bytes : 0;
  });
  // The callback holds the Resync itself: a cancelled resync must live until its last block
  // comes back (one may still wait for a range lock or a read when the next connection
  // replaces resync_). Dropping this self-reference brings back a use-after-free.
  resync->Start([this, resync](bool complete) {
    resync_progress_ = resync->progress();
    resync_tally_.Finished(resync.get());
    OnResyncFinished(complete);
  });
}

void Replicator::OnResyncFinished(bool complete) {
  if (!complete || !Streaming()) {
    spdlog::warn("resync to {} interrupted at {} of {} bytes", options_.peer_node_id,
                 resync_progress_.done_bytes, resync_progress_.total_bytes);
    return;
  }
  // From the moment ResyncDone leaves, the secondary may hold our current generation (even if
  // its acknowledgement never comes back): recorded before it is sent.
  Status shared = metadata_.Update([](VolumeMetadata& md) { md.gens.current_shared = true; });
  if (!shared.ok()) {
    spdlog::critical("cannot record the generation handed to {}: {}", options_.peer_node_id,
                     shared.ToString());
    link_->Close(Status::Error(EIO, "metadata update failed"));
    return;
  }
  // The secondary flushes everything before it records itself UpToDate and acknowledges.
  SendOrHold(
      [this](uint64_t seq) {
        pb::ResyncDone done;
        done.set_seq(seq);
        done.set_current_gen(metadata_.get().gens.current);
        link_->Send(FrameType::kResyncDone, done);
      },
      [this](PeerOutcome outcome) {
        if (outcome != PeerOutcome::kConfirmed) {
          return;
        }
        // The secondary now holds this generation: the bitmap is relative to it again.
        peer_disk_ = DiskState::kUpToDate;
        Status st = metadata_.Update([](VolumeMetadata& md) {
          md.gens.bitmap = md.gens.current;
          md.peer_disk = DiskState::kUpToDate;
        });
        if (!st.ok()) {
          spdlog::critical("cannot record the finished resync: {}", st.ToString());
        }
        spdlog::info("resync to {} complete; peer is UpToDate", options_.peer_node_id);
        if (resync_again_) {
          resync_again_ = false;
          OnLocalWriteFailed();
        }
      },
      /*resync=*/true);
}

void Replicator::SendOrHold(SendFn send, PeerDone done, bool resync,
                            std::shared_ptr<std::string> digest) {
  if (Streaming()) {
    const uint64_t seq = NextSeq();
    send(seq);
    Pending op{std::move(send), std::move(done), resync, std::move(digest)};
    if (spare_pending_.empty()) {
      pending_.emplace(seq, std::move(op));
    } else {
      PendingMap::node_type node = std::move(spare_pending_.back());
      spare_pending_.pop_back();
      node.key() = seq;
      node.mapped() = std::move(op);
      pending_.insert(std::move(node));
    }
    return;
  }
  if (resync) {
    asio::post(io_, [done = std::move(done)] { done(PeerOutcome::kDegraded); });
    return;
  }
  if (handshaking_) {
    held_.push_back(Pending{std::move(send), std::move(done), false, nullptr});
    return;
  }
  CompleteUnreplicated(Pending{std::move(send), std::move(done), false, nullptr});
}

void Replicator::CompleteUnreplicated(Pending op) {
  // The operation was not mirrored: the peer's copy is out of date, and that (with a new
  // generation) must be on disk before the operation is acknowledged.
  ++unreplicated_count_;
  const bool recorded = RecordDivergence();
  if (options_.on_peer_loss == PeerLossPolicy::kBlock) {
    if (shutting_down_) {
      asio::post(io_, [done = std::move(op.done)] { done(PeerOutcome::kAborted); });
      return;
    }
    held_.push_back(std::move(op));
    return;
  }
  const PeerOutcome outcome = recorded ? PeerOutcome::kDegraded : PeerOutcome::kUnrecorded;
  asio::post(io_, [done = std::move(op.done), outcome] { done(outcome); });
}

void Replicator::ReleaseHeld() {
  auto held = std::move(held_);
  held_.clear();
  for (Pending& op : held) {
    SendOrHold(std::move(op.send), std::move(op.done), /*resync=*/false);
  }
}

void Replicator::SendLive(FrameType type, const google::protobuf::MessageLite& message,
                          std::span<const std::byte> payload) {
  // With nothing else awaiting the peer's answer, no other frame is likely to join this one.
  if (pending_.empty()) {
    link_->SendAlone(type, message, payload);
  } else {
    link_->Send(type, message, payload);
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
        SendLive(FrameType::kWrite, write, data);
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
        SendLive(FrameType::kZero, zero);
      },
      std::move(done), /*resync=*/false);
}

void Replicator::ReplicateFlush(PeerDone done) {
  SendOrHold(
      [this](uint64_t seq) {
        pb::Flush flush;
        flush.set_seq(seq);
        SendLive(FrameType::kFlush, flush);
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
  ++acks_received_;
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
  if (it->second.digest) {
    *it->second.digest = ack.digest();
  }
  PeerDone done = std::move(it->second.done);
  PendingMap::node_type node = pending_.extract(it);
  node.mapped() = Pending{};  // Nothing of the operation outlives its answer.
  spare_pending_.push_back(std::move(node));
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

namespace mirror {

asio::awaitable<void> Replicator::AckWatch() {
  // A standby whose process lives but whose disk hangs keeps the link up with heartbeats while
  // every mirrored write waits for it. A look is stalled when operations were pending at the
  // previous look and still are, on the same link, and no Ack came in between; two stalled
  // looks in a row (a whole ack_timeout) and the peer is lost, like a silent one.
  int stalled_looks = 0;
  bool pending_seen = false;
  uint64_t acks_seen = acks_received_;
  uint64_t epoch_seen = link_epoch_;
  while (!stopping_) {
    co_await Sleep(options_.ack_timeout / 2);
    if (stopping_) {
      break;
    }
    const bool pending = Streaming() && !pending_.empty();
    const bool stalled =
        pending && pending_seen && acks_received_ == acks_seen && link_epoch_ == epoch_seen;
    stalled_looks = stalled ? stalled_looks + 1 : 0;
    pending_seen = pending;
    acks_seen = acks_received_;
    epoch_seen = link_epoch_;
    if (stalled_looks >= 2) {
      stalled_looks = 0;
      link_->Close(Status::Error(ETIMEDOUT, "the peer acknowledged nothing for " +
                                                std::to_string(options_.ack_timeout.count()) +
                                                " ms with " + std::to_string(pending_.size()) +
                                                " operation(s) waiting"));
    }
  }
}

asio::awaitable<void> Replicator::CleanLoop() {
  while (!stopping_) {
    // A cycle spans a whole interval: only regions no write touched during it may be cleared,
    // so regions written at least once an interval stay marked and cost no metadata I/O.
    const uint64_t epoch = link_epoch_;
    const uint64_t cycle = intent_log_.BeginClean();
    co_await Sleep(options_.clean_interval);
    if (stopping_) {
      break;
    }
    // While writes keep coming, cleaning would only make them mark their regions again, each
    // new mark a metadata write the next write into the region waits for (in mode flush also a
    // datasync on both disks for the cycle's flush): leave the regions marked, up to a bound.
    const bool worth_it = !intent_log_.WrittenSinceBeginClean() ||
                          intent_log_.marked_bytes() > options_.keep_marked_bytes;
    // Not while a resync or verify runs: the blocks they mark must survive until copied.
    if (epoch == link_epoch_ && Streaming() && peer_disk_ == DiskState::kUpToDate &&
        intent_log_.enabled() && intent_log_.marked_regions() > 0 && worth_it &&
        !(resync_ && resync_->progress().running) &&
        !(verifier_ && verifier_->progress().running)) {
      co_await CleanOnce(cycle);
    }
  }
}

asio::awaitable<void> Replicator::CleanOnce(uint64_t cycle) {
  const uint64_t epoch = link_epoch_;
  cleaning_ = true;
  // Each flush covers every write completed before it started; writes after BeginClean mark
  // their regions touched, so they are not cleared this cycle.
  Status local = co_await AwaitDone(
      io_, [this](StoreDone done) { volume_->group_commit().RequestDurable(std::move(done)); });
  Status peer = co_await AwaitDone(io_, [this](StoreDone done) {
    SendOrHold(
        [this](uint64_t seq) {
          pb::Flush flush;
          flush.set_seq(seq);
          link_->Send(FrameType::kFlush, flush);
        },
        [done = std::move(done)](PeerOutcome outcome) {
          done(outcome == PeerOutcome::kConfirmed ? Status::Ok()
                                                  : Status::Error(ENOTCONN, "peer gone"));
        },
        /*resync=*/true);
  });
  if (local.ok() && peer.ok() && epoch == link_epoch_ && Streaming() &&
      peer_disk_ == DiskState::kUpToDate) {
    const uint64_t cleared = intent_log_.FinishClean(cycle);
    spdlog::debug("clean cycle: {} regions cleared, {} still marked", cleared,
                  intent_log_.marked_regions());
  } else {
    intent_log_.AbortClean();
  }
  cleaning_ = false;
}

}  // namespace mirror

namespace mirror {

Status Replicator::StartVerify() {
  if (!Streaming() || peer_disk_ != DiskState::kUpToDate) {
    return Status::Error(ENOTCONN, "verify needs the peer connected and UpToDate (connection " +
                                       std::string(ConnectionStateName(connection_)) +
                                       ", peer disk " + DiskStateName(peer_disk_) + ")");
  }
  if ((resync_ && resync_->progress().running) || (verifier_ && verifier_->progress().running)) {
    return Status::Error(EBUSY, "a resync or verify is already running");
  }
  verifier_ = std::make_shared<Verifier>(
      *volume_, intent_log_, pool_,
      [this](uint64_t offset, uint64_t length, Verifier::DigestDone done) {
        auto digest = std::make_shared<std::string>();
        SendOrHold(
            [this, offset, length](uint64_t seq) {
              pb::DigestRequest request;
              request.set_seq(seq);
              request.set_offset_bytes(offset);
              request.set_length_bytes(static_cast<uint32_t>(length));
              link_->Send(FrameType::kDigestRequest, request);
            },
            [digest, done = std::move(done)](PeerOutcome outcome) { done(outcome, *digest); },
            /*resync=*/true, digest);
      },
      options_.verify_block_bytes);
  spdlog::info("verify against {}: comparing {} bytes by block digests", options_.peer_node_id,
               volume_->size_bytes());
  verifier_->Start([this](const VerifyProgress& result) { OnVerifyFinished(result); });
  return Status::Ok();
}

void Replicator::OnVerifyFinished(const VerifyProgress& result) {
  if (!result.error.empty()) {
    spdlog::warn("verify against {} stopped at {} of {} bytes: {}", options_.peer_node_id,
                 result.done_bytes, result.total_bytes, result.error);
  } else {
    spdlog::info("verify against {} done: {} bytes differ", options_.peer_node_id,
                 result.differing_bytes);
  }
  if ((result.differing_bytes == 0 && !resync_again_) || !Streaming()) {
    return;  // Marks made before a lost link are resynced when the peer returns.
  }
  resync_again_ = false;
  MarkPeerDisk(DiskState::kInconsistent);
  StartResync();
}

}  // namespace mirror

namespace mirror {

void Replicator::OnLocalWriteFailed() {
  // Posted: the volume calls this from inside a write's completion.
  asio::post(io_, [this] {
    if (!Streaming() || intent_log_.pinned_regions() == 0) {
      return;  // The next connection resyncs what the bitmap marks.
    }
    if ((resync_ && resync_->progress().running) || (verifier_ && verifier_->progress().running)) {
      resync_again_ = true;
      return;
    }
    spdlog::warn("a local write failed; resyncing its {} pinned region(s) to {}",
                 intent_log_.pinned_regions(), options_.peer_node_id);
    MarkPeerDisk(DiskState::kInconsistent);
    StartResync();
  });
}

}  // namespace mirror
