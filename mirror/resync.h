#pragma once
// Resync: brings the secondary's copy level with the primary's by copying the regions the
// write-intent log marks (every region, for a full resync), while clients keep writing.
//
// It walks the bitmap in volume order, a block (up to 1 MiB of consecutive marked regions) at a
// time, a few blocks in flight. For each block it takes the volume's range lock, so no client
// write to the range is in flight while the block is read, sent and confirmed; client writes that
// come later are mirrored live and, the lock ensures, reach the peer after the block. A block
// that is a hole locally goes as a Zero message (no payload). Confirmed blocks are made durable
// in batches: once kFlushBatchBytes are confirmed (or nothing else is on the wire) one Flush to
// the peer and one local datasync cover the batch, and only then are its regions cleared in the
// bitmap and its range locks released. So an interrupted resync resumes where it stopped: the
// regions still marked are exactly those left to copy (plus any written meanwhile).
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
  static constexpr int kMaxInFlight = 64;  // Blocks holding a range lock.
  static constexpr int kMaxCopying = 8;    // Of those, issued and not yet confirmed.
  static constexpr uint64_t kFlushBatchBytes = 32 << 20;

  Resync(asio::io_context& io, Volume& volume, WriteIntentLog& intent_log,
         base::BufferPool& pool, SendWrite send_write, SendZero send_zero, SendFlush send_flush,
         uint64_t rate_bytes_per_s);

  void Start(Finished finished);
  void Cancel();
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
  void OnBlockDone(InflightRanges::Ticket ticket, uint64_t length_bytes, bool ok);
  void MaybeFinish();

  asio::io_context& io_;
  Volume& volume_;
  WriteIntentLog& intent_log_;
  base::BufferPool& pool_;
  SendWrite send_write_;
  SendZero send_zero_;
  SendFlush send_flush_;
  const uint64_t rate_bytes_per_s_;
  Finished finished_;
  ResyncProgress progress_;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point finished_at_;
  uint64_t issued_bytes_ = 0;  // For the rate limit.
  uint64_t cursor_bytes_ = 0;
  int in_flight_ = 0;  // Blocks holding their range lock.
  // Of those, issued and not yet confirmed (some may still wait for their range lock): bounds
  // the buffers in use.
  int unconfirmed_ = 0;
  // Of those, holding their lock and being read or sent. A batch is flushed when none is left,
  // never waiting on a block that waits for a lock: a client write queued between two blocks
  // may itself wait for a block of the batch.
  int copying_ = 0;
  struct Confirmed {
    InflightRanges::Ticket ticket;
    uint64_t offset_bytes;
    uint64_t length_bytes;
  };
  std::vector<Confirmed> awaiting_flush_;
  uint64_t awaiting_bytes_ = 0;
  std::vector<Confirmed> flushing_;
  int flush_parts_left_ = 0;
  bool flush_ok_ = true;
  bool failed_ = false;
  bool cancelled_ = false;
  bool waiting_ = false;  // For a buffer or for the rate limit.
  asio::steady_timer rate_timer_;
};

}  // namespace mirror
