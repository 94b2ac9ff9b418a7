#pragma once
// Resync: brings the secondary's copy level with the primary's by copying the regions the
// write-intent log marks (every region, for a full resync), while clients keep writing.
//
// It walks the bitmap in volume order, a block (up to 1 MiB of consecutive marked regions) at a
// time, a few blocks in flight. For each block it takes the volume's range lock, so no client
// write to the range is in flight while the block is read, sent and applied by the peer; client
// writes that come later are mirrored live and, the lock ensures, reach the peer after the block.
// A block that is a hole locally goes as a Zero message (no payload). Once the peer confirms a
// block, its lock is released and its regions are noted as copied (WriteIntentLog::NoteCopied).
// Confirmed blocks are made durable in batches: once kFlushBatchBytes are confirmed (or nothing
// else is issued) one Flush to the peer and one local datasync cover the batch, and then its
// regions are cleared in the bitmap, except those a client write touched since their copy
// (ClearCopied): such a write may not be durable on both yet. They stay marked; being written
// live, they are the same on both once their writes complete, and a later clean cycle clears
// them. So an interrupted resync resumes where it stopped: the regions still marked are those
// left to copy (plus any written meanwhile), and a batch never holds up client writes.
//
// `rate_bytes_per_s` (0: unlimited) bounds the average rate of data blocks from the start of the
// resync (holes sent as Zero move no data and do not count).
//
// When every block is done the caller sends ResyncDone. Owned by shared_ptr (a buffer-pool or
// timer wake-up may outlive the owner's interest). Loop thread only. Cancel() stops issuing
// blocks; blocks in flight finish through the link's callbacks (kDegraded once the link is
// gone) and stay marked.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "base/asio.h"
#include "base/buffer_pool.h"
#include "mirror/peer_link.h"
#include "mirror/volume.h"
#include "mirror/write_intent_log.h"

namespace mirror {

struct ResyncProgress {
  uint64_t total_bytes = 0;
  uint64_t done_bytes = 0;
  bool running = false;
  double rate_bytes_per_s = 0;  // Average from the start to now (or to the end).
  double eta_s = 0;             // At that rate; 0 when unknown or done.
};

class Resync : public std::enable_shared_from_this<Resync> {
 public:
  // Blocks are acknowledged once applied; SendFlush makes everything applied before it durable.
  using SendWrite = std::function<void(uint64_t, std::span<const std::byte>, PeerDone)>;
  using SendZero = std::function<void(uint64_t, uint64_t, PeerDone)>;
  using SendFlush = std::function<void(PeerDone)>;
  // Called once: true when every block was confirmed, false when cancelled or the link failed.
  using Finished = std::function<void(bool)>;

  static constexpr uint64_t kBlockBytes = 1 << 20;
  // Blocks issued and not yet confirmed (waiting for their lock, read, sent, being applied):
  // bounds the buffers and range locks the resync holds.
  static constexpr int kMaxCopying = 32;
  // Confirmed bytes per flush. Nothing is held while a batch waits for its flush, so batches
  // can be large. Copying pauses while a whole batch waits behind a running flush, so an
  // interrupted resync copies at most two batches (and the blocks in flight) again. On a host
  // that writes back its cache at each flush, a flush during the copy costs about a fifth of
  // the rate whatever the batch size (bench/RESULTS.md, "Recovery, third pass").
  static constexpr uint64_t kFlushBatchBytes = 256 << 20;

  // `flush_batch_bytes`: kFlushBatchBytes but in tests.
  Resync(asio::io_context& io, Volume& volume, WriteIntentLog& intent_log, base::BufferPool& pool,
         SendWrite send_write, SendZero send_zero, SendFlush send_flush, uint64_t rate_bytes_per_s,
         uint64_t flush_batch_bytes = kFlushBatchBytes);

  void Start(Finished finished);
  void Cancel();
  // The owner is going away (a crash in the simulation, the end of the daemon): stop issuing
  // blocks and never call `finished`, dropping it and whatever it holds. Blocks in flight
  // finish through their callbacks, if those ever run, without reaching the owner.
  void Abandon();
  ResyncProgress progress() const;

 private:
  void Pump();
  // After waiting for a buffer or for the rate limit.
  void Resume();
  bool WaitForRate(uint64_t length_bytes);
  void CopyBlock(uint64_t offset_bytes, uint64_t length_bytes, InflightRanges::Ticket ticket);
  void OnBlockSent(InflightRanges::Ticket ticket, uint64_t offset_bytes, uint64_t length_bytes,
                   PeerOutcome outcome);
  void MaybeFlush();
  void OnBatchDurable(bool ok);
  // A block that will not be confirmed: releases its lock; the resync stops.
  void OnBlockFailed(InflightRanges::Ticket ticket);
  void MaybeFinish();

  Volume& volume_;
  WriteIntentLog& intent_log_;
  base::BufferPool& pool_;
  SendWrite send_write_;
  SendZero send_zero_;
  SendFlush send_flush_;
  const uint64_t rate_bytes_per_s_;
  const uint64_t flush_batch_bytes_;
  Finished finished_;
  ResyncProgress progress_;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point finished_at_;
  uint64_t issued_bytes_ = 0;  // For the rate limit.
  uint64_t cursor_bytes_ = 0;
  int copying_ = 0;  // Blocks issued and not yet confirmed (see kMaxCopying).
  // Confirmed and not yet durable on both (a block that continues the last one extends it).
  std::vector<ByteRange> awaiting_flush_;
  uint64_t awaiting_bytes_ = 0;
  std::vector<ByteRange> flushing_;
  int flush_parts_left_ = 0;
  bool flush_ok_ = true;
  bool failed_ = false;
  bool cancelled_ = false;
  bool waiting_ = false;  // For a buffer or for the rate limit.
  asio::steady_timer rate_timer_;
};

}  // namespace mirror
