#pragma once
// CHECK: an always-on assertion for our own invariants. It stays on in release builds; a failed
// CHECK prints where and why, then aborts. Never use it on input from a client or a peer: those
// are validated and answered with a Status.

#include <cstdio>
#include <cstdlib>

namespace base::internal {
[[noreturn]] inline void CheckFailed(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "CHECK failed: %s at %s:%d\n", expr, file, line);
  std::fflush(stderr);
  std::abort();
}
}  // namespace base::internal

#define CHECK(expr)                                                  \
  do {                                                               \
    if (!(expr)) [[unlikely]] {                                      \
      ::base::internal::CheckFailed(#expr, __FILE__, __LINE__);      \
    }                                                                \
  } while (false)
