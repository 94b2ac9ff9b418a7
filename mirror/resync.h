#pragma once
// Resync: brings the secondary's copy level with the primary's by copying the regions the
// write-intent log marks (every region, for a full resync), while clients keep writing.
//
// It walks the bitmap in volume order, a block (up to 1 MiB of consecutive marked regions) at a
// time, a few blocks in flight. For each block it takes the volume's range lock, so no client
// write to the range is in flight while the block is read, sent and confirmed; client writes that
// come later are mirrored live and, the lock ensures, reach the peer after the block. A block
// that is a hole locally goes as a Zero message (no payload). Blocks are sent durable: once the
// peer confirms and a local datasync covers the data read, the block's regions are cleared in
// the bitmap before the range lock is released. So an interrupted resync resumes where it
// stopped: the regions still marked are exactly those left to copy (plus any written meanwhile).
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
  double rate_bytes_per_s = 0;  // Average since the start.
  double eta_s = 0;             // At that rate; 0 when unknown or done.
};

class Resync : public std::enable_shared_from_this<Resync> {
 public:
  // Both send calls ask for a durable acknowledgement.
  using SendWrite = std::function<void(uint64_t, std::span<const std::byte>, PeerDone)>;
  using SendZero = std::function<void(uint64_t, uint64_t, PeerDone)>;
  // Called once: true when every block was confirmed, false when cancelled or the link failed.
  using Finished = std::function<void(bool)>;

  static constexpr uint64_t kBlockBytes = 1 << 20;
  static constexpr int kMaxInFlight = 4;

  Resync(asio::io_context& io, Volume& volume, WriteIntentLog& intent_log,
         base::BufferPool& pool, SendWrite send_write, SendZero send_zero,
         uint64_t rate_bytes_per_s);

  void Start(Finished finished);
  void Cancel();
  ResyncProgress progress() const;

 private:
  void Pump();
  bool WaitForRate(uint64_t length_bytes);
  void CopyBlock(uint64_t offset_bytes, uint64_t length_bytes, InflightRanges::Ticket ticket);
  void OnBlockSent(InflightRanges::Ticket ticket, uint64_t offset_bytes, uint64_t length_bytes,
                   PeerOutcome outcome);
  void OnBlockDone(InflightRanges::Ticket ticket, uint64_t length_bytes, bool ok);
  void MaybeFinish();

  asio::io_context& io_;
  Volume& volume_;
  WriteIntentLog& intent_log_;
  base::BufferPool& pool_;
  SendWrite send_write_;
  SendZero send_zero_;
  const uint64_t rate_bytes_per_s_;
  Finished finished_;
  ResyncProgress progress_;
  std::chrono::steady_clock::time_point started_;
  uint64_t issued_bytes_ = 0;  // For the rate limit.
  uint64_t cursor_bytes_ = 0;
  int in_flight_ = 0;
  bool failed_ = false;
  bool cancelled_ = false;
  bool waiting_ = false;  // For a buffer or for the rate limit.
  asio::steady_timer rate_timer_;
};

}  // namespace mirror
