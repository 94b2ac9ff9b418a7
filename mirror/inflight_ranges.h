#pragma once
// InflightRanges: at most one write per byte range in flight.
//
// A write (or zero, or trim) acquires its range before it starts and releases it when it
// completes. A range that overlaps one held, or one that an earlier waiter is still waiting
// for, waits: grants follow arrival order among overlapping requests, so every copy of the
// volume sees overlapping writes in the same order and ends with the same last writer.
// Non-overlapping requests never wait for each other.
//
// Loop thread only. Grant callbacks run from inside Release(), on the loop.

#include <cstdint>
#include <functional>
#include <list>

#include "base/callback.h"

namespace mirror {

class InflightRanges {
 public:
  using Grant = base::Callback<void()>;
  using Ticket = uint64_t;

  // Returns true when the range is granted now (the caller proceeds, `on_grant` is dropped).
  // Otherwise `on_grant` runs once the range is free and every earlier overlapping waiter has
  // been granted. `ticket` identifies the range for Release either way.
  bool Acquire(uint64_t offset_bytes, uint64_t length_bytes, Grant on_grant, Ticket& ticket);

  void Release(Ticket ticket);

  size_t held_count() const { return held_.size(); }
  size_t waiting_count() const { return waiting_.size(); }

 private:
  struct Range {
    Ticket ticket;
    uint64_t begin;
    uint64_t end;  // Exclusive. Zero-length ranges are widened to one byte.
    Grant on_grant;
  };
  static bool Overlap(const Range& a, const Range& b) {
    return a.begin < b.end && b.begin < a.end;
  }
  bool Blocked(const Range& candidate, std::list<Range>::const_iterator waiting_end) const;

  // Appends `range` to `list` in a node taken from spare_ when there is one.
  void Keep(std::list<Range>& list, Range range);

  std::list<Range> held_;
  std::list<Range> waiting_;
  // Nodes of released ranges, kept for reuse: a write then costs no allocation here. Never more
  // than the most ranges held and waiting at once, which the in-flight limit bounds.
  std::list<Range> spare_;
  Ticket next_ticket_ = 1;
};

}  // namespace mirror
