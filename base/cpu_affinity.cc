#include "base/cpu_affinity.h"

#include <sched.h>

#include <cerrno>
#include <cstring>

namespace base {
namespace {

// Reads a decimal CPU number at text[*pos]; advances *pos past it.
Result<int> ReadCpu(const std::string& text, size_t* pos, int max_cpus) {
  const size_t start = *pos;
  long value = 0;
  while (*pos < text.size() && text[*pos] >= '0' && text[*pos] <= '9') {
    value = value * 10 + (text[*pos] - '0');
    if (value >= max_cpus) {
      return Status::Error(
          EINVAL, "CPU list '" + text + "': CPU numbers stop at " + std::to_string(max_cpus - 1));
    }
    ++*pos;
  }
  if (*pos == start) {
    return Status::Error(EINVAL, "CPU list '" + text + "': expected a CPU number at position " +
                                     std::to_string(start + 1) + " (a list looks like 1 or 0-3,6)");
  }
  return static_cast<int>(value);
}

}  // namespace

Result<std::set<int>> ParseCpuList(const std::string& text, int max_cpus) {
  std::set<int> cpus;
  size_t pos = 0;
  while (true) {
    Result<int> first = ReadCpu(text, &pos, max_cpus);
    if (!first.ok()) {
      return first.status();
    }
    int last = first.value();
    if (pos < text.size() && text[pos] == '-') {
      ++pos;
      Result<int> end = ReadCpu(text, &pos, max_cpus);
      if (!end.ok()) {
        return end.status();
      }
      last = end.value();
      if (last < first.value()) {
        return Status::Error(EINVAL, "CPU list '" + text + "': range " +
                                         std::to_string(first.value()) + "-" +
                                         std::to_string(last) + " runs backwards");
      }
    }
    for (int cpu = first.value(); cpu <= last; ++cpu) {
      cpus.insert(cpu);
    }
    if (pos == text.size()) {
      return cpus;
    }
    if (text[pos] != ',') {
      return Status::Error(EINVAL, "CPU list '" + text + "': unexpected '" +
                                       std::string(1, text[pos]) + "' at position " +
                                       std::to_string(pos + 1));
    }
    ++pos;
  }
}

std::string FormatCpuList(const std::set<int>& cpus) {
  std::string out;
  for (auto it = cpus.begin(); it != cpus.end();) {
    const int first = *it;
    int last = first;
    for (++it; it != cpus.end() && *it == last + 1; ++it) {
      last = *it;
    }
    if (!out.empty()) {
      out += ",";
    }
    out += std::to_string(first);
    if (last != first) {
      out += "-" + std::to_string(last);
    }
  }
  return out;
}

Status ApplyCpuAffinity(const std::set<int>& cpus) {
  if (cpus.empty()) {
    return Status::Error(EINVAL, "empty CPU list");
  }
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (::sched_getaffinity(0, sizeof(allowed), &allowed) != 0) {
    return Status::FromErrno("sched_getaffinity");
  }
  cpu_set_t wanted;
  CPU_ZERO(&wanted);
  for (int cpu : cpus) {
    if (cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &allowed)) {
      std::set<int> usable;
      for (int c = 0; c < CPU_SETSIZE; ++c) {
        if (CPU_ISSET(c, &allowed)) {
          usable.insert(c);
        }
      }
      return Status::Error(EINVAL, "CPU " + std::to_string(cpu) +
                                       " is not available to this process (it may use " +
                                       FormatCpuList(usable) + ")");
    }
    CPU_SET(cpu, &wanted);
  }
  if (::sched_setaffinity(0, sizeof(wanted), &wanted) != 0) {
    return Status::FromErrno("sched_setaffinity " + FormatCpuList(cpus));
  }
  return Status::Ok();
}

}  // namespace base
