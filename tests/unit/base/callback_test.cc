// Proves base::Callback keeps small closures in place and large ones on the heap, runs each
// exactly as it was given (arguments forwarded, results returned, move-only captures and
// arguments kept), destroys each closure exactly once whatever the moves, and is empty after a
// move or a reset.

#include "base/callback.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace base {
namespace {

// Where the closure lives: its `this`, compared with the Callback's own bytes.
bool Inside(const void* where, const void* object, std::size_t size) {
  const auto p = reinterpret_cast<std::uintptr_t>(where);
  const auto begin = reinterpret_cast<std::uintptr_t>(object);
  return p >= begin && p < begin + size;
}

// Counts live copies of itself, so a test can see every closure destroyed exactly once.
struct Tracked {
  explicit Tracked(int* live) : live(live) { ++*live; }
  Tracked(Tracked&& other) noexcept : live(other.live) { ++*live; }
  Tracked(const Tracked&) = delete;
  ~Tracked() { --*live; }
  int* live;
};

TEST(CallbackTest, SmallClosureIsKeptInPlace) {
  std::array<std::uint64_t, 10> payload{1, 2, 3, 4};  // 80 bytes
  struct Probe {
    std::array<std::uint64_t, 10> payload;
    const void* operator()() const { return this; }
  };
  Callback<const void*()> callback(Probe{payload});
  EXPECT_TRUE(Inside(callback(), &callback, sizeof(callback)));
  EXPECT_EQ(sizeof(callback), 96u);
}

TEST(CallbackTest, ClosureLargerThanTheRoomGoesToTheHeapAndStillRuns) {
  struct Probe {
    std::array<std::uint64_t, 16> payload;  // 128 bytes
    const void* operator()() const { return this; }
  };
  static_assert(!Callback<const void*()>::kFitsInPlace<Probe>);
  Callback<const void*()> callback(Probe{});
  const void* where = callback();
  EXPECT_FALSE(Inside(where, &callback, sizeof(callback)));
  Callback<const void*()> moved(std::move(callback));
  EXPECT_EQ(moved(), where);  // moved by pointer: the closure itself did not move
  EXPECT_FALSE(callback);     // NOLINT(bugprone-use-after-move): the point of the test
}

TEST(CallbackTest, ArgumentsAreForwardedAndTheResultReturned) {
  Callback<std::string(std::string, int)> join = [](std::string text, int n) {
    return text + ":" + std::to_string(n);
  };
  EXPECT_EQ(join("seq", 7), "seq:7");
  Callback<int(std::unique_ptr<int>)> take = [](std::unique_ptr<int> p) { return *p * 2; };
  EXPECT_EQ(take(std::make_unique<int>(21)), 42);
}

TEST(CallbackTest, MoveOnlyCaptureIsKeptAndDestroyedOnce) {
  int live = 0;
  {
    Callback<int()> callback = [tracked = Tracked(&live), value = std::make_unique<int>(5)] {
      return *value + (*tracked.live > 0 ? 1 : 0);
    };
    EXPECT_EQ(live, 1);
    Callback<int()> second(std::move(callback));
    Callback<int()> third;
    third = std::move(second);
    EXPECT_EQ(live, 1);
    EXPECT_FALSE(callback);  // NOLINT(bugprone-use-after-move)
    EXPECT_FALSE(second);    // NOLINT(bugprone-use-after-move)
    EXPECT_EQ(third(), 6);
  }
  EXPECT_EQ(live, 0);
}

TEST(CallbackTest, AssigningDestroysTheClosureHeld) {
  int first = 0;
  int large = 0;
  Callback<void()> callback = [tracked = Tracked(&first)] {};
  std::array<std::uint64_t, 16> big{};
  callback = [tracked = Tracked(&large), big] {};
  EXPECT_EQ(first, 0);
  EXPECT_EQ(large, 1);
  callback = nullptr;
  EXPECT_EQ(large, 0);
  EXPECT_FALSE(callback);
}

TEST(CallbackTest, MutableClosureKeepsItsStateBetweenCalls) {
  Callback<int()> counter = [n = 0]() mutable { return ++n; };
  counter();
  counter();
  EXPECT_EQ(counter(), 3);
}

TEST(CallbackTest, NullFunctionPointerMakesAnEmptyCallback) {
  int (*none)(int) = nullptr;
  Callback<int(int)> callback(none);
  EXPECT_FALSE(callback);
  Callback<int(int)> doubled(+[](int x) { return 2 * x; });
  EXPECT_EQ(doubled(4), 8);
}

TEST(CallbackDeathTest, CallingAnEmptyCallbackIsACheckFailure) {
  Callback<void()> empty;
  EXPECT_DEATH(empty(), "CHECK failed");
}

}  // namespace
}  // namespace base
