#pragma once
// LatencyHistogram: how long requests took, as counts per latency bucket, for the Prometheus
// histograms and the percentiles in status.
//
// The buckets' upper bounds run from 10 µs to 10 s in steps of a fifth to a third (1, 1.25, 1.5,
// 2, 2.5, 3, 4, 5, 6, 8 times a power of ten, in whole microseconds: the first decade is 10, 12,
// 15, ...), plus one for everything slower. A percentile read from it is off by at most one
// step. Its count and sum are the /proc/diskstats-style counters of status. Recording is an index
// search over 61 bounds and three additions: cheap enough for every request on the loop thread.
// Not thread-safe, like the rest of a volume's counters.
//
// RecentLatency keeps two such histograms for consecutive windows (the last complete one and the
// current one, aligned to the first sample), so status can say what the percentiles were over the
// last one to two windows rather than since the daemon started.

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "base/elapsed.h"

namespace base {

class LatencyHistogram {
 public:
  static constexpr size_t kBounds = 61;  // Finite upper bounds; bucket kBounds is "slower".

  // The finite upper bounds in microseconds, ascending.
  static constexpr std::array<uint64_t, kBounds> kUpperBoundsUs = [] {
    constexpr std::array<uint64_t, 10> steps = {100, 125, 150, 200, 250, 300, 400, 500, 600, 800};
    std::array<uint64_t, kBounds> bounds{};
    uint64_t decade = 10;  // µs; steps are in hundredths of a decade.
    size_t i = 0;
    for (int d = 0; d < 6; ++d, decade *= 10) {
      for (uint64_t step : steps) {
        bounds[i++] = decade * step / 100;
      }
    }
    bounds[i] = decade;  // 10 s.
    return bounds;
  }();

  void Record(uint64_t micros) {
    const auto* it = std::lower_bound(kUpperBoundsUs.begin(), kUpperBoundsUs.end(), micros);
    ++counts_[static_cast<size_t>(it - kUpperBoundsUs.begin())];
    ++count_;
    sum_us_ += micros;
  }

  void Add(const LatencyHistogram& other) {
    for (size_t i = 0; i < counts_.size(); ++i) {
      counts_[i] += other.counts_[i];
    }
    count_ += other.count_;
    sum_us_ += other.sum_us_;
  }

  void Clear() { *this = LatencyHistogram(); }

  uint64_t count() const { return count_; }
  uint64_t sum_us() const { return sum_us_; }
  // Requests that took at most `upper_bound_us`, which must be one of kUpperBoundsUs.
  uint64_t CountAtMost(uint64_t upper_bound_us) const {
    uint64_t total = 0;
    for (size_t i = 0; i < kBounds && kUpperBoundsUs[i] <= upper_bound_us; ++i) {
      total += counts_[i];
    }
    return total;
  }

  // The q-quantile (0 < q <= 1) in microseconds, interpolated linearly inside its bucket as
  // Prometheus' histogram_quantile does; 0 with no samples. In the open last bucket the answer
  // is its lower bound (10 s): "at least that".
  uint64_t Quantile(double q) const {
    if (count_ == 0) {
      return 0;
    }
    const double rank = q * static_cast<double>(count_);
    uint64_t below = 0;
    for (size_t i = 0; i < counts_.size(); ++i) {
      if (counts_[i] == 0 || static_cast<double>(below + counts_[i]) < rank) {
        below += counts_[i];
        continue;
      }
      if (i == kBounds) {
        return kUpperBoundsUs[kBounds - 1];
      }
      const double lower = i == 0 ? 0.0 : static_cast<double>(kUpperBoundsUs[i - 1]);
      const double upper = static_cast<double>(kUpperBoundsUs[i]);
      const double within = (rank - static_cast<double>(below)) / static_cast<double>(counts_[i]);
      return static_cast<uint64_t>(lower + (upper - lower) * std::clamp(within, 0.0, 1.0) + 0.5);
    }
    return kUpperBoundsUs[kBounds - 1];
  }

 private:
  std::array<uint64_t, kBounds + 1> counts_{};
  uint64_t count_ = 0;
  uint64_t sum_us_ = 0;
};

class RecentLatency {
 public:
  explicit RecentLatency(std::chrono::seconds window = std::chrono::seconds(60))
      : window_(window) {}

  void Record(uint64_t micros, SteadyTime now) {
    Rotate(now);
    current_.Record(micros);
  }

  // The q-quantile over the current and the previous window (the last one to two windows).
  uint64_t Quantile(double q, SteadyTime now) {
    Rotate(now);
    LatencyHistogram both = previous_;
    both.Add(current_);
    return both.Quantile(q);
  }

 private:
  // Moves to the window that holds `now`. The first window starts at the first call and the
  // later ones stay aligned to it, so nothing older than two windows is ever counted.
  void Rotate(SteadyTime now) {
    if (!started_) {
      started_ = true;
      current_start_ = now;
      return;
    }
    if (now - current_start_ < window_) {
      return;
    }
    const auto windows = (now - current_start_) / window_;
    if (windows == 1) {
      previous_ = current_;
    } else {
      previous_.Clear();  // The current window ended more than a window ago.
    }
    current_.Clear();
    current_start_ += windows * window_;
  }

  std::chrono::steady_clock::duration window_;
  bool started_ = false;
  SteadyTime current_start_{};
  LatencyHistogram current_;
  LatencyHistogram previous_;
};

// A request's time from `start` to now, into its histogram (since start) and its recent window.
inline void RecordSince(SteadyTime start, LatencyHistogram& all, RecentLatency& recent) {
  const SteadyTime now = std::chrono::steady_clock::now();
  const uint64_t us = MicrosBetween(start, now);
  all.Record(us);
  recent.Record(us, now);
}

}  // namespace base
