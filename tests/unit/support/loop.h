#pragma once
// Test helper: runs an io_context until a condition holds, with a deadline so a bug shows up
// as a failed assertion instead of a hung test.

#include <chrono>
#include <functional>

#include "base/asio.h"

namespace testing_support {

inline bool RunUntil(asio::io_context& io, const std::function<bool()>& done,
                     std::chrono::milliseconds deadline = std::chrono::seconds(20)) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  io.restart();
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) {
      return false;
    }
    io.run_one_for(std::chrono::milliseconds(50));
    io.restart();
  }
  return true;
}

// Runs every handler that is ready now, without blocking.
inline void Drain(asio::io_context& io) {
  io.restart();
  io.poll();
  io.restart();
}

}  // namespace testing_support
