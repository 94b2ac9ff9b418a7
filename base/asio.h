#pragma once
// The one place that includes Boost.Asio. Boost 1.74's awaitable.hpp uses std::exchange
// without including <utility>, so include it first. Code uses the short alias `asio`.

#include <utility>

#include <boost/asio.hpp>

namespace asio = boost::asio;

namespace base {

// Completion condition for asio::async_read/async_write: everything, in as few system calls as
// the socket allows. asio's default (transfer_all) hands each read_some/write_some at most
// 64 KiB, and every step of a composed operation completes through a posted handler, i.e. one
// more trip round the scheduler (an epoll_wait) per 64 KiB: a 1 MiB payload cost 16 of them.
struct TransferAllUncapped {
  size_t operator()(const boost::system::error_code& ec, size_t /*transferred*/) const {
    return ec ? 0 : kMaxStepBytes;
  }
  static constexpr size_t kMaxStepBytes = size_t{1} << 30;
};

}  // namespace base
