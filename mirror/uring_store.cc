#include "mirror/uring_store.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace mirror {
namespace {

using base::Status;

constexpr size_t kZeroBufferBytes = 1 << 20;
constexpr size_t kMaxExtents = 1024;
// The least an unaligned write's footprint is widened to: at least the largest page or file
// system block either host is likely to have (64 KiB pages on arm64 and ppc64), because the
// standby applies concurrently whatever the primary has in flight at once. Unaligned writes are
// rare (clients that ignore the advertised minimum block size), so the wider lock costs nothing
// measurable.
constexpr long kUnalignedLockBytes = 64 * 1024;

// Finds the smallest block size O_DIRECT accepts on this file: 512 on most devices, 4096 on
// 4Kn disks. Returns 0 when O_DIRECT reads fail outright.
uint32_t ProbeDirectAlignment(int fd) {
  void* buffer = std::aligned_alloc(4096, 4096);
  uint32_t found = 0;
  for (uint32_t size : {512u, 4096u}) {
    const ssize_t n = ::pread(fd, buffer, size, 0);
    if (n >= 0) {
      found = size;
      break;
    }
  }
  std::free(buffer);
  return found;
}

}  // namespace

UringStore::UringStore(asio::io_context& io, std::string path) : io_(io), path_(std::move(path)) {}

base::Result<std::unique_ptr<UringStore>> UringStore::Open(asio::io_context& io,
                                                           const std::string& path,
                                                           UringStoreOptions options) {
  std::unique_ptr<UringStore> store(new UringStore(io, path));
  const int sync_flag = options.dsync ? O_DSYNC : 0;
  store->buffered_fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC | sync_flag);
  if (store->buffered_fd_ < 0) {
    return Status::FromErrno("open " + path);
  }
  struct stat st {};
  if (::fstat(store->buffered_fd_, &st) != 0) {
    return Status::FromErrno("stat " + path);
  }
  if (S_ISBLK(st.st_mode)) {
    store->is_block_device_ = true;
    if (::ioctl(store->buffered_fd_, BLKGETSIZE64, &store->size_bytes_) != 0) {
      return Status::FromErrno("BLKGETSIZE64 " + path);
    }
  } else if (S_ISREG(st.st_mode)) {
    store->size_bytes_ = static_cast<uint64_t>(st.st_size);
  } else {
    return Status::Error(EINVAL, path + " is neither a regular file nor a block device");
  }
  store->cache_block_bytes_ = static_cast<uint32_t>(std::max<long>(
      {::sysconf(_SC_PAGESIZE), static_cast<long>(st.st_blksize), kUnalignedLockBytes}));
  store->direct_fd_ = store->buffered_fd_;
  if (options.direct_io) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_DIRECT | sync_flag);
    // tmpfs and some FUSE file systems refuse O_DIRECT with EINVAL: serve them buffered.
    const uint32_t alignment = fd >= 0 ? ProbeDirectAlignment(fd) : 0;
    if (alignment != 0) {
      store->direct_fd_ = fd;
      store->alignment_bytes_ = alignment;
    } else {
      if (fd >= 0) {
        ::close(fd);
      }
      spdlog::info("{}: O_DIRECT not available, using buffered I/O", path);
    }
  }
  // COOP_TASKRUN: a completion that arrives while the loop thread is running is handed over
  // at its next system call instead of by an inter-processor interrupt, which is expensive
  // on a VM. A sleeping loop is still woken as before. Kernels before 5.19 refuse the flag.
  int rc = io_uring_queue_init(options.queue_entries, &store->ring_, IORING_SETUP_COOP_TASKRUN);
  if (rc == -EINVAL) {
    rc = io_uring_queue_init(options.queue_entries, &store->ring_, 0);
  }
  if (rc < 0) {
    return Status::Error(-rc, "io_uring_queue_init");
  }
  store->ring_ready_ = true;
  store->event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (store->event_fd_ < 0) {
    return Status::FromErrno("eventfd");
  }
  if (int rc = io_uring_register_eventfd(&store->ring_, store->event_fd_); rc < 0) {
    return Status::Error(-rc, "io_uring_register_eventfd");
  }
  store->event_watch_ = std::make_unique<asio::posix::stream_descriptor>(io, store->event_fd_);
  store->zero_buffer_ = static_cast<std::byte*>(std::aligned_alloc(4096, kZeroBufferBytes));
  std::memset(store->zero_buffer_, 0, kZeroBufferBytes);
  store->WaitForCompletions();
  return store;
}

UringStore::~UringStore() {
  closing_ = true;
  if (ring_ready_) {
    // Operations still in the kernel reference buffers owned elsewhere; wait them out.
    while (ops_in_kernel_ > 0) {
      io_uring_cqe* cqe = nullptr;
      if (io_uring_wait_cqe(&ring_, &cqe) != 0) {
        break;
      }
      io_uring_cqe_seen(&ring_, cqe);
      --ops_in_kernel_;
    }
  }
  if (event_watch_) {
    event_watch_->release();  // We close the fd ourselves below.
  }
  if (ring_ready_) {
    io_uring_queue_exit(&ring_);
  }
  for (int fd : {event_fd_, direct_fd_ != buffered_fd_ ? direct_fd_ : -1, buffered_fd_}) {
    if (fd >= 0) {
      ::close(fd);
    }
  }
  std::free(zero_buffer_);
}

std::string UringStore::Describe() const {
  if (direct_io()) {
    return path_ + " (O_DIRECT, " + std::to_string(alignment_bytes_) + "-byte alignment)";
  }
  return path_ + " (buffered)";
}

Status UringStore::CheckRange(uint64_t offset_bytes, uint64_t length_bytes,
                              const char* what) const {
  if (offset_bytes > size_bytes_ || length_bytes > size_bytes_ - offset_bytes) {
    return Status::Error(EINVAL, std::string(what) + " at " + std::to_string(offset_bytes) +
                                     "+" + std::to_string(length_bytes) + " is past the end");
  }
  return Status::Ok();
}

ByteRange UringStore::Footprint(uint64_t offset_bytes, uint64_t length_bytes) const {
  // Buffers come from aligned pools, so offset and length decide which descriptor FdFor picks.
  if (!direct_io() || Aligned(offset_bytes | length_bytes)) {
    return {offset_bytes, length_bytes};
  }
  const uint64_t block = cache_block_bytes_;
  const uint64_t begin = offset_bytes / block * block;
  const uint64_t end =
      std::min(size_bytes_, (offset_bytes + length_bytes + block - 1) / block * block);
  return {begin, end - begin};
}

int UringStore::FdFor(uint64_t offset_bytes, uint64_t length_bytes, const void* buffer) const {
  return Aligned(offset_bytes | length_bytes | reinterpret_cast<uintptr_t>(buffer)) ? direct_fd_
                                                                                    : buffered_fd_;
}

UringStore::Op* UringStore::NewOp(OpKind kind, int fd, uint64_t offset_bytes,
                                  uint64_t length_bytes, StoreDone done) {
  if (free_ops_.empty()) {
    ops_.push_back(std::make_unique<Op>());
    free_ops_.push_back(ops_.back().get());
  }
  Op* op = free_ops_.back();
  free_ops_.pop_back();
  *op = Op{};
  op->kind = kind;
  op->fd = fd;
  op->offset_bytes = offset_bytes;
  op->length_bytes = length_bytes;
  op->done = std::move(done);
  return op;
}

Status UringStore::Read(uint64_t offset_bytes, std::span<std::byte> out, StoreDone done) {
  if (Status st = CheckRange(offset_bytes, out.size(), "read"); !st.ok()) {
    return st;
  }
  Op* op = NewOp(OpKind::kRead, FdFor(offset_bytes, out.size(), out.data()), offset_bytes,
                 out.size(), std::move(done));
  op->buffer = out.data();
  Queue(op);
  return Status::Ok();
}

Status UringStore::Write(uint64_t offset_bytes, std::span<const std::byte> data,
                         StoreDone done) {
  return SubmitWrite(offset_bytes, data, /*write_through=*/false, std::move(done));
}

Status UringStore::WriteThrough(uint64_t offset_bytes, std::span<const std::byte> data,
                                StoreDone done) {
  return SubmitWrite(offset_bytes, data, /*write_through=*/true, std::move(done));
}

Status UringStore::SubmitWrite(uint64_t offset_bytes, std::span<const std::byte> data,
                               bool write_through, StoreDone done) {
  if (Status st = CheckRange(offset_bytes, data.size(), "write"); !st.ok()) {
    return st;
  }
  Op* op = NewOp(OpKind::kWrite, FdFor(offset_bytes, data.size(), data.data()), offset_bytes,
                 data.size(), std::move(done));
  // The kernel only reads from it; io_uring's API is not const-correct.
  op->buffer = const_cast<std::byte*>(data.data());
  op->write_through = write_through;
  Queue(op);
  return Status::Ok();
}

Status UringStore::Datasync(StoreDone done) {
  Queue(NewOp(OpKind::kDatasync, direct_fd_, 0, 0, std::move(done)));
  return Status::Ok();
}

Status UringStore::Discard(uint64_t offset_bytes, uint64_t length_bytes, StoreDone done) {
  if (Status st = CheckRange(offset_bytes, length_bytes, "discard"); !st.ok()) {
    return st;
  }
  nbd::ZeroOptions options;
  options.may_punch_hole = true;
  // A discard that cannot punch may as well zero: TRIM leaves the contents undefined anyway.
  ZeroByFallocate(offset_bytes, length_bytes, options,
                  FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, std::move(done));
  return Status::Ok();
}

Status UringStore::ZeroRange(uint64_t offset_bytes, uint64_t length_bytes,
                             nbd::ZeroOptions options, StoreDone done) {
  if (Status st = CheckRange(offset_bytes, length_bytes, "zero"); !st.ok()) {
    return st;
  }
  const int mode = options.may_punch_hole ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
                                          : (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
  ZeroByFallocate(offset_bytes, length_bytes, options, mode, std::move(done));
  return Status::Ok();
}

Status UringStore::Prefetch(uint64_t offset_bytes, uint64_t length_bytes, StoreDone done) {
  if (Status st = CheckRange(offset_bytes, length_bytes, "prefetch"); !st.ok()) {
    return st;
  }
  Queue(NewOp(OpKind::kFadvise, buffered_fd_, offset_bytes, length_bytes, std::move(done)));
  return Status::Ok();
}

void UringStore::Fallocate(uint64_t offset_bytes, uint64_t length_bytes, int mode,
                           StoreDone done) {
  Op* op = NewOp(OpKind::kFallocate, direct_fd_, offset_bytes, length_bytes, std::move(done));
  op->fallocate_mode = mode;
  Queue(op);
}

// Tries the cheapest way to make the range read as zeroes, falling back step by step: punch a
// hole (if allowed), then ZERO_RANGE, then (unless the client asked for a fast zero) writing
// zeroes. Only "not supported" falls back; a real error goes to the caller.
void UringStore::ZeroByFallocate(uint64_t offset_bytes, uint64_t length_bytes,
                                 nbd::ZeroOptions options, int mode, StoreDone done) {
  if (length_bytes == 0) {
    asio::post(io_, [done = std::move(done)] { done(Status::Ok()); });
    return;
  }
  // Forgotten now and again once done: a lookup while the fallocate runs may see the old data.
  ForgetDataRun(offset_bytes, length_bytes);
  Fallocate(offset_bytes, length_bytes, mode,
            [this, offset_bytes, length_bytes, options, mode, done = std::move(done)](
                Status st) mutable {
              ForgetDataRun(offset_bytes, length_bytes);
              const bool unsupported =
                  st.errno_value() == EOPNOTSUPP || st.errno_value() == EINVAL;
              if (st.ok() || !unsupported) {
                done(std::move(st));
              } else if ((mode & FALLOC_FL_PUNCH_HOLE) != 0) {
                ZeroByFallocate(offset_bytes, length_bytes, options,
                                FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, std::move(done));
              } else if (options.fast_only) {
                done(Status::Error(ENOTSUP, "fast zero not possible on " + path_));
              } else {
                WriteZeroesSlowly(offset_bytes, length_bytes, std::move(done));
              }
            });
}

void UringStore::WriteZeroesSlowly(uint64_t offset_bytes, uint64_t length_bytes,
                                   StoreDone done) {
  const uint64_t chunk = std::min<uint64_t>(length_bytes, kZeroBufferBytes);
  // Shared by the chunk's completion and this call's own failure path: a submit that fails
  // drops its callback uncalled, and `done` must still be answered once.
  auto shared_done = std::make_shared<StoreDone>(std::move(done));
  Status st = Write(offset_bytes, std::span<const std::byte>(zero_buffer_, chunk),
                    [this, offset_bytes, length_bytes, chunk, shared_done](Status written) {
                      if (!written.ok() || chunk == length_bytes) {
                        (*shared_done)(std::move(written));
                        return;
                      }
                      WriteZeroesSlowly(offset_bytes + chunk, length_bytes - chunk,
                                        std::move(*shared_done));
                    });
  if (!st.ok()) {
    asio::post(io_, [shared_done, st] { (*shared_done)(st); });
  }
}

base::Result<std::vector<nbd::Extent>> UringStore::Allocation(uint64_t offset_bytes,
                                                              uint64_t length_bytes) {
  if (Status st = CheckRange(offset_bytes, length_bytes, "block status"); !st.ok()) {
    return st;
  }
  std::vector<nbd::Extent> extents;
  auto add = [&extents](uint64_t length, bool hole) {
    if (!extents.empty() && extents.back().hole == hole) {
      extents.back().length_bytes += length;
    } else {
      extents.push_back({length, hole});
    }
  };
  const uint64_t end = offset_bytes + length_bytes;
  uint64_t pos = offset_bytes;
  while (pos < end && extents.size() < kMaxExtents) {
    if (pos >= known_data_begin_ && pos < known_data_end_) {
      const uint64_t data_end = std::min(known_data_end_, end);
      add(data_end - pos, false);
      pos = data_end;
      continue;
    }
    const off_t data = ::lseek(buffered_fd_, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      // ENXIO: only a hole remains. Anything else (block devices): report data, which is
      // always a safe answer.
      add(end - pos, errno == ENXIO);
      break;
    }
    if (static_cast<uint64_t>(data) > pos) {
      const uint64_t hole_end = std::min<uint64_t>(static_cast<uint64_t>(data), end);
      add(hole_end - pos, true);
      pos = hole_end;
      continue;
    }
    const off_t hole = ::lseek(buffered_fd_, static_cast<off_t>(pos), SEEK_HOLE);
    if (hole < 0) {
      add(end - pos, false);
      break;
    }
    known_data_begin_ = pos;
    known_data_end_ = std::max<uint64_t>(static_cast<uint64_t>(hole), pos + 1);
  }
  return extents;
}

void UringStore::ForgetDataRun(uint64_t offset_bytes, uint64_t length_bytes) {
  if (offset_bytes < known_data_end_ && known_data_begin_ < offset_bytes + length_bytes) {
    known_data_begin_ = known_data_end_ = 0;
  }
}

void UringStore::Queue(Op* op) {
  if (!backlog_.empty() || !Prepare(op)) {
    backlog_.push_back(op);
  }
  ScheduleSubmit();
}

bool UringStore::Prepare(Op* op) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    // The submission queue is full: hand what is there to the kernel and try once more.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      return false;
    }
  }
  const uint64_t left = op->length_bytes - op->done_bytes;
  const uint64_t offset = op->offset_bytes + op->done_bytes;
  switch (op->kind) {
    case OpKind::kRead:
      io_uring_prep_read(sqe, op->fd, op->buffer + op->done_bytes, static_cast<unsigned>(left),
                         offset);
      break;
    case OpKind::kWrite:
      io_uring_prep_write(sqe, op->fd, op->buffer + op->done_bytes, static_cast<unsigned>(left),
                          offset);
      if (op->write_through) {
        // Each part of a short write is flushed before it completes, so the whole is durable
        // once the last part is.
        sqe->rw_flags = RWF_DSYNC;
      }
      break;
    case OpKind::kDatasync:
      io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
      break;
    case OpKind::kFallocate:
      io_uring_prep_fallocate(sqe, op->fd, op->fallocate_mode, op->offset_bytes,
                              op->length_bytes);
      break;
    case OpKind::kFadvise:
      io_uring_prep_fadvise(sqe, op->fd, op->offset_bytes, static_cast<off_t>(op->length_bytes),
                            POSIX_FADV_WILLNEED);
      break;
  }
  io_uring_sqe_set_data(sqe, op);
  ++ops_in_kernel_;
  return true;
}

void UringStore::ScheduleSubmit() {
  if (submit_scheduled_) {
    return;
  }
  submit_scheduled_ = true;
  // Batch every submission made during this loop turn into one system call.
  asio::post(io_, [this] {
    submit_scheduled_ = false;
    SubmitPending();
  });
}

void UringStore::SubmitPending() {
  while (!backlog_.empty() && Prepare(backlog_.front())) {
    backlog_.pop_front();
  }
  const int rc = io_uring_submit(&ring_);
  if (rc < 0 && rc != -EAGAIN && rc != -EBUSY) {
    spdlog::error("{}: io_uring_submit: {}", path_, std::strerror(-rc));
  }
  // The loop is awake anyway: take the completions already in the CQ now (a read of shared
  // memory, no system call), so their callbacks run in this pass and their replies join this
  // pass's batch instead of waiting for the eventfd's turn.
  ReapCompletions();
}

void UringStore::WaitForCompletions() {
  // Reading the eventfd as the wait itself, rather than async_wait followed by a read(): asio
  // re-arms the descriptor with epoll_ctl(EPOLL_CTL_MOD) for every async_wait, but not for a
  // read, so a wake-up costs the one read that also clears the counter. The reactor reads the
  // counter before this handler reaps the ring; a completion posted after that read signals
  // the eventfd again, so none is missed.
  event_watch_->async_read_some(
      asio::buffer(&event_counter_, sizeof(event_counter_)),
      [this](const boost::system::error_code& ec, size_t) {
        if (closing_ || ec == asio::error::operation_aborted) {
          return;
        }
        if (ec) {
          spdlog::critical("{}: reading the ring's eventfd: {}; no more completions",
                           path_, ec.message());
          return;
        }
        ReapCompletions();
        WaitForCompletions();
      });
}

void UringStore::ReapCompletions() {
  io_uring_cqe* cqe = nullptr;
  while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
    Op* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
    const int result = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    --ops_in_kernel_;
    OnCompletion(op, result);
  }
  if (!backlog_.empty()) {
    ScheduleSubmit();
  }
}

void UringStore::OnCompletion(Op* op, int result) {
  if (result == -EAGAIN || result == -EINTR) {
    Queue(op);
    return;
  }
  if (result < 0) {
    const char* what = op->kind == OpKind::kRead ? "read"
                       : op->kind == OpKind::kWrite
                           ? (op->write_through ? "write-through" : "write")
                       : op->kind == OpKind::kDatasync  ? "fdatasync"
                       : op->kind == OpKind::kFallocate ? "fallocate"
                                                        : "fadvise";
    Finish(op, Status::Error(-result, std::string(what) + " " + path_ + " at " +
                                          std::to_string(op->offset_bytes + op->done_bytes) +
                                          "+" +
                                          std::to_string(op->length_bytes - op->done_bytes)));
    return;
  }
  if (op->kind == OpKind::kRead || op->kind == OpKind::kWrite) {
    if (result == 0) {
      // The file shrank under us, or the device stopped accepting data.
      Finish(op, Status::Error(EIO, std::string(op->kind == OpKind::kRead ? "read" : "write") +
                                        " " + path_ + " made no progress at " +
                                        std::to_string(op->offset_bytes + op->done_bytes)));
      return;
    }
    op->done_bytes += static_cast<uint64_t>(result);
    if (op->done_bytes < op->length_bytes) {
      // A short transfer: continue with the rest, from where it stopped.
      op->fd = FdFor(op->offset_bytes + op->done_bytes, op->length_bytes - op->done_bytes,
                     op->buffer + op->done_bytes);
      Queue(op);
      return;
    }
  }
  Finish(op, Status::Ok());
}

void UringStore::Finish(Op* op, Status status) {
  StoreDone done = std::move(op->done);
  op->done = nullptr;
  free_ops_.push_back(op);
  done(std::move(status));
}

}  // namespace mirror
