#include "mirror/resync.h"

#include <spdlog/spdlog.h>

namespace mirror {

using base::Status;

FullResync::FullResync(Volume& volume, base::BufferPool& pool, SendWrite send_write,
                       SendZero send_zero)
    : volume_(volume),
      pool_(pool),
      send_write_(std::move(send_write)),
      send_zero_(std::move(send_zero)) {}

void FullResync::Start(Finished finished) {
  finished_ = std::move(finished);
  progress_ = {volume_.size_bytes(), 0, true};
  next_offset_ = 0;
  Pump();
  MaybeFinish();
}

void FullResync::Cancel() {
  cancelled_ = true;
  MaybeFinish();
}

void FullResync::Pump() {
  while (!cancelled_ && !failed_ && !waiting_for_buffer_ && in_flight_ < kMaxInFlight &&
         next_offset_ < progress_.total_bytes) {
    const uint64_t offset = next_offset_;
    const uint64_t length = std::min(kBlockBytes, progress_.total_bytes - offset);
    next_offset_ += length;
    ++in_flight_;
    volume_.LockRange(offset, length, [this, offset, length](InflightRanges::Ticket ticket) {
      if (cancelled_ || failed_) {
        OnBlockDone(ticket, 0, PeerOutcome::kDegraded);
        return;
      }
      auto extents = volume_.store().Allocation(offset, length);
      if (extents.ok() && extents.value().size() == 1 && extents.value()[0].hole &&
          extents.value()[0].length_bytes == length) {
        send_zero_(offset, length, [this, ticket, length](PeerOutcome outcome) {
          OnBlockDone(ticket, length, outcome);
        });
        return;
      }
      auto buffer = pool_.TryAcquire(length);
      if (!buffer) {
        // Budget spent by client I/O: retry this block shortly rather than grow memory.
        spdlog::debug("resync: no buffer for {} bytes; will retry", length);
        volume_.UnlockRange(ticket);
        next_offset_ = std::min(next_offset_, offset);
        --in_flight_;
        waiting_for_buffer_ = true;
        std::weak_ptr<FullResync> weak = weak_from_this();
        pool_.NotifyOnRelease([weak] {
          if (auto self = weak.lock()) {
            self->waiting_for_buffer_ = false;
            self->Pump();
            self->MaybeFinish();
          }
        });
        return;
      }
      auto holder = std::make_shared<base::Buffer>(std::move(*buffer));
      Status st = volume_.store().Read(
          offset, holder->span(), [this, holder, ticket, offset, length](Status read) {
            if (!read.ok()) {
              spdlog::error("resync: reading block at {} failed: {}", offset, read.ToString());
              OnBlockDone(ticket, 0, PeerOutcome::kDegraded);
              return;
            }
            send_write_(offset, holder->span(), [this, holder, ticket, length](PeerOutcome o) {
              OnBlockDone(ticket, length, o);
            });
          });
      if (!st.ok()) {
        OnBlockDone(ticket, 0, PeerOutcome::kDegraded);
      }
    });
  }
}

void FullResync::OnBlockDone(InflightRanges::Ticket ticket, uint64_t length_bytes,
                             PeerOutcome outcome) {
  volume_.UnlockRange(ticket);
  --in_flight_;
  if (outcome == PeerOutcome::kConfirmed && length_bytes > 0) {
    progress_.done_bytes += length_bytes;
  } else {
    failed_ = true;
  }
  Pump();
  MaybeFinish();
}

void FullResync::MaybeFinish() {
  if (!progress_.running || in_flight_ > 0) {
    return;
  }
  const bool complete = progress_.done_bytes == progress_.total_bytes;
  if (!complete && !failed_ && !cancelled_) {
    return;
  }
  progress_.running = false;
  if (finished_) {
    auto finished = std::move(finished_);
    finished_ = nullptr;
    finished(complete && !failed_ && !cancelled_);
  }
}

}  // namespace mirror
