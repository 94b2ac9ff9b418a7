#pragma once
// --cpu-affinity: the CPUs the daemon (its loop thread and the io_uring workers it starts) may
// run on. On a disk whose completions all arrive on one CPU (a single interrupt queue, as a
// virtio disk with one queue has), a loop thread sleeping on that CPU is woken without an
// inter-processor interrupt; bench/RESULTS.md measures what that is worth.

#include <cstddef>
#include <set>
#include <string>

#include "base/status.h"

namespace base {

// "3", "0-3", "0,2-3,6": CPU numbers and inclusive ranges, comma-separated, each CPU below
// `max_cpus`. Empty items, reversed ranges, signs, spaces and trailing garbage are errors that
// name what is wrong.
Result<std::set<int>> ParseCpuList(const std::string& text, int max_cpus);

// "0,2-3,6" for {0, 2, 3, 6}: the inverse of ParseCpuList, for logs and errors.
std::string FormatCpuList(const std::set<int>& cpus);

// Restricts the calling thread (and every thread it starts afterwards) to `cpus`. Refuses a set
// with a CPU the process may not use now (offline, or outside its cpuset), naming it and the
// CPUs it may use: the kernel would silently drop it, and the operator would get less than asked.
Status ApplyCpuAffinity(const std::set<int>& cpus);

}  // namespace base
