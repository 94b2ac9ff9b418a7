#pragma once
// AwaitDone: waits, inside a coroutine, for a callback-style operation that reports a Status
// (the LocalStore / GroupCommit / WriteIntentLog convention).
//
//   Status st = co_await AwaitDone(io, [&](StoreDone done) { log.Persist(std::move(done)); });
//
// `start` must call `done` exactly once, from the loop. Loop thread only.

#include <memory>
#include <optional>

#include "base/async_event.h"
#include "base/status.h"
#include "mirror/local_store.h"

namespace mirror {

template <typename Start>
asio::awaitable<base::Status> AwaitDone(asio::io_context& io, Start start) {
  struct State {
    explicit State(asio::io_context& io) : event(io.get_executor()) {}
    std::optional<base::Status> result;
    base::AsyncEvent event;
  };
  auto state = std::make_shared<State>(io);
  start([state](base::Status st) {
    state->result = std::move(st);
    state->event.Notify();
  });
  while (!state->result) {
    co_await state->event.Wait();
  }
  co_return *state->result;
}

}  // namespace mirror
