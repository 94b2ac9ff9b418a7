#pragma once
// Volume: the block device the NBD server exports, on top of this host's LocalStore.
//
// The life of one write (WRITE, WRITE_ZEROES or TRIM), state by state:
//
//   1. kWaitingForRange  The NBD connection calls Write(). The volume asks InflightRanges for
//                        the byte range. If an earlier write overlapping it is still in flight
//                        (or waiting), this one waits, so overlapping writes complete in arrival
//                        order and every copy ends with the same last writer.
//   2. kLocalPending     The range is held; the write goes to the LocalStore (io_uring).
//   3. kWritten          The store reports the write done: it is visible to reads on every
//                        connection. GroupCommit counts it as completed, and the range is
//                        released, letting the next overlapping write start.
//   4. kSyncing          Only with FUA: GroupCommit runs (or joins) one datasync that covers
//                        this write and every other write completed before it.
//   5. kReplied          The connection gets `done(OK)` and sends the NBD reply.
//
// A failed local write fails the request with EIO (state 3 reports the error instead). FLUSH
// is GroupCommit::RequestDurable on its own: every write replied to before the FLUSH was
// received has passed state 3, so the datasync that answers it covers them all, whichever
// connection they came from (this is what CAN_MULTI_CONN promises).
//
// Reads go straight to the store; NBD does not order reads against in-flight writes.
//
// Loop thread only. The store must outlive the volume.

#include <cstdint>

#include "base/asio.h"
#include "mirror/group_commit.h"
#include "mirror/inflight_ranges.h"
#include "mirror/local_store.h"
#include "nbd-server/block_device.h"

namespace mirror {

// Counters for status and tests. Monotonic except the in-flight gauges.
struct VolumeStats {
  uint64_t reads = 0;
  uint64_t writes = 0;
  uint64_t flushes = 0;
  uint64_t zeroes = 0;
  uint64_t trims = 0;
  uint64_t read_bytes = 0;
  uint64_t written_bytes = 0;
  uint64_t errors = 0;
  uint64_t writes_in_flight = 0;
  uint64_t range_waits = 0;  // Writes that had to wait for an overlapping one.
};

class Volume final : public nbd::BlockDevice {
 public:
  Volume(asio::io_context& io, LocalStore& store);

  uint64_t size_bytes() const override { return store_.size_bytes(); }

  base::Status Read(uint64_t offset_bytes, std::span<std::byte> out,
                    nbd::DoneCallback done) override;
  base::Status Write(uint64_t offset_bytes, std::span<const std::byte> data, bool fua,
                     nbd::DoneCallback done) override;
  base::Status Flush(nbd::DoneCallback done) override;
  base::Status Trim(uint64_t offset_bytes, uint64_t length_bytes, bool fua,
                    nbd::DoneCallback done) override;
  base::Status WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes,
                           nbd::ZeroOptions options, bool fua, nbd::DoneCallback done) override;
  base::Status Cache(uint64_t offset_bytes, uint64_t length_bytes,
                     nbd::DoneCallback done) override;
  base::Status BlockStatus(uint64_t offset_bytes, uint64_t length_bytes,
                           nbd::ExtentsCallback done) override;

  const VolumeStats& stats() const { return stats_; }
  bool disk_failed() const { return group_commit_.failed(); }
  uint64_t datasync_count() const { return group_commit_.datasync_count(); }

 private:
  // Starts the store operation for a write-like request once its range is held.
  using StoreCall = std::function<base::Status(StoreDone)>;
  base::Status Modify(uint64_t offset_bytes, uint64_t length_bytes, bool fua, StoreCall call,
                      nbd::DoneCallback done);
  void StartModify(InflightRanges::Ticket ticket, bool fua, const StoreCall& call,
                   nbd::DoneCallback done);
  void OnModifyDone(InflightRanges::Ticket ticket, bool fua, base::Status status,
                    nbd::DoneCallback done);
  base::Status CheckRange(uint64_t offset_bytes, uint64_t length_bytes, int past_end_errno) const;

  asio::io_context& io_;
  LocalStore& store_;
  InflightRanges ranges_;
  GroupCommit group_commit_;
  VolumeStats stats_;
};

}  // namespace mirror
