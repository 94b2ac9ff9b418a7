#pragma once
// BlockDevice: everything the NBD server knows about what it serves.
//
// Contract for every submit call below:
// - It is called on the event loop thread that owns the device, and only there.
// - It either returns a failed Status and never calls `done`, or returns OK and calls `done`
//   exactly once, later, from the same loop (never from inside the submit call). One
//   exception: a Flush with nothing to wait for (every write it covers is already durable)
//   may call `done` with success before it returns, saving a trip round the loop.
// - Buffers passed in are borrowed: the caller keeps them alive and untouched until `done`
//   runs.
// - Ranges have already been validated against size_bytes() by the caller; implementations
//   check again and answer EINVAL/ENOSPC rather than trust it.
// - Errors are errno values in the Status (EIO for a failed disk, ENOSPC, ENOTSUP for a fast
//   zero that cannot be fast, ESHUTDOWN while stopping). nbd_errors turns them into NBD errors.
//
// Durability: Write/Trim/WriteZeroes complete once the data is written (readable by any later
// Read on any connection). They are durable only when `fua` was set, or after a Flush that was
// submitted after they completed. Flush completes when every write completed before it was
// submitted is on stable storage.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "base/callback.h"
#include "base/status.h"

namespace nbd {

using DoneCallback = base::Callback<void(base::Status)>;

// One run of the allocation map, as base:allocation reports it.
struct Extent {
  uint64_t length_bytes = 0;
  bool hole = false;  // Unallocated; reads as zeroes.
};

using ExtentsCallback = std::function<void(base::Result<std::vector<Extent>>)>;

struct ZeroOptions {
  bool may_punch_hole = true;  // False when the client set NO_HOLE.
  bool fast_only = false;      // FAST_ZERO: fail with ENOTSUP rather than write zeroes slowly.
};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  virtual uint64_t size_bytes() const = 0;

  [[nodiscard]] virtual base::Status Read(uint64_t offset_bytes, std::span<std::byte> out,
                                          DoneCallback done) = 0;
  [[nodiscard]] virtual base::Status Write(uint64_t offset_bytes,
                                           std::span<const std::byte> data, bool fua,
                                           DoneCallback done) = 0;
  [[nodiscard]] virtual base::Status Flush(DoneCallback done) = 0;
  // Advisory: the range may afterwards read as anything, usually zeroes.
  [[nodiscard]] virtual base::Status Trim(uint64_t offset_bytes, uint64_t length_bytes, bool fua,
                                          DoneCallback done) = 0;
  // The range reads as zeroes afterwards.
  [[nodiscard]] virtual base::Status WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes,
                                                 ZeroOptions options, bool fua,
                                                 DoneCallback done) = 0;
  // Advisory prefetch.
  [[nodiscard]] virtual base::Status Cache(uint64_t offset_bytes, uint64_t length_bytes,
                                           DoneCallback done) = 0;
  // Allocation runs covering at least the first byte of the range, in order, summing to at
  // most length_bytes.
  [[nodiscard]] virtual base::Status BlockStatus(uint64_t offset_bytes, uint64_t length_bytes,
                                                 ExtentsCallback done) = 0;
};

}  // namespace nbd
