#pragma once
// UringStore: the LocalStore on io_uring, driven from the volume's asio loop.
//
// I/O: reads and writes use O_DIRECT when the file system allows it and the request is aligned
// (offset, length and buffer to the device's logical block size, probed at open); anything
// unaligned goes through a second, buffered descriptor on the same file, so odd-sized client
// requests still work. Linux keeps the two coherent one request at a time: a direct read writes
// back cached pages of its range first, and a direct write invalidates them. Not when they
// overlap in time: a buffered write into part of a block reads the whole block, merges and
// later writes it all back, so a direct write landing in that block meanwhile would be undone
// (its invalidation fails on the dirty page). Footprint() therefore widens an unaligned write to
// whole cache blocks (64 KiB, or the page or the file system's block if larger: the standby's
// may be larger than ours), and the volume lets no other write into them while it runs. Datasync
// (fdatasync through the ring) covers both descriptors, since it syncs the inode.
//
// Completions reach the loop through an eventfd registered with the ring and watched by asio.
// Each in-flight operation is an Op from a recycled pool and is the SQE's user_data. Short reads
// and writes are resubmitted for the rest; -EAGAIN is resubmitted as is. A full submission queue
// is submitted and retried rather than grown. Submissions made during one loop turn go to the
// kernel in a single io_uring_submit.
//
// Loop thread only. The io_context must outlive the store.

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "base/asio.h"
#include "base/status.h"
#include "mirror/local_store.h"

namespace mirror {

struct UringStoreOptions {
  bool direct_io = true;          // Try O_DIRECT; fall back to buffered I/O where refused.
  unsigned queue_entries = 256;
  bool dsync = false;  // O_DSYNC: a completed write is already durable (metadata pages).
};

class UringStore final : public LocalStore {
 public:
  static base::Result<std::unique_ptr<UringStore>> Open(asio::io_context& io,
                                                        const std::string& path,
                                                        UringStoreOptions options);
  ~UringStore() override;

  uint64_t size_bytes() const override { return size_bytes_; }
  std::string Describe() const override;
  bool direct_io() const { return direct_fd_ != buffered_fd_; }
  uint32_t alignment_bytes() const { return alignment_bytes_; }

  base::Status Read(uint64_t offset_bytes, std::span<std::byte> out, StoreDone done) override;
  base::Status Write(uint64_t offset_bytes, std::span<const std::byte> data,
                     StoreDone done) override;
  base::Status WriteThrough(uint64_t offset_bytes, std::span<const std::byte> data,
                            StoreDone done) override;
  base::Status Datasync(StoreDone done) override;
  base::Status Discard(uint64_t offset_bytes, uint64_t length_bytes, StoreDone done) override;
  base::Status ZeroRange(uint64_t offset_bytes, uint64_t length_bytes, nbd::ZeroOptions options,
                         StoreDone done) override;
  base::Status Prefetch(uint64_t offset_bytes, uint64_t length_bytes, StoreDone done) override;
  base::Result<std::vector<nbd::Extent>> Allocation(uint64_t offset_bytes,
                                                    uint64_t length_bytes) override;
  ByteRange Footprint(uint64_t offset_bytes, uint64_t length_bytes) const override;
  uint32_t cache_block_bytes() const { return cache_block_bytes_; }

 private:
  enum class OpKind { kRead, kWrite, kDatasync, kFallocate, kFadvise };
  struct Op {
    OpKind kind = OpKind::kRead;
    int fd = -1;
    std::byte* buffer = nullptr;
    uint64_t offset_bytes = 0;
    uint64_t length_bytes = 0;
    uint64_t done_bytes = 0;  // Progress of a read or write across short completions.
    int fallocate_mode = 0;
    bool write_through = false;  // A write with RWF_DSYNC.
    StoreDone done;
  };

  UringStore(asio::io_context& io, std::string path);
  base::Status CheckRange(uint64_t offset_bytes, uint64_t length_bytes, const char* what) const;
  // True when `bits` (offsets, lengths and addresses or'ed together) suit O_DIRECT.
  bool Aligned(uint64_t bits) const { return (bits & (alignment_bytes_ - 1)) == 0; }
  int FdFor(uint64_t offset_bytes, uint64_t length_bytes, const void* buffer) const;
  base::Status SubmitWrite(uint64_t offset_bytes, std::span<const std::byte> data,
                           bool write_through, StoreDone done);
  Op* NewOp(OpKind kind, int fd, uint64_t offset_bytes, uint64_t length_bytes, StoreDone done);
  void Queue(Op* op);
  bool Prepare(Op* op);
  void ScheduleSubmit();
  void SubmitPending();
  void WaitForCompletions();
  void ReapCompletions();
  void OnCompletion(Op* op, int result);
  void Finish(Op* op, base::Status status);
  void Fallocate(uint64_t offset_bytes, uint64_t length_bytes, int mode, StoreDone done);
  void ZeroByFallocate(uint64_t offset_bytes, uint64_t length_bytes, nbd::ZeroOptions options,
                       int mode, StoreDone done);
  void WriteZeroesSlowly(uint64_t offset_bytes, uint64_t length_bytes, StoreDone done);
  void ForgetDataRun(uint64_t offset_bytes, uint64_t length_bytes);

  asio::io_context& io_;
  const std::string path_;
  io_uring ring_{};
  bool ring_ready_ = false;
  int direct_fd_ = -1;
  int buffered_fd_ = -1;
  int event_fd_ = -1;
  uint64_t size_bytes_ = 0;
  // The last data run SEEK_HOLE reported: [begin, end) was data then. SEEK_HOLE costs as much
  // as the run is long on some file systems (tmpfs walks every page to the next hole), so small
  // windows walked through one long run (a resync, BLOCK_STATUS from a client) ask once, not per
  // window. Writes never turn data into a hole and "data" is always a safe answer; a discard or
  // zeroing, which may punch one, forgets the run.
  uint64_t known_data_begin_ = 0;
  uint64_t known_data_end_ = 0;
  uint32_t alignment_bytes_ = 1;
  // What an unaligned write's footprint is widened to (Footprint).
  uint32_t cache_block_bytes_ = 64 * 1024;
  bool is_block_device_ = false;
  std::unique_ptr<asio::posix::stream_descriptor> event_watch_;
  uint64_t event_counter_ = 0;
  bool submit_scheduled_ = false;
  bool closing_ = false;
  std::deque<Op*> backlog_;  // Ops waiting for a free SQE.
  std::vector<std::unique_ptr<Op>> ops_;
  std::vector<Op*> free_ops_;
  size_t ops_in_kernel_ = 0;
  std::byte* zero_buffer_ = nullptr;
};

}  // namespace mirror
