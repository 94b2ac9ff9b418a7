// Proves the latency histogram files samples under the right bounds, that its percentiles land
// within one bucket step of the exact ones, and that the recent window forgets old samples.

#include "base/latency_histogram.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

namespace base {
namespace {

TEST(LatencyHistogramTest, BoundsAscendFromTenMicrosecondsToTenSeconds) {
  const auto& b = LatencyHistogram::kUpperBoundsUs;
  EXPECT_EQ(b.front(), 10u);
  EXPECT_EQ(b.back(), 10'000'000u);
  EXPECT_TRUE(std::is_sorted(b.begin(), b.end()));
  EXPECT_EQ(std::adjacent_find(b.begin(), b.end()), b.end());  // strictly ascending
  for (size_t i = 1; i < b.size(); ++i) {
    EXPECT_LE(b[i], b[i - 1] * 4 / 3 + 1) << "step after " << b[i - 1];
  }
}

TEST(LatencyHistogramTest, CountsAtMostABoundIncludeSamplesEqualToIt) {
  LatencyHistogram h;
  h.Record(0);
  h.Record(10);
  h.Record(11);
  h.Record(250);
  h.Record(251);
  h.Record(20'000'000);  // slower than every bound
  EXPECT_EQ(h.count(), 6u);
  EXPECT_EQ(h.sum_us(), 0u + 10 + 11 + 250 + 251 + 20'000'000);
  EXPECT_EQ(h.CountAtMost(10), 2u);
  EXPECT_EQ(h.CountAtMost(250), 4u);
  EXPECT_EQ(h.CountAtMost(300), 5u);
  EXPECT_EQ(h.CountAtMost(10'000'000), 5u);
}

TEST(LatencyHistogramTest, QuantilesAreWithinOneStepOfTheExactOnes) {
  std::mt19937_64 rng(7);
  std::lognormal_distribution<double> latency(std::log(400.0), 0.8);  // around 0.4 ms
  LatencyHistogram h;
  std::vector<uint64_t> samples;
  for (int i = 0; i < 20000; ++i) {
    const auto us = static_cast<uint64_t>(latency(rng));
    samples.push_back(us);
    h.Record(us);
  }
  std::sort(samples.begin(), samples.end());
  for (double q : {0.5, 0.9, 0.99, 0.999}) {
    const double exact = static_cast<double>(samples[static_cast<size_t>(q * samples.size())]);
    const double estimate = static_cast<double>(h.Quantile(q));
    EXPECT_NEAR(estimate, exact, exact * 0.34) << "q=" << q;
  }
}

TEST(LatencyHistogramTest, QuantilesOfEmptyAndOfOneSample) {
  LatencyHistogram h;
  EXPECT_EQ(h.Quantile(0.5), 0u);
  h.Record(700);  // in (600, 800]
  EXPECT_GE(h.Quantile(0.5), 600u);
  EXPECT_LE(h.Quantile(0.5), 800u);
  EXPECT_EQ(h.Quantile(1.0), 800u);
  LatencyHistogram slow;
  slow.Record(30'000'000);
  EXPECT_EQ(slow.Quantile(0.99), 10'000'000u);  // "at least" the last bound
}

TEST(RecentLatencyTest, ForgetsWhatIsOlderThanTwoWindows) {
  RecentLatency recent(std::chrono::seconds(60));
  const SteadyTime t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) {
    recent.Record(5000, t0);  // 5 ms, in the first window
  }
  EXPECT_GE(recent.Quantile(0.5, t0), 4000u);
  // In the next window the old samples still count beside the new ones.
  const SteadyTime t1 = t0 + std::chrono::seconds(70);
  for (int i = 0; i < 300; ++i) {
    recent.Record(100, t1);
  }
  EXPECT_LE(recent.Quantile(0.5, t1), 100u);
  EXPECT_GE(recent.Quantile(0.99, t1), 4000u);
  // A window later the 5 ms samples are gone; two windows without samples leave nothing.
  const SteadyTime t2 = t1 + std::chrono::seconds(65);
  EXPECT_LE(recent.Quantile(0.99, t2), 100u);
  EXPECT_EQ(recent.Quantile(0.5, t2 + std::chrono::seconds(130)), 0u);
}

// The windows start at the first sample, whatever the steady clock's epoch: the same schedule
// at several offsets from it (a first version aligned windows to the epoch, so where t0 fell in
// its minute decided what was forgotten).
TEST(RecentLatencyTest, WindowsStartAtTheFirstSampleWhateverTheClockSays) {
  for (int offset_s = 0; offset_s < 120; offset_s += 7) {
    RecentLatency recent(std::chrono::seconds(60));
    const SteadyTime t0 = SteadyTime{} + std::chrono::hours(5) + std::chrono::seconds(offset_s);
    recent.Record(5000, t0);
    recent.Record(100, t0 + std::chrono::seconds(70));
    recent.Record(100, t0 + std::chrono::seconds(70));
    // [t0, t0+60) and [t0+60, t0+120): the 5 ms sample is still in the previous window.
    EXPECT_GE(recent.Quantile(0.99, t0 + std::chrono::seconds(110)), 4000u) << offset_s;
    // [t0+60, t0+120) and [t0+120, t0+180): it is gone.
    EXPECT_LE(recent.Quantile(0.99, t0 + std::chrono::seconds(125)), 100u) << offset_s;
  }
}

TEST(RecentLatencyTest, WindowsStayAlignedSoNothingOlderThanTwoWindowsCounts) {
  RecentLatency recent(std::chrono::seconds(60));
  const SteadyTime t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) {
    recent.Record(5000, t0);  // window [t0, t0+60)
  }
  recent.Record(100, t0 + std::chrono::seconds(119));  // window [t0+60, t0+120)
  // At t0+170 the windows are [t0+60, t0+120) and [t0+120, ...): the 5 ms samples, 170 s old,
  // are out, although fewer than two windows have passed since the 100 us one started a window.
  EXPECT_LE(recent.Quantile(0.5, t0 + std::chrono::seconds(170)), 100u);
}

}  // namespace
}  // namespace base
