// Proves the Prometheus text writer produces the exposition format: HELP/TYPE per family,
// escaped label values, exact integers, cumulative histogram buckets in seconds ending in +Inf.
// (The integration test metrics_test.sh also parses a live daemon's document with the Python
// client's parser and lints it with promtool.)

#include "base/prometheus.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

namespace base {
namespace {

TEST(PrometheusTextTest, GaugesAndCountersCarryHelpTypeAndLabels) {
  PrometheusText out;
  out.Gauge("nbdmirror_x_bytes", "Some bytes.", 4096);
  out.Counter("nbdmirror_y_total", "A count\nover two lines \\ here.", 3, {{"side", "a"}});
  EXPECT_EQ(out.text(),
            "# HELP nbdmirror_x_bytes Some bytes.\n"
            "# TYPE nbdmirror_x_bytes gauge\n"
            "nbdmirror_x_bytes 4096\n"
            "# HELP nbdmirror_y_total A count\\nover two lines \\\\ here.\n"
            "# TYPE nbdmirror_y_total counter\n"
            "nbdmirror_y_total{side=\"a\"} 3\n");
}

TEST(PrometheusTextTest, LabelValuesAreEscaped) {
  EXPECT_EQ(EscapeLabelValue("/srv/pg \"data\"\\x\n"), "/srv/pg \\\"data\\\"\\\\x\\n");
}

TEST(PrometheusTextTest, ValuesAreExactIntegersOrShortestDecimals) {
  EXPECT_EQ(FormatSampleValue(0), "0");
  EXPECT_EQ(FormatSampleValue(18446744073709.0), "18446744073709");
  EXPECT_EQ(FormatSampleValue(0.0025), "0.0025");
  EXPECT_EQ(FormatSampleValue(1e-05), "1e-05");
  EXPECT_EQ(FormatSampleValue(1.0 / 0.0), "+Inf");
}

TEST(PrometheusTextTest, StateSetMarksExactlyTheCurrentState) {
  PrometheusText out;
  out.StateSet("nbdmirror_disk", "Disk.", "state", {"UpToDate", "Outdated"}, "Outdated");
  EXPECT_NE(out.text().find("nbdmirror_disk{state=\"UpToDate\"} 0\n"), std::string::npos);
  EXPECT_NE(out.text().find("nbdmirror_disk{state=\"Outdated\"} 1\n"), std::string::npos);
  PrometheusText other;
  other.StateSet("nbdmirror_disk", "Disk.", "state", {"UpToDate"}, "Weird");
  EXPECT_NE(other.text().find("nbdmirror_disk{state=\"Weird\"} 1\n"), std::string::npos);
}

TEST(PrometheusTextTest, HistogramBucketsAreCumulativeSecondsEndingInInf) {
  LatencyHistogram h;
  h.Record(20);   // <= 25 µs
  h.Record(400);  // <= 500 µs
  h.Record(400);
  h.Record(3'000'000);   // <= 5 s
  h.Record(60'000'000);  // slower than every bound
  PrometheusText out;
  out.Histogram("nbdmirror_w_seconds", "W.", h);
  const std::string& t = out.text();
  EXPECT_NE(t.find("# TYPE nbdmirror_w_seconds histogram\n"), std::string::npos);
  EXPECT_NE(t.find("nbdmirror_w_seconds_bucket{le=\"1e-05\"} 0\n"), std::string::npos);
  EXPECT_NE(t.find("nbdmirror_w_seconds_bucket{le=\"2.5e-05\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("nbdmirror_w_seconds_bucket{le=\"0.00025\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("nbdmirror_w_seconds_bucket{le=\"0.0005\"} 3\n"), std::string::npos);
  EXPECT_NE(t.find("nbdmirror_w_seconds_bucket{le=\"5\"} 4\n"), std::string::npos);
  EXPECT_NE(t.find("nbdmirror_w_seconds_bucket{le=\"10\"} 4\n"), std::string::npos);
  EXPECT_NE(t.find("nbdmirror_w_seconds_bucket{le=\"+Inf\"} 5\n"), std::string::npos);
  EXPECT_NE(t.find("nbdmirror_w_seconds_count 5\n"), std::string::npos);
  EXPECT_NE(t.find("nbdmirror_w_seconds_sum 63.00082\n"), std::string::npos);
  // The exposed bounds are bounds of the histogram itself, so every count above is exact.
  for (uint64_t bound : kPrometheusBoundsUs) {
    EXPECT_NE(std::find(LatencyHistogram::kUpperBoundsUs.begin(),
                        LatencyHistogram::kUpperBoundsUs.end(), bound),
              LatencyHistogram::kUpperBoundsUs.end())
        << bound;
  }
}

}  // namespace
}  // namespace base
