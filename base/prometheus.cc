#include "base/prometheus.h"

#include <charconv>
#include <cmath>
#include <cstdio>

#include "base/check.h"

namespace base {
namespace {

// Metric names may hold colons; label names may not.
bool ValidName(const std::string& name, bool label = false) {
  if (name.empty()) {
    return false;
  }
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (c == ':' && !label);
    const bool digit = c >= '0' && c <= '9';
    if (!letter && !(digit && i > 0)) {
      return false;
    }
  }
  return true;
}

// Backslash and newline become \\ and \n, and where `quote` (label values) a double quote
// becomes \"; HELP text leaves quotes alone.
std::string Escape(const std::string& text, bool quote) {
  std::string out;
  for (char c : text) {
    if (c == '\\' || (quote && c == '"')) {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string EscapeLabelValue(const std::string& value) { return Escape(value, true); }

std::string FormatSampleValue(double value) {
  if (std::isnan(value)) {
    return "NaN";
  }
  if (std::isinf(value)) {
    return value > 0 ? "+Inf" : "-Inf";
  }
  char buf[64];
  if (value == std::floor(value) && std::fabs(value) < 9.007199254740992e15) {
    std::snprintf(buf, sizeof buf, "%.0f", value);
    return buf;
  }
  // The shortest text that reads back as the same double, written as %g would (and Go's
  // Prometheus clients do): "0.0005", "1e-05".
  const std::to_chars_result r =
      std::to_chars(buf, buf + sizeof buf, value, std::chars_format::general);
  return std::string(buf, r.ptr);
}

void PrometheusText::Family(const std::string& name, const std::string& help, const char* type) {
  CHECK(ValidName(name));
  text_ += "# HELP " + name + " " + Escape(help, false) + "\n";
  text_ += "# TYPE " + name + " " + type + "\n";
}

void PrometheusText::Sample(const std::string& name, const Labels& labels, double value) {
  text_ += name;
  if (!labels.empty()) {
    text_ += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      CHECK(ValidName(labels[i].first, /*label=*/true));
      text_ += (i ? "," : "") + labels[i].first + "=\"" + EscapeLabelValue(labels[i].second) + '"';
    }
    text_ += '}';
  }
  text_ += ' ' + FormatSampleValue(value) + '\n';
}

void PrometheusText::Gauge(const std::string& name, const std::string& help, double value,
                           const Labels& labels) {
  Family(name, help, "gauge");
  Sample(name, labels, value);
}

void PrometheusText::Counter(const std::string& name, const std::string& help, double value,
                             const Labels& labels) {
  Family(name, help, "counter");
  Sample(name, labels, value);
}

void PrometheusText::StateSet(const std::string& name, const std::string& help,
                              const std::string& label, const std::vector<std::string>& states,
                              const std::string& current) {
  Family(name, help, "gauge");
  bool seen = false;
  for (const std::string& state : states) {
    seen = seen || state == current;
    Sample(name, {{label, state}}, state == current ? 1 : 0);
  }
  if (!seen && !current.empty()) {  // An empty label value would read as no label at all.
    Sample(name, {{label, current}}, 1);
  }
}

void PrometheusText::Histogram(const std::string& name, const std::string& help,
                               const LatencyHistogram& h) {
  Family(name, help, "histogram");
  for (uint64_t bound_us : kPrometheusBoundsUs) {
    Sample(name + "_bucket", {{"le", FormatSampleValue(static_cast<double>(bound_us) / 1e6)}},
           static_cast<double>(h.CountAtMost(bound_us)));
  }
  Sample(name + "_bucket", {{"le", "+Inf"}}, static_cast<double>(h.count()));
  Sample(name + "_sum", {}, static_cast<double>(h.sum_us()) / 1e6);
  Sample(name + "_count", {}, static_cast<double>(h.count()));
}

}  // namespace base
