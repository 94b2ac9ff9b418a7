#pragma once
// ResyncTally: the bytes every resync of this run has copied (`resynced_bytes_total` in status,
// `nbdmirror_resynced_bytes_total` in metrics), a counter that never goes back.
//
// A resync counts live while it runs and is settled when its finish callback runs. A cancelled
// resync (the link dropped) keeps draining its last blocks, and a new connection may start the
// next resync before that; both then count live, so the total neither dips when the new one
// starts from zero nor loses what the old one copied after its cancellation.
//
// Loop thread only.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace mirror {

class ResyncTally {
 public:
  using Id = const void*;
  // `done_bytes` reads the resync's progress; it must never decrease.
  void Started(Id id, std::function<uint64_t()> done_bytes) {
    live_.push_back({id, std::move(done_bytes), 0});
  }
  // Its final count becomes part of the settled total.
  void Finished(Id id) {
    auto it = std::find_if(live_.begin(), live_.end(), [id](const Live& l) { return l.id == id; });
    if (it == live_.end()) {
      return;
    }
    settled_ += it->Read();
    live_.erase(it);
  }
  uint64_t total() const {
    uint64_t sum = settled_;
    for (const Live& l : live_) {
      sum += l.Read();
    }
    return sum;
  }

 private:
  struct Live {
    Id id;
    std::function<uint64_t()> done_bytes;
    // The most it has reported: a resync that is gone (its reader returns 0) keeps what it
    // had counted.
    mutable uint64_t seen = 0;
    uint64_t Read() const {
      seen = std::max(seen, done_bytes());
      return seen;
    }
  };
  uint64_t settled_ = 0;
  std::vector<Live> live_;
};

}  // namespace mirror
