#include "mirror/verifier.h"

#include <spdlog/spdlog.h>

#include "base/sha256.h"

namespace mirror {

using base::Status;

Verifier::Verifier(Volume& volume, WriteIntentLog& intent_log, base::BufferPool& pool,
                   RequestDigest request_digest, uint64_t block_bytes)
    : volume_(volume),
      intent_log_(intent_log),
      pool_(pool),
      request_digest_(std::move(request_digest)),
      block_bytes_(block_bytes) {}

void Verifier::Start(Finished finished) {
  finished_ = std::move(finished);
  progress_ = {};
  progress_.running = true;
  progress_.total_bytes = volume_.size_bytes();
  Pump();
  MaybeFinish();
}

void Verifier::Cancel(const std::string& why) {
  if (progress_.error.empty()) {
    progress_.error = why;
  }
  MaybeFinish();
}

void Verifier::ResumeAfterBuffer() {
  waiting_for_buffer_ = false;
  Pump();
  MaybeFinish();
}

void Verifier::Pump() {
  while (progress_.error.empty() && !waiting_for_buffer_ && in_flight_ < kMaxInFlight &&
         next_offset_ < progress_.total_bytes) {
    const uint64_t offset = next_offset_;
    const uint64_t length = std::min(block_bytes_, progress_.total_bytes - offset);
    next_offset_ += length;
    ++in_flight_;
    volume_.LockRange(offset, length, [this, offset, length](InflightRanges::Ticket ticket) {
      CheckBlock(offset, length, ticket);
    });
  }
}

void Verifier::CheckBlock(uint64_t offset, uint64_t length, InflightRanges::Ticket ticket) {
  if (!progress_.error.empty()) {
    OnBlockDone(ticket, offset, 0, false, progress_.error);
    return;
  }
  auto buffer = pool_.TryAcquire(length);
  if (!buffer) {
    // Client I/O has the memory: come back for this block when a buffer is released.
    volume_.UnlockRange(ticket);
    next_offset_ = std::min(next_offset_, offset);
    --in_flight_;
    waiting_for_buffer_ = true;
    pool_.ResumeOnRelease(shared_from_this(), &Verifier::ResumeAfterBuffer);
    return;
  }
  auto holder = std::make_shared<base::Buffer>(std::move(*buffer));
  Status st = volume_.store().Read(
      offset, holder->span(), [this, holder, ticket, offset, length](Status read) {
        if (!read.ok()) {
          OnBlockDone(ticket, offset, 0, false, "reading the local copy: " + read.ToString());
          return;
        }
        const std::string local = base::Sha256(holder->span());
        request_digest_(offset, length,
                        [this, ticket, offset, length, local](PeerOutcome outcome,
                                                               const std::string& remote) {
                          if (outcome != PeerOutcome::kConfirmed) {
                            OnBlockDone(ticket, offset, 0, false, "the peer went away");
                            return;
                          }
                          OnBlockDone(ticket, offset, length, remote != local, "");
                        });
      });
  if (!st.ok()) {
    OnBlockDone(ticket, offset, 0, false, "reading the local copy: " + st.ToString());
  }
}

void Verifier::OnBlockDone(InflightRanges::Ticket ticket, uint64_t offset, uint64_t length,
                           bool differs, const std::string& error) {
  if (differs) {
    // Marked while the range is still locked: no clean cycle or write can slip in between.
    intent_log_.MarkRange(offset, length);
    RecordDifference(offset, length);
  }
  volume_.UnlockRange(ticket);
  --in_flight_;
  progress_.done_bytes += length;
  if (!error.empty() && progress_.error.empty()) {
    progress_.error = error;
  }
  Pump();
  MaybeFinish();
}

void Verifier::RecordDifference(uint64_t offset, uint64_t length) {
  progress_.differing_bytes += length;
  spdlog::warn("verify: {}+{} differs between the copies; marked for resync", offset, length);
  auto& ranges = progress_.differing;
  for (ByteRange& r : ranges) {
    if (r.offset_bytes + r.length_bytes == offset) {
      r.length_bytes += length;
      return;
    }
  }
  if (ranges.size() < kMaxReportedRanges) {
    ranges.push_back({offset, length});
  }
}

void Verifier::MaybeFinish() {
  if (!progress_.running || in_flight_ > 0 || persisting_) {
    return;
  }
  if (progress_.error.empty() && next_offset_ < progress_.total_bytes) {
    return;  // Waiting for a buffer.
  }
  persisting_ = true;
  std::weak_ptr<Verifier> weak = weak_from_this();
  intent_log_.Persist([weak](Status st) {
    auto self = weak.lock();
    if (!self) {
      return;
    }
    self->persisting_ = false;
    if (!st.ok() && self->progress_.error.empty()) {
      self->progress_.error = "persisting the marks: " + st.ToString();
    }
    self->progress_.running = false;
    self->progress_.finished = true;
    if (self->finished_) {
      auto finished = std::move(self->finished_);
      self->finished_ = nullptr;
      finished(self->progress_);
    }
  });
}

}  // namespace mirror
