#pragma once
// FullResync: copies the whole volume from the primary to the secondary while clients keep
// writing.
//
// It walks the volume in blocks (1 MiB), a few in flight at a time. For each block it takes the
// volume's range lock, so no client write to that range is in flight while the block is read
// and sent; client writes that come later are mirrored live and, the lock ensures, reach the
// peer after the block. A block that is a hole locally goes as a Zero message (no payload), so a
// sparse volume resyncs at metadata speed. When every block is acknowledged the caller sends
// ResyncDone.
//
// Owned by shared_ptr (a buffer-pool wake-up may outlive the owner's interest).
// Loop thread only. Cancel() stops issuing blocks; blocks in flight finish through the link's
// callbacks (kDegraded once the link is gone).

#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "base/buffer_pool.h"
#include "mirror/peer_link.h"
#include "mirror/volume.h"

namespace mirror {

struct ResyncProgress {
  uint64_t total_bytes = 0;
  uint64_t done_bytes = 0;
  bool running = false;
};

class FullResync : public std::enable_shared_from_this<FullResync> {
 public:
  using SendWrite = std::function<void(uint64_t, std::span<const std::byte>, PeerDone)>;
  using SendZero = std::function<void(uint64_t, uint64_t, PeerDone)>;
  // Called once: true when every block was confirmed, false when cancelled or the link failed.
  using Finished = std::function<void(bool)>;

  FullResync(Volume& volume, base::BufferPool& pool, SendWrite send_write, SendZero send_zero);

  void Start(Finished finished);
  void Cancel();
  const ResyncProgress& progress() const { return progress_; }

 private:
  static constexpr uint64_t kBlockBytes = 1 << 20;
  static constexpr int kMaxInFlight = 4;

  void Pump();
  void CopyBlock(uint64_t offset_bytes, uint64_t length_bytes);
  void OnBlockDone(InflightRanges::Ticket ticket, uint64_t length_bytes, PeerOutcome outcome);
  void MaybeFinish();

  Volume& volume_;
  base::BufferPool& pool_;
  SendWrite send_write_;
  SendZero send_zero_;
  Finished finished_;
  ResyncProgress progress_;
  uint64_t next_offset_ = 0;
  int in_flight_ = 0;
  bool failed_ = false;
  bool cancelled_ = false;
  bool waiting_for_buffer_ = false;
};

}  // namespace mirror
