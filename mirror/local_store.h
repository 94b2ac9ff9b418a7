#pragma once
// LocalStore: this host's copy of the volume (a file or a block device).
//
// Contract for every submit call (Read, Write, Datasync, Discard, ZeroRange, Prefetch):
// - Loop thread only. It returns a failed Status and never calls `done`, or returns OK and
//   calls `done` exactly once, later, from the loop.
// - Buffers are borrowed until `done` runs.
// - Ranges must lie inside size_bytes() (checked; EINVAL otherwise).
// - Errors are the kernel's errno (EIO, ENOSPC, ...), with a message naming the operation.
//
// Durability: a completed Write/Discard/ZeroRange is visible to later reads but may sit in a
// volatile cache. A completed Datasync means every write that completed before Datasync was
// submitted is on stable storage. A failed Datasync leaves those writes in an unknown state
// and must never be retried into a success: callers treat it as a failed disk.
//
// WriteThrough is a Write that is on stable storage by itself when it completes (RWF_DSYNC:
// the kernel flushes it before reporting), with no Datasync after it; it says nothing about
// other writes. A failure may be the write's or the flush's (the kernel flushes only after a
// successful write), and a failed flush may have covered other completed writes too; the
// caller decides what that means (GroupCommit::NoteWriteThroughCompleted).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "base/callback.h"
#include "base/status.h"
#include "nbd-server/block_device.h"

namespace mirror {

using StoreDone = base::Callback<void(base::Status)>;

struct ByteRange {
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
};

class LocalStore {
 public:
  virtual ~LocalStore() = default;

  virtual uint64_t size_bytes() const = 0;
  // A short description for logs and status ("/srv/pg.img (O_DIRECT, 512-byte alignment)").
  virtual std::string Describe() const = 0;

  [[nodiscard]] virtual base::Status Read(uint64_t offset_bytes, std::span<std::byte> out,
                                          StoreDone done) = 0;
  [[nodiscard]] virtual base::Status Write(uint64_t offset_bytes,
                                           std::span<const std::byte> data, StoreDone done) = 0;
  [[nodiscard]] virtual base::Status WriteThrough(uint64_t offset_bytes,
                                                  std::span<const std::byte> data,
                                                  StoreDone done) = 0;
  [[nodiscard]] virtual base::Status Datasync(StoreDone done) = 0;
  // Deallocates the range; it reads as zeroes afterwards.
  [[nodiscard]] virtual base::Status Discard(uint64_t offset_bytes, uint64_t length_bytes,
                                             StoreDone done) = 0;
  // Makes the range read as zeroes. fast_only: fail with ENOTSUP instead of writing zeroes.
  [[nodiscard]] virtual base::Status ZeroRange(uint64_t offset_bytes, uint64_t length_bytes,
                                               nbd::ZeroOptions options, StoreDone done) = 0;
  // Advisory read-ahead into the host's cache.
  [[nodiscard]] virtual base::Status Prefetch(uint64_t offset_bytes, uint64_t length_bytes,
                                              StoreDone done) = 0;
  // Allocation map of the range (synchronous: it must not wait on I/O).
  virtual base::Result<std::vector<nbd::Extent>> Allocation(uint64_t offset_bytes,
                                                            uint64_t length_bytes) = 0;

  // The bytes a Write, WriteThrough, Discard or ZeroRange of [offset, offset + length) may
  // rewrite on the backing store. No other modification may run inside them meanwhile (Volume
  // locks them). The range itself, unless the store rewrites whole blocks around it (UringStore:
  // an unaligned write beside direct I/O).
  virtual ByteRange Footprint(uint64_t offset_bytes, uint64_t length_bytes) const {
    return {offset_bytes, length_bytes};
  }
};

}  // namespace mirror
