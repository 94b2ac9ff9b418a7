#include "nbd-server/nbd_connection.h"

#include <linux/sockios.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>

#include "base/gathered_write.h"
#include "nbd-server/nbd_errors.h"
#include "nbd-server/protocol.h"

namespace nbd {
namespace {

using base::Status;

constexpr size_t kReadAheadBytes = 64 * 1024;
// Payload tails at least this large are read straight into their buffer, skipping a copy.
constexpr size_t kDirectReadBytes = 16 * 1024;
constexpr size_t kMaxRepliesPerWrite = 64;

Status SocketStatus(const boost::system::error_code& ec, const char* what) {
  // A client that goes away is routine (fio and libnbd never send DISC): not an error.
  if (ec == asio::error::eof || ec == asio::error::broken_pipe ||
      ec == asio::error::connection_reset) {
    return Status::Error(ECONNRESET, std::string(what) + ": client closed the connection");
  }
  return Status::Error(ec.value() > 0 ? ec.value() : EIO, std::string(what) + ": " + ec.message());
}

}  // namespace

NbdConnection::NbdConnection(Socket socket, BlockDevice& device, const ExportInfo& info,
                             base::BufferPool& pool, std::string client_name)
    : socket_(std::move(socket)),
      device_(device),
      info_(info),
      pool_(pool),
      client_name_(std::move(client_name)),
      negotiator_(info),
      read_ahead_(kReadAheadBytes),
      slots_(kMaxRequestsInFlight),
      stall_timer_(socket_.get_executor()),
      reader_wakeup_(socket_.get_executor()),
      writer_wakeup_(socket_.get_executor()) {
  free_slots_.reserve(kMaxRequestsInFlight);
  for (size_t i = kMaxRequestsInFlight; i > 0; --i) {
    free_slots_.push_back(i - 1);
  }
}

asio::awaitable<void> NbdConnection::Run() {
  auto self = shared_from_this();
  Status negotiated = co_await Negotiate();
  if (!negotiated.ok()) {
    if (negotiated.errno_value() != ECONNRESET) {
      spdlog::warn("nbd {}: handshake ended: {}", client_name_, negotiated.ToString());
    }
    boost::system::error_code ignored;
    socket_.close(ignored);
    co_return;
  }
  spdlog::debug("nbd {}: transmission (structured replies: {}, base:allocation: {})",
                client_name_, negotiator_.negotiated().structured_replies,
                negotiator_.negotiated().base_allocation);
  asio::co_spawn(socket_.get_executor(), WriteReplies(), asio::detached);
  if (info_.stall_timeout_ms > 0) {
    asio::co_spawn(socket_.get_executor(), WatchForStalls(), asio::detached);
  }
  co_await ReadRequests();
  // Every request read so far completes and gets its reply before the socket closes.
  while (in_flight_ > 0) {
    co_await reader_wakeup_.Wait();
  }
  writer_exit_ = true;
  writer_wakeup_.Notify();
  boost::system::error_code ignored;
  if (!socket_broken_ && socket_.local_endpoint(ignored).protocol().family() != AF_UNIX) {
    co_await LetTcpRepliesOut();
  }
  socket_.shutdown(asio::socket_base::shutdown_both, ignored);
  socket_.close(ignored);
  finished_ = true;
  stall_timer_.cancel();
  spdlog::debug("nbd {}: closed", client_name_);
}

asio::awaitable<void> NbdConnection::WatchForStalls() {
  auto self = shared_from_this();
  // Looks twice per timeout; a stall is no progress over two looks in a row, so a client is
  // dropped between one and one and a half timeouts after it stopped moving.
  const auto half = std::chrono::milliseconds(info_.stall_timeout_ms) / 2;
  uint64_t receives_seen = receives_;
  uint64_t delivered_seen = DeliveredBytes();
  int stalled_looks = 0;
  while (!finished_ && !socket_broken_) {
    stall_timer_.expires_after(half);
    boost::system::error_code ec;
    co_await stall_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (finished_ || socket_broken_) {
      break;
    }
    const uint64_t delivered = DeliveredBytes();
    const bool stalled = (awaiting_payload_ && receives_ == receives_seen) ||
                         (sending_ && delivered == delivered_seen);
    receives_seen = receives_;
    delivered_seen = delivered;
    stalled_looks = stalled ? stalled_looks + 1 : 0;
    if (stalled_looks >= 2) {
      spdlog::warn("nbd {}: no progress for {} ms ({}); dropping the client and giving back "
                   "its {} buffer bytes",
                   client_name_, info_.stall_timeout_ms,
                   awaiting_payload_ ? "a WRITE payload left unsent" : "its replies left unread",
                   held_bytes_);
      Abort();
      break;
    }
  }
}

uint64_t NbdConnection::QueuedBytes() {
  // SIOCOUTQ: bytes in the send queue the client has not read yet (unix) or not acknowledged
  // (TCP). 0 if the socket cannot say (closed, say).
  int queued = 0;
  if (::ioctl(socket_.native_handle(), SIOCOUTQ, &queued) != 0 || queued < 0) {
    return 0;
  }
  return static_cast<uint64_t>(queued);
}

uint64_t NbdConnection::DeliveredBytes() {
  // The writer wakes only once the queue has drained well below its size (a quarter, for unix
  // sockets of several MiB), so what the socket took says little about a slow reader.
  return sent_bytes_ - std::min(sent_bytes_, QueuedBytes());
}

// TCP resets a connection closed with input unread (requests the client sent after the reader
// stopped), and a reset throws away whatever replies the client has not acknowledged yet: a
// client that pipelines and reads its replies late would lose replies to requests that
// completed. So the writing side is shut (the FIN follows the last reply), input is read and
// dropped, and the socket closes once the client has acknowledged everything or after a few
// seconds. Unix sockets keep queued data whatever the peer does.
asio::awaitable<void> NbdConnection::LetTcpRepliesOut() {
  constexpr auto kMaxLinger = std::chrono::seconds(5);
  constexpr auto kLook = std::chrono::milliseconds(10);
  boost::system::error_code ec;
  socket_.shutdown(asio::socket_base::shutdown_send, ec);
  if (!socket_.non_blocking()) {
    socket_.non_blocking(true, ec);
  }
  std::array<std::byte, 16 * 1024> sink;
  asio::steady_timer look(socket_.get_executor());
  const auto deadline = std::chrono::steady_clock::now() + kMaxLinger;
  while (true) {
    // Drop what has arrived. After shutdown_receive a read may say EOF with nothing queued.
    size_t got = 0;
    do {
      got = socket_.read_some(asio::buffer(sink), ec);
    } while (!ec && got > 0);
    const bool peer_gone = ec && ec != asio::error::would_block && ec != asio::error::eof;
    if (peer_gone || QueuedBytes() == 0 || std::chrono::steady_clock::now() >= deadline) {
      co_return;
    }
    look.expires_after(kLook);
    co_await look.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

void NbdConnection::Stop() {
  stopping_ = true;
  // Shutting down the receive side wakes a pending read with EOF; replies still go out.
  boost::system::error_code ignored;
  socket_.shutdown(asio::socket_base::shutdown_receive, ignored);
  reader_wakeup_.Notify();
}

void NbdConnection::Abort() {
  // The client stopped reading its replies: give up on them. Requests in flight still finish
  // on the device; their replies are dropped, so nothing unfinished is ever acknowledged.
  stopping_ = true;
  socket_broken_ = true;
  boost::system::error_code ignored;
  socket_.close(ignored);
  reader_wakeup_.Notify();
  writer_wakeup_.Notify();
}

asio::awaitable<Status> NbdConnection::SendBytes(std::span<const std::byte> bytes) {
  boost::system::error_code ec;
  co_await asio::async_write(socket_, asio::buffer(bytes.data(), bytes.size()),
                             asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    co_return SocketStatus(ec, "send");
  }
  co_return Status::Ok();
}

asio::awaitable<Status> NbdConnection::Negotiate() {
  Status sent = co_await SendBytes(negotiator_.Greeting());
  if (!sent.ok()) {
    co_return sent;
  }
  std::array<std::byte, 4> flags{};
  if (Status st = co_await ReadExact(flags); !st.ok()) {
    co_return st;
  }
  if (Status st = negotiator_.AcceptClientFlags(flags); !st.ok()) {
    co_return st;
  }
  std::vector<std::byte> data;
  while (!stopping_) {
    std::array<std::byte, kOptionHeaderBytes> raw{};
    if (Status st = co_await ReadExact(raw); !st.ok()) {
      co_return st;
    }
    auto header = negotiator_.ParseOptionHeader(raw);
    if (!header.ok()) {
      co_return header.status();
    }
    data.resize(header.value().length_bytes);
    if (Status st = co_await ReadExact(data); !st.ok()) {
      co_return st;
    }
    OptionReply reply = negotiator_.HandleOption(header.value().option, data);
    if (!reply.log.empty()) {
      spdlog::info("nbd {}: option {}: {}", client_name_, header.value().option, reply.log);
    }
    if (reply.next == NextStep::kDrop) {
      co_return Status::Error(EPROTO, reply.log);
    }
    if (Status st = co_await SendBytes(reply.bytes); !st.ok()) {
      co_return st;
    }
    if (reply.next == NextStep::kClose) {
      co_return Status::Error(ECONNRESET, "client aborted the handshake");
    }
    if (reply.next == NextStep::kTransmission) {
      co_return Status::Ok();
    }
  }
  co_return Status::Error(ESHUTDOWN, "server is stopping");
}

asio::awaitable<Status> NbdConnection::ReadExact(std::span<std::byte> out) {
  size_t done = read_ahead_.TakeSome(out);
  boost::system::error_code ec;
  while (done < out.size()) {
    const size_t left = out.size() - done;
    if (left >= kDirectReadBytes) {
      done += co_await socket_.async_read_some(asio::buffer(out.data() + done, left),
                                               asio::redirect_error(asio::use_awaitable, ec));
    } else {
      read_ahead_.Filled(co_await socket_.async_read_some(
          read_ahead_.Space(), asio::redirect_error(asio::use_awaitable, ec)));
      done += read_ahead_.TakeSome(out.subspan(done));
    }
    ++receives_;
    if (ec) {
      co_return SocketStatus(ec, "receive");
    }
  }
  co_return Status::Ok();
}

asio::awaitable<Status> NbdConnection::SkipExact(size_t bytes) {
  while (bytes > 0) {
    if (read_ahead_.buffered().empty()) {
      boost::system::error_code ec;
      read_ahead_.Filled(co_await socket_.async_read_some(
          read_ahead_.Space(), asio::redirect_error(asio::use_awaitable, ec)));
      ++receives_;
      if (ec) {
        co_return SocketStatus(ec, "receive");
      }
    }
    const size_t take = std::min(bytes, read_ahead_.buffered().size());
    read_ahead_.Skip(take);
    bytes -= take;
  }
  co_return Status::Ok();
}

size_t NbdConnection::BufferShareBytes() const {
  return std::max<size_t>(info_.max_payload_bytes, pool_.budget_bytes() / 2);
}

std::optional<base::Buffer> NbdConnection::TryAcquireBuffer(size_t bytes) {
  if (held_bytes_ > 0 && held_bytes_ + bytes > BufferShareBytes()) {
    return std::nullopt;
  }
  auto buffer = pool_.TryAcquire(bytes);
  if (buffer) {
    held_bytes_ += buffer->size();
  }
  return buffer;
}

asio::awaitable<base::Buffer> NbdConnection::AcquireBuffer(size_t bytes) {
  for (;;) {
    if (held_bytes_ > 0 && held_bytes_ + bytes > BufferShareBytes()) {
      // This connection holds its share of the pool: a client that sends WRITE headers
      // without their payloads, or stops reading its READ replies, must not starve the
      // others. Wait until one of its own requests is done (ReleaseSlot wakes the reader).
      co_await reader_wakeup_.Wait();
      continue;
    }
    if (auto buffer = TryAcquireBuffer(bytes)) {
      co_return std::move(*buffer);
    }
    // The pool is spent: stop reading until some request, on any connection, gives one back.
    std::weak_ptr<NbdConnection> weak = weak_from_this();
    pool_.NotifyOnRelease([weak] {
      if (auto self = weak.lock()) {
        self->reader_wakeup_.Notify();
      }
    });
    co_await reader_wakeup_.Wait();
  }
}

size_t NbdConnection::TakeSlot() {
  CHECK(!free_slots_.empty());
  const size_t slot = free_slots_.back();
  free_slots_.pop_back();
  slots_[slot].in_use = true;
  ++in_flight_;
  return slot;
}

void NbdConnection::ReleaseSlot(size_t slot) {
  CHECK(slots_[slot].in_use);
  slots_[slot].in_use = false;
  held_bytes_ -= slots_[slot].buffer.size();
  slots_[slot].buffer = base::Buffer();
  free_slots_.push_back(slot);
  --in_flight_;
  reader_wakeup_.Notify();
}

asio::awaitable<void> NbdConnection::ReadRequests() {
  while (!stopping_ && !socket_broken_) {
    while (free_slots_.empty() && !stopping_) {
      co_await reader_wakeup_.Wait();
    }
    if (stopping_) {
      break;
    }
    std::array<std::byte, kRequestHeaderBytes> raw{};
    if (!read_ahead_.Take(raw)) {
      if (Status st = co_await ReadExact(raw); !st.ok()) {
        if (st.errno_value() != ECONNRESET) {
          spdlog::info("nbd {}: {}", client_name_, st.ToString());
        }
        break;
      }
    }
    auto parsed = ParseRequestHeader(raw);
    if (!parsed.ok()) {
      // The stream is out of step; nothing after this can be trusted.
      spdlog::warn("nbd {}: {}; dropping the connection", client_name_,
                   parsed.status().message());
      break;
    }
    const Request request = parsed.value();
    if (request.type == static_cast<uint16_t>(Command::kDisconnect)) {
      break;
    }
    const size_t slot = TakeSlot();
    slots_[slot].request = request;
    const Verdict verdict = ValidateRequest(request, info_, negotiator_.negotiated());
    if (!verdict.ok()) {
      spdlog::warn("nbd {}: rejected: {}", client_name_, verdict.why);
      if (request.HasPayload()) {
        awaiting_payload_ = true;
        const Status st = co_await SkipExact(request.length_bytes);
        awaiting_payload_ = false;
        if (!st.ok()) {
          ReleaseSlot(slot);
          break;
        }
      }
      ReplyError(slot, verdict.nbd_error, verdict.why);
      continue;
    }
    const auto type = static_cast<Command>(request.type);
    if ((type == Command::kRead || type == Command::kWrite) && request.length_bytes > 0) {
      if (auto buffer = TryAcquireBuffer(request.length_bytes)) {
        slots_[slot].buffer = std::move(*buffer);
      } else {
        slots_[slot].buffer = co_await AcquireBuffer(request.length_bytes);
      }
    }
    if (type == Command::kWrite && request.length_bytes > 0 &&
        !read_ahead_.Take(slots_[slot].buffer.span())) {
      awaiting_payload_ = true;
      const Status st = co_await ReadExact(slots_[slot].buffer.span());
      awaiting_payload_ = false;
      if (!st.ok()) {
        // A client that vanishes mid-payload gets nothing written.
        spdlog::info("nbd {}: WRITE payload cut short: {}", client_name_, st.ToString());
        ReleaseSlot(slot);
        break;
      }
    }
    Dispatch(slot);
  }
}

void NbdConnection::Dispatch(size_t slot) {
  const Request& r = slots_[slot].request;
  const auto type = static_cast<Command>(r.type);
  if (type == Command::kRead && r.length_bytes == 0 &&
      negotiator_.negotiated().structured_replies) {
    ReplyNoneChunk(slot);
    return;
  }
  // An empty request has nothing to do; answered here, it never reaches the volume (nor, on a
  // mirrored volume, the peer, which refuses empty operations). The spec allows any result.
  const bool sized = type == Command::kRead || type == Command::kWrite || type == Command::kTrim ||
                     type == Command::kWriteZeroes || type == Command::kCache;
  if (sized && r.length_bytes == 0) {
    ReplySimple(slot, 0);
    return;
  }
  Submit(slot);
}

void NbdConnection::Submit(size_t slot) {
  const Request& r = slots_[slot].request;
  auto self = shared_from_this();
  auto done = [self, slot](Status st) { self->OnDone(slot, st); };
  const bool fua = (r.flags & kCmdFlagFua) != 0;
  Status submitted;
  switch (static_cast<Command>(r.type)) {
    case Command::kRead:
      submitted = device_.Read(r.offset_bytes, slots_[slot].buffer.span(), done);
      break;
    case Command::kWrite:
      submitted = device_.Write(r.offset_bytes, slots_[slot].buffer.span(), fua, done);
      break;
    case Command::kFlush:
      submitted = device_.Flush(done);
      break;
    case Command::kTrim:
      submitted = device_.Trim(r.offset_bytes, r.length_bytes, fua, done);
      break;
    case Command::kWriteZeroes: {
      ZeroOptions options;
      options.may_punch_hole = (r.flags & kCmdFlagNoHole) == 0;
      options.fast_only = (r.flags & kCmdFlagFastZero) != 0;
      submitted = device_.WriteZeroes(r.offset_bytes, r.length_bytes, options, fua, done);
      break;
    }
    case Command::kCache:
      submitted = device_.Cache(r.offset_bytes, r.length_bytes, done);
      break;
    case Command::kBlockStatus:
      submitted = device_.BlockStatus(
          r.offset_bytes, r.length_bytes,
          [self, slot](base::Result<std::vector<Extent>> result) {
            self->OnExtents(slot, std::move(result));
          });
      break;
    case Command::kDisconnect:
      CHECK(false);
  }
  if (!submitted.ok()) {
    OnDone(slot, submitted);
  }
}

void NbdConnection::OnDone(size_t slot, const Status& status) {
  const Request& r = slots_[slot].request;
  if (!status.ok()) {
    const uint32_t error = ToNbdError(status, r.type, r.flags);
    // Logged once here, with the detail the client will not see; a refused fast zero is routine.
    if (error != kErrNotSup) {
      spdlog::error("nbd {}: {} at {}+{} failed: {}", client_name_, CommandName(r.type),
                    r.offset_bytes, r.length_bytes, status.ToString());
    }
    ReplyError(slot, error, status.message());
    return;
  }
  if (r.type != static_cast<uint16_t>(Command::kRead)) {
    ReplySimple(slot, 0);
  } else if (negotiator_.negotiated().structured_replies) {
    ReplyReadChunk(slot);
  } else {
    ReplySimple(slot, 0, slots_[slot].buffer.span());
  }
}

void NbdConnection::OnExtents(size_t slot, base::Result<std::vector<Extent>> result) {
  if (!result.ok()) {
    OnDone(slot, result.status());
    return;
  }
  const Request& r = slots_[slot].request;
  PendingReply reply;
  reply.slot = slot;
  WireWriter w(reply.extra);
  w.U32(kBaseAllocationContextId);
  uint64_t covered = 0;
  for (const Extent& e : result.value()) {
    if (e.length_bytes == 0 || covered >= r.length_bytes) {
      break;
    }
    const uint64_t length = std::min<uint64_t>(e.length_bytes, r.length_bytes - covered);
    w.U32(static_cast<uint32_t>(length));
    w.U32(e.hole ? (kStateHole | kStateZero) : 0);
    covered += length;
    if ((r.flags & kCmdFlagReqOne) != 0) {
      break;
    }
  }
  if (covered == 0) {
    OnDone(slot, Status::Error(EIO, "block status returned no extents"));
    return;
  }
  std::byte* h = reply.header.data();
  StoreBe32(h, kStructuredReplyMagic);
  StoreBe16(h + 4, kChunkFlagDone);
  StoreBe16(h + 6, kChunkBlockStatus);
  StoreBe64(h + 8, r.cookie);
  StoreBe32(h + 16, static_cast<uint32_t>(reply.extra.size()));
  reply.header_bytes = kStructuredReplyHeaderBytes;
  QueueReply(std::move(reply));
}

void NbdConnection::ReplyError(size_t slot, uint32_t nbd_error, const std::string& message) {
  // Once structured replies are on, every READ reply must be structured, errors included.
  if (slots_[slot].request.type == static_cast<uint16_t>(Command::kRead) &&
      negotiator_.negotiated().structured_replies) {
    ReplyErrorChunk(slot, nbd_error, message);
    return;
  }
  ReplySimple(slot, nbd_error);
}

void NbdConnection::ReplyNoneChunk(size_t slot) {
  PendingReply reply;
  reply.slot = slot;
  std::byte* h = reply.header.data();
  StoreBe32(h, kStructuredReplyMagic);
  StoreBe16(h + 4, kChunkFlagDone);
  StoreBe16(h + 6, kChunkNone);
  StoreBe64(h + 8, slots_[slot].request.cookie);
  StoreBe32(h + 16, 0);
  reply.header_bytes = kStructuredReplyHeaderBytes;
  QueueReply(std::move(reply));
}

void NbdConnection::ReplySimple(size_t slot, uint32_t nbd_error,
                                std::span<const std::byte> data) {
  PendingReply reply;
  reply.slot = slot;
  std::byte* h = reply.header.data();
  StoreBe32(h, kSimpleReplyMagic);
  StoreBe32(h + 4, nbd_error);
  StoreBe64(h + 8, slots_[slot].request.cookie);
  reply.header_bytes = kSimpleReplyHeaderBytes;
  reply.data = data;
  QueueReply(std::move(reply));
}

void NbdConnection::ReplyReadChunk(size_t slot) {
  const Request& r = slots_[slot].request;
  PendingReply reply;
  reply.slot = slot;
  std::byte* h = reply.header.data();
  StoreBe32(h, kStructuredReplyMagic);
  StoreBe16(h + 4, kChunkFlagDone);
  StoreBe16(h + 6, kChunkOffsetData);
  StoreBe64(h + 8, r.cookie);
  StoreBe32(h + 16, 8 + r.length_bytes);
  StoreBe64(h + 20, r.offset_bytes);
  reply.header_bytes = kStructuredReplyHeaderBytes + 8;
  reply.data = slots_[slot].buffer.span();
  QueueReply(std::move(reply));
}

void NbdConnection::ReplyErrorChunk(size_t slot, uint32_t nbd_error, const std::string& message) {
  PendingReply reply;
  reply.slot = slot;
  const std::string text = message.substr(0, 1024);
  WireWriter w(reply.extra);
  w.U32(nbd_error);
  w.U16(static_cast<uint16_t>(text.size()));
  w.Text(text);
  std::byte* h = reply.header.data();
  StoreBe32(h, kStructuredReplyMagic);
  StoreBe16(h + 4, kChunkFlagDone);
  StoreBe16(h + 6, kChunkError);
  StoreBe64(h + 8, slots_[slot].request.cookie);
  StoreBe32(h + 16, static_cast<uint32_t>(reply.extra.size()));
  reply.header_bytes = kStructuredReplyHeaderBytes;
  QueueReply(std::move(reply));
}

void NbdConnection::QueueReply(PendingReply reply) {
  if (TrySendAtOnce(reply)) {
    return;
  }
  replies_.push_back(std::move(reply));
  writer_wakeup_.Notify();
}

// The reply to a connection's only request in flight has nothing to share a send with: it goes
// out from here, without waking the writer, which would cost a trip round the loop at queue
// depth 1. With other requests in flight their replies are batched by the writer instead. Whatever
// the socket does not take now (or any error) is left to the writer, which sends the rest first and
// reports errors.
bool NbdConnection::TrySendAtOnce(PendingReply& reply) {
  if (in_flight_ != 1 || !replies_.empty() || sending_ || socket_broken_ || writer_exit_) {
    return false;
  }
  const std::array<asio::const_buffer, 3> buffers{
      asio::buffer(reply.header.data(), reply.header_bytes),
      asio::buffer(reply.data.data(), reply.data.size()),
      asio::buffer(reply.extra.data(), reply.extra.size())};
  const size_t total = asio::buffer_size(buffers);
  boost::system::error_code ec;
  const size_t sent = base::SendNow(socket_, buffers, ec);
  if (ec) {
    return false;
  }
  sent_bytes_ += sent;
  if (sent < total) {
    reply.sent_bytes = sent;
    return false;
  }
  ReleaseSlot(reply.slot);
  return true;
}

asio::awaitable<void> NbdConnection::WriteReplies() {
  auto self = shared_from_this();
  std::vector<PendingReply> batch;
  std::vector<asio::const_buffer> buffers;
  for (;;) {
    while (replies_.empty() && !writer_exit_) {
      co_await writer_wakeup_.Wait();
    }
    if (replies_.empty()) {
      co_return;
    }
    batch.clear();
    buffers.clear();
    while (!replies_.empty() && batch.size() < kMaxRepliesPerWrite) {
      batch.push_back(std::move(replies_.front()));
      replies_.pop_front();
    }
    for (const PendingReply& reply : batch) {
      // Only the first reply of a batch can have been partly sent (by TrySendAtOnce).
      base::AppendUnsent(buffers,
                         {asio::buffer(reply.header.data(), reply.header_bytes),
                          asio::buffer(reply.data.data(), reply.data.size()),
                          asio::buffer(reply.extra.data(), reply.extra.size())},
                         reply.sent_bytes);
    }
    if (!socket_broken_) {
      sending_ = true;
      const boost::system::error_code ec =
          co_await base::WriteGathered(socket_, buffers, &sent_bytes_);
      sending_ = false;
      if (ec) {
        // The client is gone; its remaining replies are dropped, its requests still complete.
        spdlog::info("nbd {}: {}", client_name_, SocketStatus(ec, "send").ToString());
        socket_broken_ = true;
        Stop();
      }
    }
    for (const PendingReply& reply : batch) {
      ReleaseSlot(reply.slot);
    }
  }
}

}  // namespace nbd
