// Proves the AsyncEvent contract: Notify wakes every parked waiter, later and from the loop (not
// inside Notify); a Notify with nobody parked is not remembered; a parked waiter keeps run()
// from returning, like the timer wait it replaced; and an io_context destroyed with waiters
// still parked destroys their coroutines without running them (no leak, no crash).

#include "base/async_event.h"

#include <gtest/gtest.h>

#include <memory>

#include "tests/unit/support/loop.h"

namespace {

using testing_support::Drain;

asio::awaitable<void> WaitOnce(base::AsyncEvent& event, int& woken) {
  co_await event.Wait();
  ++woken;
}

TEST(AsyncEventTest, NotifyWakesEveryParkedWaiterLaterFromTheLoop) {
  asio::io_context io;
  base::AsyncEvent event(io.get_executor());
  int woken = 0;
  asio::co_spawn(io, WaitOnce(event, woken), asio::detached);
  asio::co_spawn(io, WaitOnce(event, woken), asio::detached);
  Drain(io);
  EXPECT_EQ(woken, 0);
  event.Notify();
  EXPECT_EQ(woken, 0);  // Posted, not resumed inside Notify.
  Drain(io);
  EXPECT_EQ(woken, 2);
}

TEST(AsyncEventTest, NotifyWithNobodyParkedIsNotRemembered) {
  asio::io_context io;
  base::AsyncEvent event(io.get_executor());
  int woken = 0;
  event.Notify();
  asio::co_spawn(io, WaitOnce(event, woken), asio::detached);
  Drain(io);
  EXPECT_EQ(woken, 0);
  event.Notify();
  Drain(io);
  EXPECT_EQ(woken, 1);
}

TEST(AsyncEventTest, AParkedWaiterCountsAsOutstandingWork) {
  asio::io_context io;
  base::AsyncEvent event(io.get_executor());
  int woken = 0;
  asio::co_spawn(io, WaitOnce(event, woken), asio::detached);
  asio::steady_timer timer(io, std::chrono::milliseconds(20));
  timer.async_wait([&](const boost::system::error_code&) { event.Notify(); });
  io.run();  // Returns only once the waiter has run: it was work until then.
  EXPECT_EQ(woken, 1);
}

struct Owner {
  explicit Owner(asio::io_context& io) : event(io.get_executor()) {}
  base::AsyncEvent event;
};

asio::awaitable<void> WaitHolding(std::shared_ptr<Owner> owner, int& woken) {
  co_await owner->event.Wait();
  ++woken;
}

TEST(AsyncEventTest, ShutdownDestroysParkedWaitersWithoutRunningThem) {
  int woken = 0;
  std::weak_ptr<Owner> weak;
  {
    asio::io_context io;
    auto owner = std::make_shared<Owner>(io);
    weak = owner;
    // The coroutine owns the only reference to the event that parks it: a cycle that only
    // the shutdown can break.
    asio::co_spawn(io, WaitHolding(std::move(owner), woken), asio::detached);
    Drain(io);
  }
  EXPECT_EQ(woken, 0);
  EXPECT_TRUE(weak.expired());
}

TEST(AsyncEventTest, DestroyingTheEventReleasesItsWaiters) {
  asio::io_context io;
  auto event = std::make_unique<base::AsyncEvent>(io.get_executor());
  int woken = 0;
  asio::co_spawn(io, WaitOnce(*event, woken), asio::detached);
  Drain(io);
  // The waiter resumes after the event is gone; it must not touch it (WaitOnce does not).
  event.reset();
  Drain(io);
  EXPECT_EQ(woken, 1);
}

}  // namespace
