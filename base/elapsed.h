#pragma once
// Elapsed time for the latency counters in status (sums of microseconds, /proc/diskstats style).

#include <chrono>
#include <cstdint>

namespace base {

using SteadyTime = std::chrono::steady_clock::time_point;

// Whole microseconds from `start` to `end`.
inline uint64_t MicrosBetween(SteadyTime start, SteadyTime end) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(end - start).count());
}

// Whole microseconds from `start` to now on the steady clock.
inline uint64_t MicrosSince(SteadyTime start) {
  return MicrosBetween(start, std::chrono::steady_clock::now());
}

}  // namespace base
