#include "mirror/replica_applier.h"

#include <spdlog/spdlog.h>

#include <cstdlib>

#include "base/check.h"
#include "base/sha256.h"
#include "transport/peer.pb.h"

namespace mirror {

using base::Status;
using transport::FrameType;
namespace pb = nbdmirror::peer;

ReplicaApplier::ReplicaApplier(asio::io_context& io, LocalStore& store, Superblock& metadata,
                               WriteIntentLog& intent_log)
    : io_(io),
      store_(store),
      metadata_(metadata),
      intent_log_(intent_log),
      group_commit_(io, store),
      idle_event_(io.get_executor()) {}

asio::awaitable<void> ReplicaApplier::WaitIdle() {
  while (!idle()) {
    co_await idle_event_.Wait();
  }
}

void ReplicaApplier::Attach(std::shared_ptr<transport::FrameLink> link,
                            std::string primary_node_id) {
  link_ = std::move(link);
  last_seq_.reset();
  primary_node_id_ = std::move(primary_node_id);
  link_->StartStreaming(this);
}

void ReplicaApplier::Reject(const std::string& why) {
  spdlog::error("primary {} sent an invalid operation: {}; dropping the link", primary_node_id_,
                why);
  link_->Close(Status::Error(EPROTO, why));
}

bool ReplicaApplier::InSequence(uint64_t seq) {
  if (last_seq_ && seq != *last_seq_ + 1) {
    Reject("operation seq " + std::to_string(seq) + " follows seq " + std::to_string(*last_seq_) +
           ": a frame was lost, repeated or reordered on the way");
    return false;
  }
  last_seq_ = seq;
  return true;
}

void ReplicaApplier::OnFrame(transport::Frame frame) {
  switch (frame.type) {
    case FrameType::kWrite:
      ApplyWrite(std::move(frame));
      return;
    case FrameType::kZero:
      ApplyZero(frame);
      return;
    case FrameType::kFlush:
      ApplyFlush(frame, /*resync_done=*/false);
      return;
    case FrameType::kResyncDone:
      ApplyFlush(frame, /*resync_done=*/true);
      return;
    case FrameType::kDigestRequest:
      ApplyDigestRequest(frame);
      return;
    default:
      Reject(std::string("unexpected ") + transport::FrameTypeName(frame.type));
  }
}

void ReplicaApplier::ApplyWrite(transport::Frame frame) {
  pb::Write write;
  if (!frame.Parse(write)) {
    Reject("Write does not parse");
    return;
  }
  if (!InSequence(write.seq())) {
    return;
  }
  const uint64_t size = store_.size_bytes();
  if (write.length_bytes() != frame.payload.size()) {
    Reject("Write declares " + std::to_string(write.length_bytes()) + " bytes but carries " +
           std::to_string(frame.payload.size()));
    return;
  }
  if (write.length_bytes() == 0) {
    // The primary answers an empty NBD request itself; an empty Write would reach the store as
    // an I/O that cannot make progress, which the store reports as a disk error.
    Reject("Write of 0 bytes at " + std::to_string(write.offset_bytes()));
    return;
  }
  if (write.offset_bytes() > size || write.length_bytes() > size - write.offset_bytes()) {
    Reject("Write at " + std::to_string(write.offset_bytes()) + "+" +
           std::to_string(write.length_bytes()) + " is past the end of the volume");
    return;
  }
  ++stats_.writes;
  (write.resync() ? stats_.resync_bytes : stats_.written_bytes) += write.length_bytes();
  ++stats_.ops_in_flight;
  const auto arrived = std::chrono::steady_clock::now();
  // The completion owns the payload's buffer until the store is done with it; the bytes do not
  // move with the Buffer.
  const std::span<const std::byte> data = frame.payload.span();
  WeakLink link = link_;
  const uint64_t seq = write.seq();
  const bool durable = write.durable();
  const bool through =
      group_commit_.ShouldWriteThrough(durable, /*alone=*/stats_.ops_in_flight == 1);
  StoreDone finish = [this, payload = std::move(frame.payload), link, seq, durable, through,
                      arrived](Status result) {
    Finish(link, seq, durable, std::move(result), arrived, through);
  };
  if (through) {
    group_commit_.NoteWriteThroughStarted();
  }
  Status st = through ? store_.WriteThrough(write.offset_bytes(), data, std::move(finish))
                      : store_.Write(write.offset_bytes(), data, std::move(finish));
  if (!st.ok()) {
    asio::post(io_, [this, link, seq, st, arrived, through] {
      Finish(link, seq, false, st, arrived, through);
    });
  }
}

void ReplicaApplier::ApplyZero(const transport::Frame& frame) {
  pb::Zero zero;
  if (!frame.Parse(zero)) {
    Reject("Zero does not parse");
    return;
  }
  if (!InSequence(zero.seq())) {
    return;
  }
  const uint64_t size = store_.size_bytes();
  if (zero.length_bytes() == 0) {
    // fallocate refuses an empty range (EINVAL), which would come back as a disk error.
    Reject("Zero of 0 bytes at " + std::to_string(zero.offset_bytes()));
    return;
  }
  if (zero.offset_bytes() > size || zero.length_bytes() > size - zero.offset_bytes()) {
    Reject("Zero at " + std::to_string(zero.offset_bytes()) + "+" +
           std::to_string(zero.length_bytes()) + " is past the end of the volume");
    return;
  }
  ++stats_.ops_in_flight;
  const auto arrived = std::chrono::steady_clock::now();
  WeakLink link = link_;
  const uint64_t seq = zero.seq();
  const bool durable = zero.durable();
  StoreDone finish = [this, link, seq, durable, arrived](Status result) {
    Finish(link, seq, durable, std::move(result), arrived);
  };
  Status st;
  if (zero.discard()) {
    st = store_.Discard(zero.offset_bytes(), zero.length_bytes(), std::move(finish));
  } else {
    nbd::ZeroOptions options;
    options.may_punch_hole = zero.may_punch_hole();
    st = store_.ZeroRange(zero.offset_bytes(), zero.length_bytes(), options, std::move(finish));
  }
  if (!st.ok()) {
    asio::post(io_, [this, link, seq, st, arrived] { Finish(link, seq, false, st, arrived); });
  }
}

void ReplicaApplier::ApplyFlush(const transport::Frame& frame, bool resync_done) {
  uint64_t seq = 0;
  uint64_t current_gen = 0;
  if (resync_done) {
    pb::ResyncDone message;
    if (!frame.Parse(message) || message.current_gen() == 0) {
      Reject("ResyncDone does not parse or names no generation");
      return;
    }
    seq = message.seq();
    current_gen = message.current_gen();
  } else {
    pb::Flush message;
    if (!frame.Parse(message)) {
      Reject("Flush does not parse");
      return;
    }
    seq = message.seq();
  }
  if (!InSequence(seq)) {
    return;
  }
  if (!resync_done) {
    // Mostly the primary's clients' FLUSHes; a resync batch's or a clean cycle's flush only
    // makes one guess of the pattern wrong.
    group_commit_.NoteFlush();
  }
  ++stats_.flushes;
  ++stats_.ops_in_flight;
  const auto arrived = std::chrono::steady_clock::now();
  WeakLink link = link_;
  group_commit_.RequestDurable([this, link, seq, current_gen, arrived](Status st) {
    if (st.ok() && current_gen != 0) {
      FinishResync(link, seq, current_gen);
      return;
    }
    stats_.apply_flush.Record(base::MicrosSince(arrived));
    --stats_.ops_in_flight;
    SendAck(link, seq, st);
    idle_event_.Notify();
  });
}

void ReplicaApplier::FinishResync(const WeakLink& link, uint64_t seq, uint64_t current_gen) {
  // Everything the primary sent is durable here: the copies are identical at `current_gen`, so
  // marks this node kept from a time it was primary are moot.
  intent_log_.ClearAll([this, link, seq, current_gen](Status st) {
    if (st.ok()) {
      st = metadata_.Update([current_gen](VolumeMetadata& md) {
        FollowPrimaryGeneration(md, current_gen, DiskState::kUpToDate);
      });
    }
    if (st.ok()) {
      spdlog::info("resync from {} complete: this copy is UpToDate at generation {}",
                   primary_node_id_, GenerationText(current_gen));
    }
    --stats_.ops_in_flight;
    SendAck(link, seq, st);
    idle_event_.Notify();
  });
}

void ReplicaApplier::Finish(const WeakLink& link, uint64_t seq, bool durable, Status status,
                            base::SteadyTime arrived, bool written_through) {
  if (written_through) {
    // Durable by itself; or failed, perhaps with the disk (GroupCommit decides).
    group_commit_.NoteWriteThroughCompleted(status);
  } else if (status.ok()) {
    group_commit_.NoteWriteCompleted(/*may_sync_ahead=*/!durable && stats_.ops_in_flight == 1);
  }
  if (!status.ok() || !durable || written_through) {
    base::RecordSince(arrived, stats_.apply, recent_apply_);
    --stats_.ops_in_flight;
    if (!status.ok()) {
      spdlog::error("applying seq {} failed: {}", seq, status.ToString());
    }
    SendAck(link, seq, status);
    idle_event_.Notify();
    return;
  }
  group_commit_.RequestDurable([this, link, seq, arrived](Status synced) {
    base::RecordSince(arrived, stats_.apply, recent_apply_);
    --stats_.ops_in_flight;
    SendAck(link, seq, synced);
    idle_event_.Notify();
  });
}

void ReplicaApplier::ApplyDigestRequest(const transport::Frame& frame) {
  pb::DigestRequest request;
  if (!frame.Parse(request)) {
    Reject("DigestRequest does not parse");
    return;
  }
  if (!InSequence(request.seq())) {
    return;
  }
  const uint64_t size = store_.size_bytes();
  const uint64_t offset = request.offset_bytes();
  const uint64_t length = request.length_bytes();
  if (length == 0 || length > transport::kMaxDigestRangeBytes || offset > size ||
      length > size - offset) {
    Reject("DigestRequest for " + std::to_string(offset) + "+" + std::to_string(length) +
           " is empty, too long or past the end of the volume");
    return;
  }
  // The primary keeps a few of these in flight; more is a protocol violation, not a reason to
  // grow memory.
  if (digest_reads_in_flight_ >= kMaxDigestReads) {
    Reject("more than " + std::to_string(kMaxDigestReads) + " DigestRequests in flight");
    return;
  }
  WeakLink link = link_;
  const uint64_t seq = request.seq();
  // Its own aligned memory rather than the payload pool: a pool drained by incoming writes must
  // not turn a verify into a failed link.
  std::shared_ptr<std::byte> memory(
      static_cast<std::byte*>(std::aligned_alloc(4096, (length + 4095) / 4096 * 4096)),
      [](std::byte* p) { std::free(p); });
  CHECK(memory != nullptr);
  std::span<std::byte> span(memory.get(), length);
  ++stats_.ops_in_flight;
  ++digest_reads_in_flight_;
  Status st = store_.Read(offset, span, [this, link, seq, memory, span](Status read) {
    --stats_.ops_in_flight;
    --digest_reads_in_flight_;
    SendAck(link, seq, read, read.ok() ? base::Sha256(span) : std::string());
    idle_event_.Notify();
  });
  if (!st.ok()) {
    --stats_.ops_in_flight;
    --digest_reads_in_flight_;
    SendAck(link, seq, st);
  }
}

void ReplicaApplier::SendAck(const WeakLink& link, uint64_t seq, const Status& status,
                             const std::string& digest) {
  auto live = link.lock();
  if (!live || live->closed()) {
    return;
  }
  pb::Ack ack;
  ack.set_seq(seq);
  ack.set_error(status.errno_value());
  if (!digest.empty()) {
    ack.set_digest(digest);
  }
  // The last operation in flight: no other ack will join this one soon.
  if (stats_.ops_in_flight == 0) {
    live->SendAlone(FrameType::kAck, ack);
  } else {
    live->Send(FrameType::kAck, ack);
  }
}

void ReplicaApplier::OnClosed(const Status& why) {
  spdlog::warn("primary {} disconnected: {}", primary_node_id_, why.ToString());
  link_.reset();
}

}  // namespace mirror
