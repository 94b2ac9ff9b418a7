#include "mirror/volume.h"

#include <algorithm>
#include <string>

#include "base/elapsed.h"

namespace mirror {

using base::Status;

using base::MicrosSince;
using Clock = std::chrono::steady_clock;

namespace {

// The error a request gets when the peer's answer forbids acknowledging it; OK otherwise.
Status PeerRefusal(PeerOutcome outcome) {
  switch (outcome) {
    case PeerOutcome::kAborted:
      return Status::Error(ESHUTDOWN, "shutting down without the peer (on-peer-loss block)");
    case PeerOutcome::kUnrecorded:
      return Status::Error(EIO,
                           "the peer is away and that could not be recorded (metadata write "
                           "failed)");
    case PeerOutcome::kConfirmed:
    case PeerOutcome::kDegraded:
      break;
  }
  return Status::Ok();
}

}  // namespace

// One client write between its range grant and its reply.
struct Volume::PendingWrite {
  InflightRanges::Ticket ticket = 0;
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  bool marked = false;       // The intent log holds this write's regions (Unmark when done).
  bool local_failed = false;  // The local write itself failed (not the mark before it).
  bool durable = false;      // Mode sync or FUA: durable on both sides before the reply.
  bool may_write_through = false;  // A WRITE (zeroing and trimming have no write-through).
  bool write_through = false;      // Submitted as a write-through.
  bool local_done = false;   // Written (and, if durable, synced) locally, or failed.
  bool peer_done = false;    // Confirmed or degraded by the link (or there is no peer).
  PeerOutcome peer_outcome =
      PeerOutcome::kConfirmed;  // The link's answer (kConfirmed without one).
  // FAST_ZERO: a refusal (ENOTSUP) is an answer, not a disk error, and must change neither
  // copy, so the peer is asked only once the local zeroing succeeded.
  bool fast_zero = false;
  Status local_status;
  nbd::DoneCallback done;
  StoreCall store;  // Starts the local operation.
  PeerCall peer;    // Starts the replication; unused without a peer.
  base::SteadyTime arrived;     // Modify() was called.
  base::SteadyTime fanned_out;  // Handed to the store and the link.
};

Volume::Volume(asio::io_context& io, LocalStore& store, PeerLink* peer, Mode mode,
               WriteIntentLog* intent_log)
    : io_(io),
      store_(store),
      peer_(peer),
      mode_(mode),
      intent_log_(intent_log),
      group_commit_(io, store) {}

Status Volume::CheckRange(uint64_t offset_bytes, uint64_t length_bytes,
                          int past_end_errno) const {
  const uint64_t size = store_.size_bytes();
  if (offset_bytes > size || length_bytes > size - offset_bytes) {
    return Status::Error(past_end_errno, "range " + std::to_string(offset_bytes) + "+" +
                                             std::to_string(length_bytes) +
                                             " is past the end of the volume");
  }
  return Status::Ok();
}

Status Volume::Read(uint64_t offset_bytes, std::span<std::byte> out, nbd::DoneCallback done) {
  if (Status st = CheckRange(offset_bytes, out.size(), EINVAL); !st.ok()) {
    return st;
  }
  ++stats_.reads;
  stats_.read_bytes += out.size();
  return store_.Read(offset_bytes, out, [this, done = std::move(done)](Status st) {
    stats_.errors += st.ok() ? 0 : 1;
    done(std::move(st));
  });
}

Status Volume::Write(uint64_t offset_bytes, std::span<const std::byte> data, bool fua,
                     nbd::DoneCallback done) {
  ++stats_.writes;
  stats_.written_bytes += data.size();
  return Modify(
      offset_bytes, data.size(), fua,
      [this, offset_bytes, data](bool write_through, StoreDone store_done) {
        return write_through ? store_.WriteThrough(offset_bytes, data, std::move(store_done))
                             : store_.Write(offset_bytes, data, std::move(store_done));
      },
      [this, offset_bytes, data](bool durable, PeerDone peer_done) {
        peer_->ReplicateWrite(offset_bytes, data, durable, std::move(peer_done));
      },
      std::move(done), /*fast_zero=*/false, /*may_write_through=*/true);
}

Status Volume::Trim(uint64_t offset_bytes, uint64_t length_bytes, bool fua,
                    nbd::DoneCallback done) {
  ++stats_.trims;
  return Modify(
      offset_bytes, length_bytes, fua,
      [this, offset_bytes, length_bytes](bool, StoreDone store_done) {
        return store_.Discard(offset_bytes, length_bytes, std::move(store_done));
      },
      [this, offset_bytes, length_bytes](bool durable, PeerDone peer_done) {
        peer_->ReplicateZero(offset_bytes, length_bytes, {}, /*discard=*/true, durable,
                             std::move(peer_done));
      },
      std::move(done));
}

Status Volume::WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes,
                           nbd::ZeroOptions options, bool fua, nbd::DoneCallback done) {
  ++stats_.zeroes;
  return Modify(
      offset_bytes, length_bytes, fua,
      [this, offset_bytes, length_bytes, options](bool, StoreDone store_done) {
        return store_.ZeroRange(offset_bytes, length_bytes, options, std::move(store_done));
      },
      [this, offset_bytes, length_bytes, options](bool durable, PeerDone peer_done) {
        // Asked only after the local zeroing was fast (see fast_zero): the peer must follow,
        // fast or not, and never refuses.
        nbd::ZeroOptions peer_options = options;
        peer_options.fast_only = false;
        peer_->ReplicateZero(offset_bytes, length_bytes, peer_options, /*discard=*/false,
                             durable, std::move(peer_done));
      },
      std::move(done), /*fast_zero=*/options.fast_only);
}

Status Volume::Modify(uint64_t offset_bytes, uint64_t length_bytes, bool fua, StoreCall store,
                      PeerCall peer, nbd::DoneCallback done, bool fast_zero,
                      bool may_write_through) {
  if (Status st = CheckRange(offset_bytes, length_bytes, ENOSPC); !st.ok()) {
    return st;
  }
  if (length_bytes == 0) {
    // Nothing to write, here or on the peer (which refuses an empty operation as malformed).
    asio::post(io_, [done = std::move(done)]() mutable { done(Status::Ok()); });
    return Status::Ok();
  }
  auto write = std::make_shared<PendingWrite>();
  write->arrived = Clock::now();
  write->offset_bytes = offset_bytes;
  write->length_bytes = length_bytes;
  write->durable = fua || mode_ == Mode::kSync;
  write->done = std::move(done);
  write->store = std::move(store);
  write->peer = std::move(peer);
  write->fast_zero = fast_zero;
  write->may_write_through = may_write_through;
  ++stats_.writes_in_flight;
  stats_.bytes_in_flight += length_bytes;
  // The grant may run later, from another write's completion; the write owns what it needs.
  // The lock covers whatever the store may rewrite around the range (Footprint).
  const ByteRange footprint = store_.Footprint(offset_bytes, length_bytes);
  const bool granted = ranges_.Acquire(
      footprint.offset_bytes, footprint.length_bytes, [this, write] { MarkIntent(write); },
      write->ticket);
  if (!granted) {
    ++stats_.range_waits;
    return Status::Ok();
  }
  MarkIntent(write);
  return Status::Ok();
}

void Volume::MarkIntent(const std::shared_ptr<PendingWrite>& write) {
  if (intent_log_ == nullptr) {
    FanOut(write);
    return;
  }
  write->marked = true;
  const bool ready =
      intent_log_->Mark(write->offset_bytes, write->length_bytes, [this, write](Status st) {
        if (st.ok()) {
          FanOut(write);
          return;
        }
        // Nothing was written anywhere: the write fails whole.
        ++stats_.errors;
        write->local_status = std::move(st);
        write->local_done = true;
        write->peer_done = true;
        MaybeFinish(write);
      });
  if (ready) {
    FanOut(write);
  }
}

void Volume::FanOut(const std::shared_ptr<PendingWrite>& write) {
  write->fanned_out = Clock::now();
  stats_.modify_queue_us += base::MicrosBetween(write->arrived, write->fanned_out);
  write->write_through = write->may_write_through &&
                         group_commit_.ShouldWriteThrough(write->durable,
                                                          /*alone=*/stats_.writes_in_flight == 1);
  if (write->write_through) {
    group_commit_.NoteWriteThroughStarted();
  }
  Status st = write->store(write->write_through, [this, write](Status result) {
    OnLocalWritten(write, std::move(result));
  });
  if (!st.ok()) {
    // The submit call already returned OK to the connection: report through the callback.
    asio::post(io_, [this, write, st] { OnLocalWritten(write, st); });
  }
  if (peer_ == nullptr) {
    write->peer_done = true;
    return;
  }
  if (!write->fast_zero) {
    StartPeer(write);
  }
}

void Volume::StartPeer(const std::shared_ptr<PendingWrite>& write) {
  // Written through here because a FLUSH is expected next: durable on the peer too, so that
  // FLUSH need not ask it.
  const bool durable = write->durable || write->write_through;
  write->peer(durable, [this, write, durable](PeerOutcome outcome) {
    if (outcome == PeerOutcome::kConfirmed) {
      stats_.modify_peer.Record(MicrosSince(write->fanned_out));
      peer_volatile_writes_ += durable ? 0 : 1;
    }
    write->peer_done = true;
    write->peer_outcome = outcome;
    MaybeFinish(write);
  });
}

void Volume::OnLocalWritten(const std::shared_ptr<PendingWrite>& write, Status status) {
  if (write->fast_zero) {
    if (status.errno_value() == ENOTSUP) {
      // Refused: nothing changed on either copy (the peer was never asked), and no disk failed.
      write->peer_done = true;
      write->local_status = std::move(status);
      write->local_done = true;
      MaybeFinish(write);
      return;
    }
    if (peer_ != nullptr) {
      if (status.ok()) {
        StartPeer(write);
      } else {
        // Never asked; the failure below resyncs the range all the same (it may be half zeroed).
        write->peer_done = true;
      }
    }
  }
  if (write->write_through) {
    // Durable by itself; or failed, perhaps with the disk (GroupCommit decides).
    group_commit_.NoteWriteThroughCompleted(status);
  } else if (!status.ok()) {
    // Part of a failed write may sit in the page cache all the same: the next durable request
    // must not skip its datasync as if nothing had been written.
    group_commit_.NoteWriteCompleted();
  }
  if (!status.ok()) {
    write->local_failed = true;
    ++stats_.errors;
    write->local_status = std::move(status);
    write->local_done = true;
    stats_.modify_local_us += MicrosSince(write->fanned_out);
    MaybeFinish(write);
    return;
  }
  if (!write->write_through) {
    group_commit_.NoteWriteCompleted(
        /*may_sync_ahead=*/!write->durable && stats_.writes_in_flight == 1);
  }
  if (!write->durable || write->write_through) {
    write->local_done = true;
    stats_.modify_local_us += MicrosSince(write->fanned_out);
    MaybeFinish(write);
    return;
  }
  group_commit_.RequestDurable([this, write](Status synced) {
    write->local_status = std::move(synced);
    write->local_done = true;
    stats_.modify_local_us += MicrosSince(write->fanned_out);
    MaybeFinish(write);
  });
}

void Volume::MaybeFinish(const std::shared_ptr<PendingWrite>& write) {
  if (!write->local_done || !write->peer_done) {
    return;
  }
  if (write->marked) {
    if (write->local_failed) {
      // The peer may have applied what failed here: keep the regions marked until a resync has
      // copied them, whatever clean cycles say.
      intent_log_->Pin(write->offset_bytes, write->length_bytes);
    }
    intent_log_->Unmark(write->offset_bytes, write->length_bytes);
  }
  if (write->local_failed && peer_ != nullptr) {
    peer_->OnLocalWriteFailed();
  }
  // Releasing may start a waiting write or resync block at once.
  ranges_.Release(write->ticket);
  --stats_.writes_in_flight;
  stats_.bytes_in_flight -= write->length_bytes;
  stats_.degraded_writes += write->peer_outcome == PeerOutcome::kDegraded ? 1 : 0;
  base::RecordSince(write->arrived, stats_.modify, recent_modify_);
  auto done = std::move(write->done);
  if (Status refused = PeerRefusal(write->peer_outcome);
      !refused.ok() && write->local_status.ok()) {
    done(std::move(refused));
    return;
  }
  done(std::move(write->local_status));
}

Status Volume::Flush(nbd::DoneCallback done) {
  ++stats_.flushes;
  const base::SteadyTime arrived = Clock::now();
  struct FlushState {
    bool local_done = false;
    bool peer_done = false;
    PeerOutcome peer_outcome = PeerOutcome::kConfirmed;
    Status local_status;
    nbd::DoneCallback done;
  };
  // Every write replied to before this FLUSH was confirmed by the peer (or recorded as degraded,
  // its regions marked for resync). If each confirmation said durable (mode sync, FUA, written
  // through), or a confirmed peer Flush has covered those that did not, nothing is left for the
  // peer to make durable, so the FLUSH does not wait a round trip for it. A Flush covers what
  // the peer confirmed before it arrived there: every confirmation counted when it is sent.
  const bool ask_peer = peer_ != nullptr && peer_volatile_writes_ != peer_volatile_flushed_;
  const uint64_t volatile_writes = peer_volatile_writes_;
  stats_.flushes_without_peer += peer_ != nullptr && !ask_peer ? 1 : 0;
  group_commit_.NoteFlush();
  if (!ask_peer && group_commit_.AllDurable()) {
    // Nothing to wait for anywhere (the write before it was written through, on both hosts):
    // answered at once, as BlockDevice allows a Flush.
    base::RecordSince(arrived, stats_.flush, recent_flush_);
    done(Status::Ok());
    return Status::Ok();
  }
  auto state = std::make_shared<FlushState>();
  state->done = std::move(done);
  state->peer_done = !ask_peer;
  auto finish = [this, state, arrived] {
    if (!state->local_done || !state->peer_done) {
      return;
    }
    base::RecordSince(arrived, stats_.flush, recent_flush_);
    auto cb = std::move(state->done);
    if (Status refused = PeerRefusal(state->peer_outcome);
        !refused.ok() && state->local_status.ok()) {
      cb(std::move(refused));
      return;
    }
    cb(std::move(state->local_status));
  };
  group_commit_.RequestDurable([this, state, finish, arrived](Status st) {
    stats_.flush_local_us += MicrosSince(arrived);
    state->local_status = std::move(st);
    state->local_done = true;
    finish();
  });
  if (ask_peer) {
    peer_->ReplicateFlush([this, state, finish, arrived, volatile_writes](PeerOutcome outcome) {
      if (outcome == PeerOutcome::kConfirmed) {
        stats_.flush_peer.Record(MicrosSince(arrived));
        peer_volatile_flushed_ = std::max(peer_volatile_flushed_, volatile_writes);
      }
      state->peer_done = true;
      state->peer_outcome = outcome;
      finish();
    });
  }
  return Status::Ok();
}

Status Volume::Cache(uint64_t offset_bytes, uint64_t length_bytes, nbd::DoneCallback done) {
  if (Status st = CheckRange(offset_bytes, length_bytes, EINVAL); !st.ok()) {
    return st;
  }
  return store_.Prefetch(offset_bytes, length_bytes, std::move(done));
}

Status Volume::BlockStatus(uint64_t offset_bytes, uint64_t length_bytes,
                           nbd::ExtentsCallback done) {
  if (Status st = CheckRange(offset_bytes, length_bytes, EINVAL); !st.ok()) {
    return st;
  }
  auto extents = store_.Allocation(offset_bytes, length_bytes);
  asio::post(io_, [done = std::move(done), extents = std::move(extents)]() mutable {
    done(std::move(extents));
  });
  return Status::Ok();
}

void Volume::LockRange(uint64_t offset_bytes, uint64_t length_bytes,
                       std::function<void(InflightRanges::Ticket)> granted) {
  auto ticket = std::make_shared<InflightRanges::Ticket>(0);
  if (ranges_.Acquire(
          offset_bytes, length_bytes, [ticket, granted] { granted(*ticket); }, *ticket)) {
    granted(*ticket);
  }
}

void Volume::UnlockRange(InflightRanges::Ticket ticket) { ranges_.Release(ticket); }

}  // namespace mirror
