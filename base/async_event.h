#pragma once
// AsyncEvent: lets one coroutine sleep until another handler on the same loop says
// "something changed". It carries no state of its own, so the waiter must re-check its
// condition in a loop:
//
//   while (!condition) co_await event.Wait();
//
// Notify() before Wait() is not remembered; that is safe precisely because of the re-check,
// and because everything runs on one loop thread.
//
// Notify() posts every parked waiter's continuation to the loop (never resumes it inline), so a
// notifier's state is consistent by the time a waiter runs. Waiting is not a timer: an earlier
// version parked waiters on a steady_timer that expired at time_point::max, so every Wait()
// and Notify() went through the reactor's timer queue and, with no other timer pending,
// re-armed its timerfd (a `timerfd_settime` per NBD request). Here a parked waiter is just a
// stored completion handler; it counts as outstanding work, like the timer wait did, so
// io_context::run() does not return while a coroutine is parked.
//
// Destroying an event with parked waiters posts them (as cancelling the timer did). If the
// io_context shuts down first, its AsyncEventService destroys the parked handlers without
// running them, as asio does with its own pending operations; the event is then inert.
//
// Loop thread only.

#include <memory>
#include <utility>
#include <vector>

#include "base/asio.h"

namespace base {

class AsyncEvent;

namespace detail {

// A parked coroutine: its type-erased completion handler and the work it keeps counted.
class ParkedWaiter {
 public:
  virtual ~ParkedWaiter() = default;
  // Posts the continuation to `executor`; call once.
  virtual void Post(const asio::any_io_executor& executor) = 0;
};

template <typename Handler>
class ParkedWaiterImpl final : public ParkedWaiter {
 public:
  ParkedWaiterImpl(Handler handler, asio::any_io_executor work)
      : handler_(std::move(handler)), work_(std::move(work)) {}
  void Post(const asio::any_io_executor& executor) override {
    asio::post(executor, std::move(handler_));
  }

 private:
  Handler handler_;
  asio::any_io_executor work_;  // Tracks outstanding work while parked.
};

// Owns nothing itself: at io_context shutdown it tells each live event to drop its waiters.
class AsyncEventService final : public asio::execution_context::service {
 public:
  using key_type = AsyncEventService;
  static inline asio::execution_context::id id;

  explicit AsyncEventService(asio::execution_context& context)
      : asio::execution_context::service(context) {}

  void Register(AsyncEvent* event) { events_.push_back(event); }
  void Unregister(AsyncEvent* event) {
    for (auto& e : events_) {
      if (e == event) {
        e = events_.back();
        events_.pop_back();
        return;
      }
    }
  }
  void shutdown() override;

 private:
  std::vector<AsyncEvent*> events_;
};

}  // namespace detail

class AsyncEvent {
 public:
  explicit AsyncEvent(const asio::any_io_executor& executor)
      : executor_(executor),
        service_(&asio::use_service<detail::AsyncEventService>(
            asio::query(executor, asio::execution::context))) {
    service_->Register(this);
  }
  AsyncEvent(const AsyncEvent&) = delete;
  AsyncEvent& operator=(const AsyncEvent&) = delete;

  ~AsyncEvent() {
    if (service_ != nullptr) {
      service_->Unregister(this);
      Notify();
    }
  }

  asio::awaitable<void> Wait() {
    co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
        [this](auto handler) {
          using Handler = decltype(handler);
          waiters_.push_back(std::make_unique<detail::ParkedWaiterImpl<Handler>>(
              std::move(handler),
              asio::prefer(executor_, asio::execution::outstanding_work.tracked)));
        },
        asio::use_awaitable);
  }

  void Notify() {
    if (waiters_.empty()) {
      return;
    }
    // A continuation may park again on this event before the loop returns here; move the
    // current waiters out first so that a re-park is not posted twice.
    auto waiters = std::move(waiters_);
    waiters_.clear();
    for (auto& waiter : waiters) {
      waiter->Post(executor_);
    }
  }

 private:
  friend class detail::AsyncEventService;

  // Called by the service at io_context shutdown: drop the parked handlers unrun.
  std::vector<std::unique_ptr<detail::ParkedWaiter>> Detach() {
    service_ = nullptr;
    return std::move(waiters_);
  }

  asio::any_io_executor executor_;
  detail::AsyncEventService* service_;
  std::vector<std::unique_ptr<detail::ParkedWaiter>> waiters_;
};

inline void detail::AsyncEventService::shutdown() {
  // Collect first: destroying a handler destroys its coroutine frame, which may destroy other
  // events (they see a null service and do not touch this list).
  std::vector<std::unique_ptr<ParkedWaiter>> dropped;
  auto events = std::move(events_);
  events_.clear();
  for (AsyncEvent* event : events) {
    for (auto& waiter : event->Detach()) {
      dropped.push_back(std::move(waiter));
    }
  }
  dropped.clear();
}

}  // namespace base
