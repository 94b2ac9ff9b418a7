#pragma once
// ReadAhead: bytes received from a stream beyond what its reader has taken so far.
//
// The readers of a stream of small messages (NBD requests, peer frames) receive into it as
// much as the socket holds, so that at depth one receive brings many messages. Each is then
// taken from here without a system call and, when all of it is here already, without entering
// a coroutine. Loop thread only.

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

#include "base/asio.h"
#include "base/check.h"

namespace base {

class ReadAhead {
 public:
  explicit ReadAhead(size_t capacity) : bytes_(capacity) {}

  size_t capacity() const { return bytes_.size(); }
  std::span<const std::byte> buffered() const {
    return {bytes_.data() + begin_, end_ - begin_};
  }

  // Copies as much of `out` as is buffered; returns how much that was.
  size_t TakeSome(std::span<std::byte> out) {
    const size_t take = std::min(out.size(), end_ - begin_);
    if (take > 0) {
      std::memcpy(out.data(), bytes_.data() + begin_, take);
      begin_ += take;
    }
    return take;
  }
  // All of `out`, or false and nothing taken.
  bool Take(std::span<std::byte> out) {
    if (end_ - begin_ < out.size()) {
      return false;
    }
    TakeSome(out);
    return true;
  }
  void Skip(size_t bytes) {
    CHECK(bytes <= end_ - begin_);
    begin_ += bytes;
  }

  // Where to receive once everything buffered has been taken; Filled(n) records what came.
  asio::mutable_buffer Space() {
    CHECK(begin_ == end_);
    return asio::buffer(bytes_);
  }
  void Filled(size_t bytes) {
    CHECK(bytes <= bytes_.size());
    begin_ = 0;
    end_ = bytes;
  }

 private:
  std::vector<std::byte> bytes_;
  size_t begin_ = 0;
  size_t end_ = 0;
};

}  // namespace base
