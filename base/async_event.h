#pragma once
// AsyncEvent: lets one coroutine sleep until another handler on the same loop says
// "something changed". It carries no state of its own, so the waiter must re-check its
// condition in a loop:
//
//   while (!condition) co_await event.Wait();
//
// Notify() before Wait() is not remembered; that is safe precisely because of the re-check,
// and because everything runs on one loop thread.

#include "base/asio.h"

namespace base {

class AsyncEvent {
 public:
  explicit AsyncEvent(const asio::any_io_executor& executor)
      : timer_(executor, asio::steady_timer::time_point::max()) {}

  asio::awaitable<void> Wait() {
    boost::system::error_code ignored;
    timer_.expires_at(asio::steady_timer::time_point::max());
    co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }


  void Notify() { timer_.cancel(); }

 private:
  asio::steady_timer timer_;
};

}  // namespace base
