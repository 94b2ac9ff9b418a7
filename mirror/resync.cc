#include "mirror/resync.h"

#include <spdlog/spdlog.h>

namespace mirror {

using base::Status;

Resync::Resync(asio::io_context& io, Volume& volume, WriteIntentLog& intent_log,
               base::BufferPool& pool, SendWrite send_write, SendZero send_zero,
               SendFlush send_flush, uint64_t rate_bytes_per_s, uint64_t flush_batch_bytes)
    : volume_(volume),
      intent_log_(intent_log),
      pool_(pool),
      send_write_(std::move(send_write)),
      send_zero_(std::move(send_zero)),
      send_flush_(std::move(send_flush)),
      rate_bytes_per_s_(rate_bytes_per_s),
      flush_batch_bytes_(flush_batch_bytes),
      rate_timer_(io) {}

void Resync::Start(Finished finished) {
  finished_ = std::move(finished);
  progress_ = {intent_log_.marked_bytes(), 0, true};
  started_ = std::chrono::steady_clock::now();
  cursor_bytes_ = 0;
  Pump();
  MaybeFinish();
}

void Resync::Cancel() {
  cancelled_ = true;
  rate_timer_.cancel();
  MaybeFlush();
  MaybeFinish();
}

void Resync::Abandon() {
  cancelled_ = true;
  rate_timer_.cancel();
  finished_ = nullptr;
}

ResyncProgress Resync::progress() const {
  ResyncProgress p = progress_;
  const auto end = progress_.running ? std::chrono::steady_clock::now() : finished_at_;
  const double elapsed_s = std::chrono::duration<double>(end - started_).count();
  if (elapsed_s > 0 && p.done_bytes > 0) {
    p.rate_bytes_per_s = static_cast<double>(p.done_bytes) / elapsed_s;
    if (p.running && p.total_bytes > p.done_bytes) {
      p.eta_s = static_cast<double>(p.total_bytes - p.done_bytes) / p.rate_bytes_per_s;
    }
  }
  return p;
}

bool Resync::WaitForRate(uint64_t length_bytes) {
  if (rate_bytes_per_s_ == 0) {
    return false;
  }
  const auto now = std::chrono::steady_clock::now();
  const double allowed =
      std::chrono::duration<double>(now - started_).count() * static_cast<double>(rate_bytes_per_s_);
  // The first block always goes, so a rate below one block per second still makes progress.
  if (issued_bytes_ == 0 || static_cast<double>(issued_bytes_ + length_bytes) <= allowed) {
    return false;
  }
  const double wait_s =
      (static_cast<double>(issued_bytes_ + length_bytes) - allowed) / rate_bytes_per_s_;
  waiting_ = true;
  rate_timer_.expires_after(std::chrono::microseconds(static_cast<int64_t>(wait_s * 1e6) + 1));
  std::weak_ptr<Resync> weak = weak_from_this();
  rate_timer_.async_wait([weak](const boost::system::error_code&) {
    if (auto self = weak.lock()) {
      self->Resume();
    }
  });
  return true;
}

void Resync::Resume() {
  waiting_ = false;
  Pump();
  MaybeFinish();
}

void Resync::Pump() {
  while (!cancelled_ && !failed_ && !waiting_ && copying_ < kMaxCopying) {
    if (!flushing_.empty() && awaiting_bytes_ >= flush_batch_bytes_) {
      return;  // A whole batch waits behind the running flush: OnBatchDurable resumes.
    }
    auto block = intent_log_.NextMarked(cursor_bytes_, kBlockBytes);
    if (!block) {
      return;
    }
    if (WaitForRate(block->length_bytes)) {
      return;
    }
    const uint64_t offset = block->offset_bytes;
    const uint64_t length = block->length_bytes;
    cursor_bytes_ = offset + length;
    issued_bytes_ += length;
    ++copying_;
    volume_.LockRange(offset, length, [this, offset, length](InflightRanges::Ticket ticket) {
      CopyBlock(offset, length, ticket);
    });
  }
}

void Resync::CopyBlock(uint64_t offset, uint64_t length, InflightRanges::Ticket ticket) {
  if (cancelled_ || failed_) {
    OnBlockFailed(ticket);
    return;
  }
  auto extents = volume_.store().Allocation(offset, length);
  if (extents.ok() && extents.value().size() == 1 && extents.value()[0].hole &&
      extents.value()[0].length_bytes == length) {
    // A hole moves no data: it does not count against the rate limit.
    issued_bytes_ -= length;
    send_zero_(offset, length, [this, ticket, offset, length](PeerOutcome outcome) {
      OnBlockSent(ticket, offset, length, outcome);
    });
    return;
  }
  auto buffer = pool_.TryAcquire(length);
  if (!buffer) {
    // Budget spent by client I/O: retry this block when a buffer comes back rather than grow
    // memory. Its regions are still marked, so rewinding the cursor finds it again.
    spdlog::debug("resync: no buffer for {} bytes; will retry", length);
    volume_.UnlockRange(ticket);
    cursor_bytes_ = std::min(cursor_bytes_, offset);
    issued_bytes_ -= length;
    --copying_;
    waiting_ = true;
    pool_.ResumeOnRelease(shared_from_this(), &Resync::Resume);
    MaybeFlush();  // Nothing may be issued until then: make what is confirmed durable.
    return;
  }
  auto holder = std::make_shared<base::Buffer>(std::move(*buffer));
  Status st = volume_.store().Read(
      offset, holder->span(), [this, holder, ticket, offset, length](Status read) {
        if (!read.ok()) {
          spdlog::error("resync: reading block at {} failed: {}", offset, read.ToString());
          OnBlockFailed(ticket);
          return;
        }
        send_write_(offset, holder->span(),
                    [this, holder, ticket, offset, length](PeerOutcome outcome) {
                      OnBlockSent(ticket, offset, length, outcome);
                    });
      });
  if (!st.ok()) {
    OnBlockFailed(ticket);
  }
}

void Resync::OnBlockSent(InflightRanges::Ticket ticket, uint64_t offset, uint64_t length,
                         PeerOutcome outcome) {
  if (outcome != PeerOutcome::kConfirmed) {
    OnBlockFailed(ticket);
    return;
  }
  // The peer applied the block, and no client write to the range was in flight since it was
  // read: the copies are identical there now (not yet durable). Later writes are mirrored live.
  intent_log_.NoteCopied(offset, length);
  volume_.UnlockRange(ticket);
  --copying_;
  if (!awaiting_flush_.empty() &&
      awaiting_flush_.back().offset_bytes + awaiting_flush_.back().length_bytes == offset) {
    awaiting_flush_.back().length_bytes += length;
  } else {
    awaiting_flush_.push_back({offset, length});
  }
  awaiting_bytes_ += length;
  // Progress counts copies as they are confirmed; after an interruption the regions of an
  // unflushed batch are still marked and are copied again.
  progress_.done_bytes += length;
  progress_.total_bytes = std::max(progress_.total_bytes, progress_.done_bytes);
  Pump();  // A copying slot is free.
  MaybeFlush();
  MaybeFinish();
}

void Resync::OnBlockFailed(InflightRanges::Ticket ticket) {
  volume_.UnlockRange(ticket);
  --copying_;
  failed_ = true;
  MaybeFlush();
  MaybeFinish();
}

void Resync::MaybeFlush() {
  if (cancelled_ || failed_) {
    // Never flush for a cancelled or failed resync: the flush would go on whatever link is up
    // by then, and a later link's Flush says nothing about what a lost one carried (the peer
    // may have crashed with those blocks unsynced). They stay marked.
    awaiting_flush_.clear();
    awaiting_bytes_ = 0;
    return;
  }
  if (!flushing_.empty() || awaiting_flush_.empty()) {
    return;
  }
  // Batch while blocks are being copied; flush once the batch is big or nothing else is
  // issued (the end, or waiting for the rate limit or a buffer).
  if (awaiting_bytes_ < flush_batch_bytes_ && copying_ > 0) {
    return;
  }
  flushing_ = std::move(awaiting_flush_);
  awaiting_flush_.clear();
  awaiting_bytes_ = 0;
  flush_parts_left_ = 2;
  flush_ok_ = true;
  // The peer's Flush covers every block it acknowledged before it; the local datasync covers
  // the data we read (in mode flush the client write that put it there may not be synced yet).
  send_flush_([this](PeerOutcome outcome) {
    flush_ok_ = flush_ok_ && outcome == PeerOutcome::kConfirmed;
    if (--flush_parts_left_ == 0) {
      OnBatchDurable(flush_ok_);
    }
  });
  volume_.group_commit().RequestDurable([this](Status synced) {
    flush_ok_ = flush_ok_ && synced.ok();
    if (--flush_parts_left_ == 0) {
      OnBatchDurable(flush_ok_);
    }
  });
}

void Resync::OnBatchDurable(bool ok) {
  auto batch = std::move(flushing_);
  flushing_.clear();
  if (ok) {
    // Confirmed on the link that carried the blocks: durable on both, whatever happened since.
    for (const ByteRange& range : batch) {
      intent_log_.ClearCopied(range.offset_bytes, range.length_bytes);
    }
  } else {
    failed_ = true;
  }
  Pump();
  MaybeFlush();
  MaybeFinish();
}

void Resync::MaybeFinish() {
  if (!progress_.running || copying_ > 0 || !flushing_.empty() || !awaiting_flush_.empty()) {
    return;
  }
  const bool more = intent_log_.NextMarked(cursor_bytes_, kBlockBytes).has_value();
  if (more && !failed_ && !cancelled_) {
    return;  // Waiting for a buffer or the rate limit.
  }
  progress_.running = false;
  finished_at_ = std::chrono::steady_clock::now();
  rate_timer_.cancel();
  if (finished_) {
    auto finished = std::move(finished_);
    finished_ = nullptr;
    finished(!failed_ && !cancelled_);
  }
}

}  // namespace mirror
