#include "transport/peer_connection.h"

#include <spdlog/spdlog.h>

#include <array>
#include <chrono>
#include <cstring>

#include "base/gathered_write.h"
#include "transport/peer.pb.h"
#include "transport/peer_auth.h"

namespace transport {

using base::Status;
namespace pb = nbdmirror::peer;

namespace {

constexpr size_t kMaxFramesPerWrite = 64;

std::span<const std::byte> AsBytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

}  // namespace

PeerConnection::PeerConnection(std::unique_ptr<PeerStream> stream, base::BufferPool& pool,
                               LinkTiming timing)
    : stream_(std::move(stream)),
      read_ahead_(64 * 1024),
      pool_(pool),
      timing_(timing),
      writer_wakeup_(stream_->executor()),
      reader_wakeup_(stream_->executor()),
      heartbeat_timer_(stream_->executor()),
      last_received_(std::chrono::steady_clock::now()) {}

PeerConnection::~PeerConnection() { stream_->Close(); }

PeerConnection::Outgoing PeerConnection::Build(FrameType type,
                                               const google::protobuf::MessageLite& message,
                                               std::span<const std::byte> payload) const {
  Outgoing out;
  out.message.resize(message.ByteSizeLong(), boost::container::default_init);
  CHECK(message.SerializeToArray(out.message.data(), static_cast<int>(out.message.size())));
  out.payload = payload;
  out.header = BuildFrameHeader(type, Bytes(out.message), payload);
  return out;
}

asio::awaitable<Status> PeerConnection::SendMessage(FrameType type,
                                                    const google::protobuf::MessageLite& message) {
  Outgoing out = Build(type, message, {});
  std::vector<asio::const_buffer> buffers{asio::buffer(out.header),
                                          asio::buffer(out.message.data(), out.message.size())};
  co_return co_await stream_->WriteAll(buffers);
}

asio::awaitable<Status> PeerConnection::ReadExact(std::span<std::byte> out) {
  size_t done = read_ahead_.TakeSome(out);
  while (done < out.size()) {
    const size_t left = out.size() - done;
    if (left >= read_ahead_.capacity() / 4) {
      // Large payload tails go straight into their buffer, without a copy.
      Status st = co_await stream_->ReadExact(asio::buffer(out.data() + done, left));
      last_received_ = std::chrono::steady_clock::now();
      co_return st;
    }
    auto n = co_await stream_->ReadSome(read_ahead_.Space());
    if (!n.ok()) {
      co_return n.status();
    }
    // Whatever arrives proves the peer alive: a burst of frames is stamped once.
    last_received_ = std::chrono::steady_clock::now();
    read_ahead_.Filled(n.value());
    done += read_ahead_.TakeSome(out.subspan(done));
  }
  co_return Status::Ok();
}

base::Result<Frame> PeerConnection::Verified(const FrameHeader& header, Frame frame) {
  if (!FrameCrcMatches(header, Bytes(frame.message), frame.payload.span())) {
    return Status::Error(EBADMSG,
                         std::string(FrameTypeName(frame.type)) + " frame failed its CRC32C check");
  }
  ++received_frames_;
  return frame;
}

std::optional<base::Result<Frame>> PeerConnection::TakeBufferedFrame() {
  const std::span<const std::byte> buffered = read_ahead_.buffered();
  if (buffered.size() < kFrameHeaderBytes) {
    return std::nullopt;
  }
  auto header = ParseFrameHeader(buffered.first<kFrameHeaderBytes>());
  if (!header.ok()) {
    return header.status();  // Nothing after a bad header is read, so none need be taken.
  }
  const FrameHeader& h = header.value();
  if (buffered.size() < kFrameHeaderBytes + size_t{h.message_bytes} + h.payload_bytes) {
    return std::nullopt;
  }
  Frame frame;
  frame.type = h.type;
  if (h.payload_bytes > 0) {
    auto buffer = pool_.TryAcquire(h.payload_bytes);
    if (!buffer) {
      return std::nullopt;  // The coroutine path waits for one.
    }
    frame.payload = std::move(*buffer);
  }
  read_ahead_.Skip(kFrameHeaderBytes);
  frame.message.resize(h.message_bytes, boost::container::default_init);
  CHECK(read_ahead_.Take(Bytes(frame.message)));
  CHECK(read_ahead_.Take(frame.payload.span()));
  return Verified(h, std::move(frame));
}

asio::awaitable<base::Result<Frame>> PeerConnection::ReadFrameNoDeadline() {
  if (auto frame = TakeBufferedFrame()) {
    co_return std::move(*frame);
  }
  std::array<std::byte, kFrameHeaderBytes> raw{};
  if (Status st = co_await ReadExact(raw); !st.ok()) {
    co_return st;
  }
  auto header = ParseFrameHeader(raw);
  if (!header.ok()) {
    co_return header.status();
  }
  Frame frame;
  frame.type = header.value().type;
  frame.message.resize(header.value().message_bytes, boost::container::default_init);
  if (Status st = co_await ReadExact(Bytes(frame.message)); !st.ok()) {
    co_return st;
  }
  if (header.value().payload_bytes > 0) {
    for (;;) {
      if (auto buffer = pool_.TryAcquire(header.value().payload_bytes)) {
        frame.payload = std::move(*buffer);
        break;
      }
      // Out of buffers: stop reading until one comes back; TCP pushes back on the sender.
      std::weak_ptr<PeerConnection> weak = weak_from_this();
      pool_.NotifyOnRelease([weak] {
        if (auto self = weak.lock()) {
          self->reader_wakeup_.Notify();
        }
      });
      co_await reader_wakeup_.Wait();
      if (closed_) {
        co_return Status::Error(ECONNABORTED, "link closed");
      }
    }
    if (Status st = co_await ReadExact(frame.payload.span()); !st.ok()) {
      co_return st;
    }
  }
  co_return Verified(header.value(), std::move(frame));
}

asio::awaitable<base::Result<Frame>> PeerConnection::ReadFrame(
    std::chrono::milliseconds deadline) {
  // A peer that connects and then says nothing must not hold the handshake forever.
  asio::steady_timer timer(stream_->executor());
  timer.expires_after(deadline);
  bool timed_out = false;
  std::weak_ptr<PeerConnection> weak = weak_from_this();
  timer.async_wait([weak, &timed_out](const boost::system::error_code& ec) {
    if (!ec) {
      if (auto self = weak.lock()) {
        timed_out = true;
        self->stream_->Close();
      }
    }
  });
  auto frame = co_await ReadFrameNoDeadline();
  timer.cancel();
  if (timed_out) {
    co_return Status::Error(ETIMEDOUT, "peer sent nothing for " +
                                           std::to_string(deadline.count()) + " ms");
  }
  co_return frame;
}

asio::awaitable<Status> PeerConnection::Authenticate(const std::string& secret, bool dialer) {
  if (Status st = co_await stream_->Handshake(dialer); !st.ok()) {
    co_return st;
  }
  const auto own_nonce = RandomNonce();
  const Status refused = Status::Error(EACCES, "peer failed authentication (wrong secret?)");
  if (!dialer) {
    pb::AuthChallenge challenge;
    challenge.set_nonce(own_nonce.data(), own_nonce.size());
    if (Status st = co_await SendMessage(FrameType::kAuthChallenge, challenge); !st.ok()) {
      co_return st;
    }
    pb::AuthResponse response;
    if (Status st = co_await Expect(FrameType::kAuthResponse, response); !st.ok()) {
      co_return st;
    }
    const auto peer_nonce = AsBytes(response.nonce());
    if (peer_nonce.size() != kNonceBytes ||
        !MacMatches(ComputeMac(secret, "dialer", own_nonce, peer_nonce),
                    AsBytes(response.mac()))) {
      pb::Refuse refuse;
      refuse.set_reason("authentication failed");
      (void)co_await SendMessage(FrameType::kRefuse, refuse);
      co_return refused;
    }
    pb::AuthResponse answer;
    const Mac mac = ComputeMac(secret, "acceptor", peer_nonce, own_nonce);
    answer.set_mac(mac.data(), mac.size());
    co_return co_await SendMessage(FrameType::kAuthResponse, answer);
  }
  pb::AuthChallenge challenge;
  if (Status st = co_await Expect(FrameType::kAuthChallenge, challenge); !st.ok()) {
    co_return st;
  }
  const auto peer_nonce = AsBytes(challenge.nonce());
  if (peer_nonce.size() != kNonceBytes) {
    co_return Status::Error(EPROTO, "malformed authentication challenge");
  }
  pb::AuthResponse response;
  const Mac mac = ComputeMac(secret, "dialer", peer_nonce, own_nonce);
  response.set_mac(mac.data(), mac.size());
  response.set_nonce(own_nonce.data(), own_nonce.size());
  if (Status st = co_await SendMessage(FrameType::kAuthResponse, response); !st.ok()) {
    co_return st;
  }
  pb::AuthResponse answer;
  if (Status st = co_await Expect(FrameType::kAuthResponse, answer); !st.ok()) {
    co_return st.errno_value() == ECONNREFUSED ? refused : st;
  }
  if (!MacMatches(ComputeMac(secret, "acceptor", own_nonce, peer_nonce), AsBytes(answer.mac()))) {
    co_return refused;
  }
  co_return Status::Ok();
}

void PeerConnection::AdaptToPeerTimeout(std::chrono::milliseconds peer_timeout) {
  if (peer_timeout.count() <= 0) {
    return;
  }
  const auto strictest = std::min(timing_.timeout, peer_timeout);
  timing_.heartbeat_interval =
      std::min(timing_.heartbeat_interval,
               std::max(std::chrono::milliseconds(20), strictest / 4));
}

void PeerConnection::StartStreaming(FrameHandler* handler) {
  handler_ = handler;
  last_received_ = std::chrono::steady_clock::now();
  auto self = shared_from_this();
  asio::co_spawn(stream_->executor(), ReadLoop(), asio::detached);
  asio::co_spawn(stream_->executor(), WriteLoop(), asio::detached);
  asio::co_spawn(stream_->executor(), HeartbeatLoop(), asio::detached);
}

void PeerConnection::Send(FrameType type, const google::protobuf::MessageLite& message,
                          std::span<const std::byte> payload) {
  if (closed_) {
    return;
  }
  outgoing_.push_back(Build(type, message, payload));
  writer_wakeup_.Notify();
}

// With the writer idle and nothing queued, the frame goes out from here: waking the writer
// would cost a trip round the loop on each host's side of a lone write's round trip. What the
// socket does not take now is left to the writer, which sends it before anything later; so is
// an error, which the writer meets again and closes the link with.
void PeerConnection::SendAlone(FrameType type, const google::protobuf::MessageLite& message,
                               std::span<const std::byte> payload) {
  if (closed_ || writing_ || !outgoing_.empty()) {
    Send(type, message, payload);
    return;
  }
  Outgoing out = Build(type, message, payload);
  const std::array<asio::const_buffer, 3> buffers{
      asio::buffer(out.header), asio::buffer(out.message.data(), out.message.size()),
      asio::buffer(out.payload.data(), out.payload.size())};
  boost::system::error_code ec;
  const size_t sent = stream_->WriteNow(buffers, ec);
  if (!ec && sent == asio::buffer_size(buffers)) {
    ++sent_frames_;
    return;
  }
  out.sent_bytes = ec ? 0 : sent;
  outgoing_.push_back(std::move(out));
  writer_wakeup_.Notify();
}

void PeerConnection::Close(Status why) {
  if (closed_) {
    return;
  }
  closed_ = true;
  stream_->Close();
  outgoing_.clear();
  writer_wakeup_.Notify();
  reader_wakeup_.Notify();
  heartbeat_timer_.cancel();
  if (handler_ != nullptr) {
    FrameHandler* handler = handler_;
    auto self = shared_from_this();
    asio::post(stream_->executor(), [self, handler, why] { handler->OnClosed(why); });
  }
}

asio::awaitable<void> PeerConnection::ReadLoop() {
  auto self = shared_from_this();
  while (!closed_) {
    // (Not a conditional expression: GCC 12 mishandles a co_await inside one.)
    std::optional<base::Result<Frame>> frame = TakeBufferedFrame();
    if (!frame) {
      frame.emplace(co_await ReadFrameNoDeadline());
    }
    if (closed_) {
      break;
    }
    if (!frame->ok()) {
      Close(frame->status());
      break;
    }
    if (frame->value().type == FrameType::kHeartbeat) {
      continue;
    }
    handler_->OnFrame(frame->TakeValue());
  }
}

asio::awaitable<void> PeerConnection::WriteLoop() {
  auto self = shared_from_this();
  std::vector<Outgoing> batch;
  std::vector<asio::const_buffer> buffers;
  while (!closed_) {
    if (outgoing_.empty()) {
      co_await writer_wakeup_.Wait();
      continue;
    }
    batch.clear();
    buffers.clear();
    if (outgoing_.size() <= kMaxFramesPerWrite) {
      batch.swap(outgoing_);  // Both keep their capacity: a batch costs no allocation.
    } else {
      const auto cut = outgoing_.begin() + kMaxFramesPerWrite;
      batch.assign(std::make_move_iterator(outgoing_.begin()), std::make_move_iterator(cut));
      outgoing_.erase(outgoing_.begin(), cut);
    }
    for (const Outgoing& out : batch) {
      // Only the first frame of a batch can have been partly sent (by SendAlone).
      base::AppendUnsent(
          buffers,
          {asio::buffer(out.header), asio::buffer(out.message.data(), out.message.size()),
           asio::buffer(out.payload.data(), out.payload.size())},
          out.sent_bytes);
    }
    writing_ = true;
    Status st = co_await stream_->WriteAll(buffers);
    writing_ = false;
    if (!st.ok()) {
      Close(st);
      break;
    }
    sent_frames_ += batch.size();
  }
}

asio::awaitable<void> PeerConnection::HeartbeatLoop() {
  auto self = shared_from_this();
  while (!closed_) {
    heartbeat_timer_.expires_after(timing_.heartbeat_interval);
    boost::system::error_code ec;
    co_await heartbeat_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (closed_) {
      break;
    }
    const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - last_received_);
    if (silent > timing_.timeout) {
      Close(Status::Error(ETIMEDOUT, "peer silent for " + std::to_string(silent.count()) +
                                         " ms (timeout " +
                                         std::to_string(timing_.timeout.count()) + " ms)"));
      break;
    }
    pb::Heartbeat beat;
    beat.set_sent_unix_ms(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::system_clock::now().time_since_epoch())
            .count()));
    Send(FrameType::kHeartbeat, beat);
  }
}

}  // namespace transport
