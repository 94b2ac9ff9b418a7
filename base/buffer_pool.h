#pragma once
// BufferPool: aligned I/O buffers under one byte budget shared by every connection.
//
// Buffers are 4 KiB-aligned (O_DIRECT needs it) and come in power-of-two size classes. A freed
// buffer goes back to its class's free list, so a steady workload allocates nothing. The
// budget bounds the memory held by in-flight requests: when a request cannot get a buffer, the
// connection stops reading its socket until another buffer comes back (NotifyOnRelease).
//
// Loop thread only. Buffers must be returned (destroyed) before the pool.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace base {

class BufferPool;

// An owned, aligned buffer of at least size() bytes. Moves only; returns itself on destruction.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<std::byte> span() const { return {data_, size_}; }
  bool empty() const { return data_ == nullptr; }

 private:
  friend class BufferPool;
  Buffer(BufferPool* pool, std::byte* data, size_t size, int size_class)
      : pool_(pool), data_(data), size_(size), size_class_(size_class) {}
  void Release();

  BufferPool* pool_ = nullptr;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  int size_class_ = 0;
};

class BufferPool {
 public:
  static constexpr size_t kAlignmentBytes = 4096;
  static constexpr size_t kMinClassBytes = 4096;

  // budget_bytes bounds the bytes handed out plus those kept on free lists.
  explicit BufferPool(size_t budget_bytes);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A buffer of at least `bytes` (may be 0), or nullopt when the budget is spent. Requests
  // larger than the budget never succeed; callers bound their sizes below it.
  std::optional<Buffer> TryAcquire(size_t bytes);

  // Registers a one-shot callback run (synchronously, on the loop) at the next release.
  void NotifyOnRelease(std::function<void()> callback);

  // For background walkers (resync, verify) that give way to client I/O when the budget is
  // spent: calls (owner->*resume)() at the next release, unless the owner is gone by then.
  template <typename T>
  void ResumeOnRelease(const std::shared_ptr<T>& owner, void (T::*resume)()) {
    NotifyOnRelease([weak = std::weak_ptr<T>(owner), resume] {
      if (auto self = weak.lock()) {
        ((*self).*resume)();
      }
    });
  }

  size_t budget_bytes() const { return budget_bytes_; }
  size_t in_use_bytes() const { return in_use_bytes_; }

 private:
  friend class Buffer;
  void Return(std::byte* data, int size_class);
  bool MakeRoom(size_t bytes);

  const size_t budget_bytes_;
  size_t in_use_bytes_ = 0;
  size_t cached_bytes_ = 0;
  std::vector<std::vector<std::byte*>> free_lists_;  // Indexed by size class.
  std::vector<std::function<void()>> release_waiters_;
};

}  // namespace base
