#include "base/buffer_pool.h"

#include <bit>
#include <cstdlib>
#include <utility>

#include "base/check.h"

namespace base {
namespace {

constexpr int kClassCount = 40;

size_t ClassBytes(int size_class) { return BufferPool::kMinClassBytes << size_class; }

int ClassFor(size_t bytes) {
  if (bytes <= BufferPool::kMinClassBytes) {
    return 0;
  }
  return std::bit_width((bytes - 1) / BufferPool::kMinClassBytes);
}

}  // namespace

Buffer::Buffer(Buffer&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      size_class_(other.size_class_) {}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = std::exchange(other.pool_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    size_class_ = other.size_class_;
  }
  return *this;
}

Buffer::~Buffer() { Release(); }

void Buffer::Release() {
  if (pool_ != nullptr && data_ != nullptr) {
    pool_->Return(data_, size_class_);
  }
  pool_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

BufferPool::BufferPool(size_t budget_bytes)
    : budget_bytes_(budget_bytes), free_lists_(kClassCount) {}

BufferPool::~BufferPool() {
  CHECK(in_use_bytes_ == 0);
  for (auto& list : free_lists_) {
    for (std::byte* p : list) {
      std::free(p);
    }
  }
}

bool BufferPool::MakeRoom(size_t bytes) {
  if (in_use_bytes_ + bytes > budget_bytes_) {
    return false;
  }
  // Give back cached buffers of other sizes until the new one fits in the budget.
  for (int c = kClassCount - 1; c >= 0 && in_use_bytes_ + cached_bytes_ + bytes > budget_bytes_;
       --c) {
    auto& list = free_lists_[static_cast<size_t>(c)];
    while (!list.empty() && in_use_bytes_ + cached_bytes_ + bytes > budget_bytes_) {
      std::free(list.back());
      list.pop_back();
      cached_bytes_ -= ClassBytes(c);
    }
  }
  return true;
}

std::optional<Buffer> BufferPool::TryAcquire(size_t bytes) {
  const int size_class = ClassFor(bytes);
  if (size_class >= kClassCount) {
    return std::nullopt;
  }
  const size_t class_bytes = ClassBytes(size_class);
  auto& list = free_lists_[static_cast<size_t>(size_class)];
  std::byte* data = nullptr;
  if (!list.empty()) {
    if (in_use_bytes_ + class_bytes > budget_bytes_) {
      return std::nullopt;
    }
    data = list.back();
    list.pop_back();
    cached_bytes_ -= class_bytes;
  } else {
    if (!MakeRoom(class_bytes)) {
      return std::nullopt;
    }
    data = static_cast<std::byte*>(std::aligned_alloc(kAlignmentBytes, class_bytes));
    if (data == nullptr) {
      return std::nullopt;
    }
  }
  in_use_bytes_ += class_bytes;
  return Buffer(this, data, bytes, size_class);
}

void BufferPool::Return(std::byte* data, int size_class) {
  const size_t class_bytes = ClassBytes(size_class);
  CHECK(in_use_bytes_ >= class_bytes);
  in_use_bytes_ -= class_bytes;
  free_lists_[static_cast<size_t>(size_class)].push_back(data);
  cached_bytes_ += class_bytes;
  if (!release_waiters_.empty()) {
    auto waiters = std::move(release_waiters_);
    release_waiters_.clear();
    for (auto& waiter : waiters) {
      waiter();
    }
  }
}

void BufferPool::NotifyOnRelease(std::function<void()> callback) {
  release_waiters_.push_back(std::move(callback));
}

}  // namespace base
