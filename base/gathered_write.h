#pragma once
// WriteGathered: sends a batch of buffers on a stream socket, trying one non-blocking sendmsg on
// the spot before falling back to asio's async_write for whatever the socket did not take.
//
// Why: async_write also tries a speculative send at once, but it always reports completion
// through a posted handler, so a writer coroutine that sends a batch resumes only after one
// more trip round the loop, and every such trip costs a zero-timeout epoll_wait in asio's
// scheduler. When the socket buffer has room (nearly always, for replies and acks) the direct
// send finishes the batch in the same handler.
//
// The socket is switched to non-blocking mode for synchronous calls (asio's async operations
// are unaffected). The buffers are consumed as they are sent: on return `buffers` is empty if
// everything went out, and what is left otherwise. Returns the first error. Loop thread only;
// the memory the buffers point to must stay valid until the coroutine resumes. If `sent_bytes`
// is given, it grows by every part of the batch the socket takes, as it takes it: a watchdog can
// tell a slow reader from one that stopped, even while a large batch is still going out.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "base/asio.h"

namespace base {

// Drops the first `bytes` bytes from `buffers`.
inline void ConsumeBuffers(std::vector<asio::const_buffer>& buffers, size_t bytes) {
  size_t whole = 0;
  while (whole < buffers.size() && bytes >= buffers[whole].size()) {
    bytes -= buffers[whole].size();
    ++whole;
  }
  buffers.erase(buffers.begin(), buffers.begin() + static_cast<std::ptrdiff_t>(whole));
  if (bytes > 0) {
    buffers.front() += bytes;
  }
}

// Appends the non-empty parts of one message to `buffers`, leaving out its first `skip` bytes:
// those a send made on the spot already put on the wire.
inline void AppendUnsent(std::vector<asio::const_buffer>& buffers,
                         std::initializer_list<asio::const_buffer> parts, size_t skip) {
  for (asio::const_buffer part : parts) {
    const size_t skipped = std::min(skip, part.size());
    skip -= skipped;
    part += skipped;
    if (part.size() > 0) {
      buffers.push_back(part);
    }
  }
}

// One non-blocking send of what the socket takes now; returns the bytes sent (would_block comes
// back in `ec`). Switches the socket to non-blocking mode for synchronous calls first.
template <typename Socket, typename Buffers>
size_t SendNow(Socket& socket, const Buffers& buffers, boost::system::error_code& ec) {
  ec.clear();
  if (!socket.non_blocking()) {
    socket.non_blocking(true, ec);
    if (ec) {
      return 0;
    }
  }
  return socket.write_some(buffers, ec);
}

template <typename Socket>
asio::awaitable<boost::system::error_code> WriteGathered(Socket& socket,
                                                         std::vector<asio::const_buffer>& buffers,
                                                         uint64_t* sent_bytes = nullptr) {
  uint64_t ignored = 0;
  uint64_t& progress = sent_bytes != nullptr ? *sent_bytes : ignored;
  boost::system::error_code ec;
  // asio hands at most kMaxBuffersPerCall buffers to one sendmsg; go on while the socket takes
  // all it is offered, stop (and wait asynchronously) as soon as it takes less.
  constexpr size_t kMaxBuffersPerCall = 64;
  while (!buffers.empty()) {
    size_t offered = 0;
    for (size_t i = 0; i < buffers.size() && i < kMaxBuffersPerCall; ++i) {
      offered += buffers[i].size();
    }
    const size_t sent = SendNow(socket, buffers, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      ec.clear();
      break;
    }
    if (ec) {
      co_return ec;
    }
    ConsumeBuffers(buffers, sent);
    progress += sent;
    if (sent < offered) {
      break;
    }
  }
  if (!buffers.empty()) {
    // The completion condition runs after every partial send with the total so far.
    const uint64_t before = progress;
    auto condition = [&progress, before](const boost::system::error_code& error,
                                         size_t transferred) {
      progress = before + transferred;
      return TransferAllUncapped{}(error, transferred);
    };
    co_await asio::async_write(socket, buffers, condition,
                               asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) {
      buffers.clear();
    }
  }
  co_return ec;
}

}  // namespace base
