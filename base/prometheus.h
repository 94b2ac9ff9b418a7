#pragma once
// PrometheusText: builds a document in Prometheus' text exposition format (version 0.0.4), the
// one every Prometheus server, agent and exporter-scraping tool reads.
//
// Each metric family is written once with its HELP and TYPE lines, then its samples. Names must
// match [a-zA-Z_:][a-zA-Z0-9_:]* (checked: they are constants in this program); label values
// are escaped. Histograms of base::LatencyHistogram are written in seconds with the standard
// buckets named in kPrometheusBoundsUs (a subset of the histogram's own bounds, so the
// cumulative counts are exact).

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "base/latency_histogram.h"

namespace base {

using Labels = std::vector<std::pair<std::string, std::string>>;

// The bucket bounds exposed to Prometheus, in microseconds: 10 µs to 10 s in 1-2.5-5 steps.
inline constexpr std::array<uint64_t, 19> kPrometheusBoundsUs = {
    10,    25,    50,     100,    250,    500,     1000,    2500,    5000,    10000,
    25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};

class PrometheusText {
 public:
  // A family with one sample per call of the Sample overloads below, or a single sample.
  void Gauge(const std::string& name, const std::string& help, double value,
             const Labels& labels = {});
  void Counter(const std::string& name, const std::string& help, double value,
               const Labels& labels = {});
  // A state set: one gauge sample per state, 1 for `current`, 0 for the others, under the label
  // `label`. `current` need not be among `states` (it is then added, unless empty).
  void StateSet(const std::string& name, const std::string& help, const std::string& label,
                const std::vector<std::string>& states, const std::string& current);
  void Histogram(const std::string& name, const std::string& help, const LatencyHistogram& h);

  const std::string& text() const { return text_; }

 private:
  void Family(const std::string& name, const std::string& help, const char* type);
  void Sample(const std::string& name, const Labels& labels, double value);

  std::string text_;
};

// "a\"b" for a"b: the escaping of label values (backslash, double quote, newline).
std::string EscapeLabelValue(const std::string& value);
// A number as Prometheus reads it: integers exactly, others with enough digits; +Inf, NaN.
std::string FormatSampleValue(double value);

}  // namespace base
