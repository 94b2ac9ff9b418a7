#pragma once
// NbdConnection: one NBD client, from greeting to close.
//
// Run() negotiates (through the Negotiator), then reads requests and hands each to the
// BlockDevice as soon as it is read, so many requests are in flight at once and replies go
// out in completion order. A single writer coroutine sends queued replies, batching whatever
// has accumulated into one gathered write, header and payload together.
//
// Flow control: at most kMaxRequestsInFlight requests per connection, and every payload lives
// in a base::BufferPool buffer; when either runs out, the reader stops reading the socket until a
// reply has gone out. Nothing grows without bound whatever the client sends. The pool is shared
// by every connection (and the peer link), so one connection may hold at most its share
// (BufferShareBytes: half the pool, or one maximal payload if that is more): a client that
// sends WRITE headers without payloads, or never reads its READ replies, stalls only itself.
// Several such clients could still hold the whole pool together, so a client that leaves a
// payload unsent or its replies unread for ExportInfo::stall_timeout_ms is dropped (Abort) and
// its buffers return to the pool; its requests already submitted still complete.
//
// Ending: on NBD_CMD_DISC, EOF, a protocol violation, or Stop(), the reader stops; Run()
// returns only after every request already read has completed and its reply was sent (or the
// socket died). Acknowledged data is never lost by a disconnect: replies are sent only after the
// device has completed the request.
//
// Lifetime: owned by shared_ptr; device callbacks hold a reference, so the connection outlives
// its last in-flight request. Loop thread only.

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/asio.h"
#include "base/async_event.h"
#include "base/buffer_pool.h"
#include "base/read_ahead.h"
#include "base/status.h"
#include "nbd-server/block_device.h"
#include "nbd-server/export_info.h"
#include "nbd-server/negotiator.h"
#include "nbd-server/request.h"

namespace nbd {

inline constexpr size_t kMaxRequestsInFlight = 128;

class NbdConnection : public std::enable_shared_from_this<NbdConnection> {
 public:
  using Socket = asio::generic::stream_protocol::socket;

  // `device`, `info` and `pool` are borrowed and must outlive the connection.
  NbdConnection(Socket socket, BlockDevice& device, const ExportInfo& info, base::BufferPool& pool,
                std::string client_name);

  asio::awaitable<void> Run();

  // Stop reading new requests; in-flight ones finish and get their replies.
  void Stop();
  // Closes the socket now: for clients that stop reading replies during a shutdown.
  void Abort();

 private:
  // One request from header to sent reply.
  struct Slot {
    Request request;
    base::Buffer buffer;
    bool in_use = false;
  };
  struct PendingReply {
    size_t slot = 0;
    std::array<std::byte, 32> header{};
    size_t header_bytes = 0;
    std::span<const std::byte> data;
    std::vector<std::byte> extra;  // Chunk payloads built here (block status, error text).
    size_t sent_bytes = 0;         // Already on the socket (a send cut short by a full buffer).
  };

  asio::awaitable<base::Status> Negotiate();
  asio::awaitable<base::Status> SendBytes(std::span<const std::byte> bytes);
  asio::awaitable<void> ReadRequests();
  asio::awaitable<base::Status> ReadExact(std::span<std::byte> out);
  asio::awaitable<base::Status> SkipExact(size_t bytes);
  // A buffer now, if the pool has one and this connection is within its share.
  std::optional<base::Buffer> TryAcquireBuffer(size_t bytes);
  asio::awaitable<base::Buffer> AcquireBuffer(size_t bytes);
  size_t BufferShareBytes() const;
  asio::awaitable<void> WriteReplies();
  asio::awaitable<void> WatchForStalls();

  size_t TakeSlot();
  void Dispatch(size_t slot);
  void Submit(size_t slot);
  void OnDone(size_t slot, const base::Status& status);
  void OnExtents(size_t slot, base::Result<std::vector<Extent>> result);
  void ReplyError(size_t slot, uint32_t nbd_error, const std::string& message);
  void ReplyNoneChunk(size_t slot);
  void ReplySimple(size_t slot, uint32_t nbd_error, std::span<const std::byte> data = {});
  void ReplyReadChunk(size_t slot);
  void ReplyErrorChunk(size_t slot, uint32_t nbd_error, const std::string& message);
  void QueueReply(PendingReply reply);
  bool TrySendAtOnce(PendingReply& reply);
  // Reply bytes still in the socket's send queue, not yet taken by the client.
  uint64_t QueuedBytes();
  // Reply bytes the client has taken: sent, less what QueuedBytes() still holds.
  uint64_t DeliveredBytes();
  asio::awaitable<void> LetTcpRepliesOut();
  void ReleaseSlot(size_t slot);

  Socket socket_;
  BlockDevice& device_;
  const ExportInfo& info_;
  base::BufferPool& pool_;
  const std::string client_name_;
  Negotiator negotiator_;

  base::ReadAhead read_ahead_;

  std::vector<Slot> slots_;
  std::vector<size_t> free_slots_;
  size_t in_flight_ = 0;
  size_t held_bytes_ = 0;  // Pool bytes held by this connection's slots.
  std::deque<PendingReply> replies_;
  bool stopping_ = false;
  bool socket_broken_ = false;
  bool writer_exit_ = false;
  // Stall watch: set while the reader waits for a WRITE payload (or skips one) and while the
  // writer sends; the counters move with every completed receive and every byte the socket
  // takes (a batch of replies can be tens of MiB: a slow reader makes progress within it).
  // A reader's progress is what it took out of the socket: DeliveredBytes().
  bool awaiting_payload_ = false;
  bool sending_ = false;
  uint64_t receives_ = 0;
  uint64_t sent_bytes_ = 0;
  bool finished_ = false;
  asio::steady_timer stall_timer_;
  base::AsyncEvent reader_wakeup_;
  base::AsyncEvent writer_wakeup_;
};

}  // namespace nbd
