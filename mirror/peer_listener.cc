#include "mirror/peer_listener.h"

#include <spdlog/spdlog.h>

#include "base/check.h"
#include "mirror/await_done.h"
#include "mirror/generations.h"
#include "transport/peer.pb.h"

namespace mirror {

using base::Status;
using transport::FrameType;
namespace pb = nbdmirror::peer;

namespace {

pb::DiskState ToWire(DiskState state) {
  switch (state) {
    case DiskState::kUpToDate:
      return pb::DISK_UP_TO_DATE;
    case DiskState::kOutdated:
      return pb::DISK_OUTDATED;
    case DiskState::kInconsistent:
      return pb::DISK_INCONSISTENT;
    case DiskState::kFailed:
      return pb::DISK_FAILED;
  }
  return pb::DISK_UNSPECIFIED;
}

}  // namespace

PeerListener::PeerListener(asio::io_context& io, PeerListenerOptions options, Superblock& metadata,
                           WriteIntentLog& intent_log, base::BufferPool& pool,
                           ReplicaApplier* applier)
    : io_(io),
      options_(std::move(options)),
      metadata_(metadata),
      intent_log_(intent_log),
      pool_(pool),
      applier_(applier),
      acceptor_(io) {}

Status PeerListener::Listen(const base::Endpoint& endpoint) {
  boost::system::error_code ec;
  asio::ip::tcp::resolver resolver(io_);
  auto results = resolver.resolve(endpoint.host, std::to_string(endpoint.port), ec);
  if (ec || results.empty()) {
    return Status::Error(EHOSTUNREACH, "cannot resolve " + endpoint.ToString());
  }
  const auto target = results.begin()->endpoint();
  acceptor_.open(target.protocol(), ec);
  if (!ec) {
    acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  }
  if (!ec) {
    acceptor_.bind(target, ec);
  }
  if (!ec) {
    acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  }
  if (ec) {
    return Status::Error(ec.value(), "cannot listen for the peer on " + endpoint.ToString() +
                                         ": " + ec.message());
  }
  spdlog::info("listening for peer {} on {}", options_.peer_node_id, endpoint.ToString());
  asio::co_spawn(io_, AcceptLoop(), asio::detached);
  return Status::Ok();
}

void PeerListener::Stop() {
  stopping_ = true;
  boost::system::error_code ignored;
  acceptor_.close(ignored);
}

asio::awaitable<void> PeerListener::AcceptLoop() {
  while (!stopping_) {
    asio::ip::tcp::socket socket(io_);
    boost::system::error_code ec;
    co_await acceptor_.async_accept(socket, asio::redirect_error(asio::use_awaitable, ec));
    if (stopping_) {
      break;
    }
    if (ec) {
      spdlog::warn("peer accept: {}", ec.message());
      continue;
    }
    asio::co_spawn(io_, Handle(std::move(socket)), asio::detached);
  }
}

asio::awaitable<void> PeerListener::Handle(asio::ip::tcp::socket socket) {
  auto link = std::make_shared<transport::PeerConnection>(
      std::make_unique<transport::PeerStream>(std::move(socket), options_.tls), pool_,
      options_.timing);
  if (Status st = co_await link->Authenticate(options_.secret, /*dialer=*/false); !st.ok()) {
    Refused(*link, st);
    co_return;
  }
  co_await Serve(link);
}

asio::awaitable<void> PeerListener::Serve(std::shared_ptr<transport::MessageLink> link) {
  if (Status st = co_await Handshake(link); !st.ok()) {
    Refused(*link, st);
  }
}

void PeerListener::Refused(transport::MessageLink& link, const Status& why) {
  ++refused_count_;
  spdlog::warn("peer connection from {} refused: {}", link.remote(), why.ToString());
  link.Close(why);
}

asio::awaitable<Status> PeerListener::Handshake(std::shared_ptr<transport::MessageLink> link) {
  pb::Hello hello;
  if (Status st = co_await link->Expect(FrameType::kHello, hello); !st.ok()) {
    co_return st;
  }
  auto refuse = [&](int error, const std::string& why) { return RefuseWith(*link, error, why); };
  if (hello.protocol_version() != transport::kPeerProtocolVersion) {
    co_return co_await refuse(EPROTO, "unsupported protocol version " +
                                          std::to_string(hello.protocol_version()));
  }
  if (hello.node_id() != options_.peer_node_id) {
    co_return co_await refuse(EACCES, "node '" + hello.node_id() + "' is not the configured peer '" +
                                          options_.peer_node_id + "'");
  }
  if (applier_ == nullptr) {
    co_return co_await refuse(EEXIST, "node '" + options_.node_id + "' is primary; '" +
                                          hello.node_id() +
                                          "' may not mirror into it (split brain?)");
  }
  if (hello.role() != pb::ROLE_PRIMARY) {
    co_return co_await refuse(EINVAL, "only a primary may connect to a secondary");
  }
  if (applier_->attached() || handshaking_) {
    co_return co_await refuse(
        EBUSY, "already mirroring from primary '" + applier_->primary_node_id() + "'");
  }
  handshaking_ = true;
  Status st = co_await AgreeOnPlan(link, hello);
  handshaking_ = false;
  co_return st;
}

asio::awaitable<Status> PeerListener::RefuseWith(transport::MessageLink& link, int error,
                                                 std::string why) {
  pb::Refuse message;
  message.set_reason(why);
  (void)co_await link.SendMessage(FrameType::kRefuse, message);
  co_return Status::Error(error, why);
}

asio::awaitable<Status> PeerListener::AgreeOnPlan(std::shared_ptr<transport::MessageLink> link,
                                                  const pb::Hello& hello) {
  auto refuse = [&](int error, const std::string& why) { return RefuseWith(*link, error, why); };
  // Operations of an earlier link may still be finishing: a datasync that fails the disk, or a
  // resync's end that records this copy UpToDate. Everything below reads what they leave, and
  // the plan recorded below must not be overwritten by them.
  co_await applier_->WaitIdle();
  const auto& md = metadata_.get();
  if (hello.size_bytes() != md.size_bytes) {
    co_return co_await refuse(EINVAL, "size mismatch: primary has " +
                                          std::to_string(hello.size_bytes()) + " bytes, this volume " +
                                          std::to_string(md.size_bytes));
  }
  if (hello.volume_uuid().empty() ||
      (!md.volume_uuid.empty() && hello.volume_uuid() != md.volume_uuid)) {
    co_return co_await refuse(EINVAL, "volume identity mismatch: primary has '" +
                                          hello.volume_uuid() + "', this volume '" +
                                          md.volume_uuid + "'");
  }
  if (applier_->disk_failed()) {
    // A failed datasync is never retried into a success: whatever it covered may be lost, so
    // this copy takes nothing more until the disk is looked at and the daemon restarted.
    co_return co_await refuse(EIO,
                              "this copy's disk failed a datasync; restart the standby's "
                              "daemon once the disk is repaired");
  }
  // Our own view of the generations: the primary decides too, but a secondary never lets itself
  // be overwritten when it holds writes the primary lacks.
  Generations primary_gens;
  primary_gens.current = hello.current_gen();
  primary_gens.bitmap = hello.bitmap_gen();
  primary_gens.history.assign(hello.history_gens().begin(), hello.history_gens().end());
  const SyncDecision view =
      DecideSync(primary_gens, md.gens, md.disk == DiskState::kUpToDate,
                 hello.marked_bytes() > 0 || intent_log_.marked_regions() > 0);
  pb::Hello ours;
  ours.set_protocol_version(transport::kPeerProtocolVersion);
  ours.set_node_id(options_.node_id);
  ours.set_role(pb::ROLE_SECONDARY);
  ours.set_volume_uuid(md.volume_uuid);
  ours.set_size_bytes(md.size_bytes);
  ours.set_disk(ToWire(md.disk));
  ours.set_timeout_ms(static_cast<uint32_t>(options_.timing.timeout.count()));
  ours.set_current_gen(md.gens.current);
  ours.set_bitmap_gen(md.gens.bitmap);
  for (uint64_t gen : md.gens.history) {
    ours.add_history_gens(gen);
  }
  ours.set_marked_bytes(intent_log_.marked_bytes());
  Status st = co_await link->SendMessage(FrameType::kHello, ours);
  if (st.ok()) {
    st = co_await SendBitmap(*link);
  }
  if (st.ok() && IsRefusal(view.kind)) {
    sync_refusal_ = view.reason;
    spdlog::error(
        "refusing primary {}: {}. To go on, run `nbdmirror discard-changes` on the "
        "copy whose changes are to be discarded (see README)",
        hello.node_id(), view.reason);
    co_return co_await refuse(EEXIST, view.reason);
  }
  sync_refusal_.clear();
  pb::SyncPlan plan;
  if (st.ok()) {
    st = co_await link->Expect(FrameType::kSyncPlan, plan);
  }
  if (st.ok() && plan.volume_uuid() != hello.volume_uuid()) {
    st = Status::Error(EPROTO, "SyncPlan names another volume");
  }
  if (st.ok() && (plan.kind() == pb::SyncPlan::KIND_UNSPECIFIED || plan.target_gen() == 0)) {
    st = Status::Error(EPROTO, "SyncPlan has no kind or no target generation");
  }
  const bool resync = plan.kind() != pb::SyncPlan::KIND_NONE;
  if (st.ok() && !resync) {
    // The primary vouches that the copies are identical: either the generations say so, or the
    // operator did for two new volumes (--skip-initial-sync). Marks of our own are moot.
    st = co_await AwaitDone(io_, [this](StoreDone done) { intent_log_.ClearAll(std::move(done)); });
  }
  if (st.ok()) {
    // Recorded before the first resync block can land: a crash mid-resync leaves this copy
    // marked Inconsistent at the plan's generation, never mistaken for a usable one, and the
    // resync resumes from the primary's bitmap.
    st = metadata_.Update([&](VolumeMetadata& next) {
      next.volume_uuid = plan.volume_uuid();
      FollowPrimaryGeneration(next, plan.target_gen(),
                              resync ? DiskState::kInconsistent : DiskState::kUpToDate);
    });
  }
  if (st.ok()) {
    CHECK(applier_->idle());  // Not attached since the wait above: nothing could start.
    st = co_await link->SendMessage(FrameType::kReady, pb::Ready());
  }
  if (!st.ok()) {
    co_return st;
  }
  spdlog::info("primary {} connected from {} ({}; {} bytes to resync)", hello.node_id(),
               link->remote(),
               plan.kind() == pb::SyncPlan::KIND_FULL          ? "full resync follows"
               : plan.kind() == pb::SyncPlan::KIND_INCREMENTAL ? "incremental resync follows"
                                                               : "in sync",
               plan.resync_bytes());
  link->AdaptToPeerTimeout(std::chrono::milliseconds(hello.timeout_ms()));
  applier_->Attach(link, hello.node_id());
  co_return Status::Ok();
}

}  // namespace mirror

namespace mirror {

asio::awaitable<Status> PeerListener::SendBitmap(transport::MessageLink& link) {
  // Messages stay well under the 64 KiB message limit: a run is two varints of at most 10 bytes.
  constexpr int kRunsPerMessage = 2000;
  const std::vector<ByteRange> runs = intent_log_.MarkedRuns();
  size_t next = 0;
  do {
    pb::BitmapRuns message;
    for (int i = 0; i < kRunsPerMessage && next < runs.size(); ++i, ++next) {
      message.add_offset_bytes(runs[next].offset_bytes);
      message.add_length_bytes(runs[next].length_bytes);
    }
    message.set_last(next == runs.size());
    if (Status st = co_await link.SendMessage(FrameType::kBitmapRuns, message); !st.ok()) {
      co_return st;
    }
  } while (next < runs.size());
  co_return Status::Ok();
}

}  // namespace mirror
