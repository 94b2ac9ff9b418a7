// Proves the buffer pool keeps its byte budget, recycles buffers, and wakes waiters on release.

#include "base/buffer_pool.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace base {
namespace {

TEST(BufferPoolTest, BuffersAreAlignedAndLargeEnough) {
  BufferPool pool(1 << 20);
  auto b = pool.TryAcquire(5000);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->size(), 5000u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % BufferPool::kAlignmentBytes, 0u);
  EXPECT_EQ(pool.in_use_bytes(), 8192u);
}

TEST(BufferPoolTest, BudgetIsNeverExceeded) {
  BufferPool pool(64 * 1024);
  std::vector<Buffer> held;
  for (int i = 0; i < 16; ++i) {
    auto b = pool.TryAcquire(4096);
    ASSERT_TRUE(b.has_value());
    held.push_back(std::move(*b));
  }
  EXPECT_FALSE(pool.TryAcquire(1).has_value());
  held.pop_back();
  EXPECT_TRUE(pool.TryAcquire(4096).has_value());
  EXPECT_FALSE(pool.TryAcquire(128 * 1024).has_value());
}

TEST(BufferPoolTest, CachedBuffersOfOtherSizesAreFreedToMakeRoom) {
  BufferPool pool(64 * 1024);
  {
    auto a = pool.TryAcquire(32 * 1024);
    auto b = pool.TryAcquire(32 * 1024);
    ASSERT_TRUE(a && b);
  }
  // Both 32 KiB buffers sit on the free list; a 64 KiB one still fits.
  EXPECT_TRUE(pool.TryAcquire(64 * 1024).has_value());
}

TEST(BufferPoolTest, ReleaseNotifiesWaitersOnce) {
  BufferPool pool(1 << 20);
  int calls = 0;
  auto b = pool.TryAcquire(4096);
  pool.NotifyOnRelease([&] { ++calls; });
  b.reset();
  EXPECT_EQ(calls, 1);
  auto c = pool.TryAcquire(4096);
  c.reset();
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace base
