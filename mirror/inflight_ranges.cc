#include "mirror/inflight_ranges.h"

#include <algorithm>

#include "base/check.h"

namespace mirror {

bool InflightRanges::Blocked(const Range& candidate,
                             std::list<Range>::const_iterator waiting_end) const {
  for (const Range& held : held_) {
    if (Overlap(held, candidate)) {
      return true;
    }
  }
  for (auto it = waiting_.cbegin(); it != waiting_end; ++it) {
    if (Overlap(*it, candidate)) {
      return true;
    }
  }
  return false;
}

bool InflightRanges::Acquire(uint64_t offset_bytes, uint64_t length_bytes, Grant on_grant,
                             Ticket& ticket) {
  ticket = next_ticket_++;
  const uint64_t end = offset_bytes + std::max<uint64_t>(length_bytes, 1);
  Range range{ticket, offset_bytes, end, nullptr};
  if (!Blocked(range, waiting_.cend())) {
    Keep(held_, std::move(range));
    return true;
  }
  range.on_grant = std::move(on_grant);
  Keep(waiting_, std::move(range));
  return false;
}

void InflightRanges::Keep(std::list<Range>& list, Range range) {
  if (spare_.empty()) {
    list.push_back(std::move(range));
    return;
  }
  spare_.front() = std::move(range);
  list.splice(list.end(), spare_, spare_.begin());
}

void InflightRanges::Release(Ticket ticket) {
  auto it = std::find_if(held_.begin(), held_.end(),
                         [ticket](const Range& r) { return r.ticket == ticket; });
  CHECK(it != held_.end());
  spare_.splice(spare_.end(), held_, it);
  // Grant, in arrival order, every waiter no longer blocked by a held range or an earlier
  // waiter. Grants are collected first: a grant callback may Acquire or Release again.
  std::list<Range> granted;
  for (auto w = waiting_.begin(); w != waiting_.end();) {
    if (Blocked(*w, w)) {
      ++w;
      continue;
    }
    auto next = std::next(w);
    Keep(held_, Range{w->ticket, w->begin, w->end, nullptr});
    granted.splice(granted.end(), waiting_, w);
    w = next;
  }
  for (Range& r : granted) {
    Grant grant = std::move(r.on_grant);
    grant();
  }
  spare_.splice(spare_.end(), granted);
}

}  // namespace mirror
