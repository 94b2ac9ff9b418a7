#pragma once
// PeerConnection: a framed, checksummed, authenticated message link to the other daemon.
//
// Life: the dialer or acceptor creates it around a connected PeerStream and runs the
// handshake phase with the coroutine calls (Authenticate, SendMessage, ReadFrame). Then
// StartStreaming() hands it to a FrameHandler: a reader coroutine delivers each verified frame
// to OnFrame, a writer coroutine sends queued frames in gathered writes, and a heartbeat
// coroutine sends a Heartbeat every interval and closes the link when nothing at all has
// arrived for `timeout` (a dead host, a cut cable, a SIGSTOPped peer).
//
// Any error (socket, bad frame, checksum mismatch, timeout, Close()) closes the link exactly
// once and reports it through OnClosed, posted to the loop. Frames queued but not yet sent are
// dropped; their payloads are borrowed and released by the caller when it learns of the close.
//
// Flow control: Send() queues at most what the caller has in flight (the caller bounds it);
// received payloads come from the BufferPool, and the reader stops reading while it is empty.
//
// Lifetime: shared_ptr; the coroutines hold references. Loop thread only.

#include <google/protobuf/message_lite.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/async_event.h"
#include "base/buffer_pool.h"
#include "base/read_ahead.h"
#include "base/status.h"
#include "transport/frame.h"
#include "transport/frame_link.h"
#include "transport/peer_stream.h"

namespace transport {

struct LinkTiming {
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::milliseconds timeout{5000};
};

class PeerConnection final : public MessageLink,
                             public std::enable_shared_from_this<PeerConnection> {
 public:
  // `pool` is borrowed and must outlive the connection.
  PeerConnection(std::unique_ptr<PeerStream> stream, base::BufferPool& pool, LinkTiming timing);
  ~PeerConnection() override;

  // Handshake phase (before StartStreaming). Authenticate comes first, before the link is
  // handed to the handshake as a MessageLink.
  asio::awaitable<base::Status> Authenticate(const std::string& secret, bool dialer);
  const std::string& remote() const override { return stream_->remote(); }
  asio::awaitable<base::Status> SendMessage(FrameType type,
                                            const google::protobuf::MessageLite& message) override;
  asio::awaitable<base::Result<Frame>> ReadFrame(std::chrono::milliseconds deadline) override;
  void AdaptToPeerTimeout(std::chrono::milliseconds peer_timeout) override;
  std::chrono::milliseconds handshake_deadline() const override { return timing_.timeout; }

  // Streaming phase (FrameLink).
  void StartStreaming(FrameHandler* handler) override;
  void Send(FrameType type, const google::protobuf::MessageLite& message,
            std::span<const std::byte> payload = {}) override;
  void SendAlone(FrameType type, const google::protobuf::MessageLite& message,
                 std::span<const std::byte> payload = {}) override;
  void Close(base::Status why) override;
  bool closed() const override { return closed_; }

  uint64_t sent_frames() const { return sent_frames_; }
  uint64_t received_frames() const { return received_frames_; }

 private:
  struct Outgoing {
    std::array<std::byte, kFrameHeaderBytes> header;
    MessageBytes message;
    std::span<const std::byte> payload;
    size_t sent_bytes = 0;  // Already on the wire (SendAlone cut short by a full socket).
  };

  asio::awaitable<base::Result<Frame>> ReadFrameNoDeadline();
  // A frame wholly in the read-ahead, taken without entering a coroutine (at depth one receive
  // brings many); nullopt, and nothing taken, when its bytes or a payload buffer are missing.
  std::optional<base::Result<Frame>> TakeBufferedFrame();
  // Checks a frame whose bytes are all read against its header's CRC.
  base::Result<Frame> Verified(const FrameHeader& header, Frame frame);
  // Reads exactly `out` through a read-ahead buffer, so a burst of small frames (acks, 4 KiB
  // writes) costs one receive call, not three per frame.
  asio::awaitable<base::Status> ReadExact(std::span<std::byte> out);
  asio::awaitable<void> ReadLoop();
  asio::awaitable<void> WriteLoop();
  asio::awaitable<void> HeartbeatLoop();
  Outgoing Build(FrameType type, const google::protobuf::MessageLite& message,
                 std::span<const std::byte> payload) const;

  std::unique_ptr<PeerStream> stream_;
  base::ReadAhead read_ahead_;
  base::BufferPool& pool_;
  LinkTiming timing_;
  FrameHandler* handler_ = nullptr;
  std::vector<Outgoing> outgoing_;
  base::AsyncEvent writer_wakeup_;
  base::AsyncEvent reader_wakeup_;
  asio::steady_timer heartbeat_timer_;
  std::chrono::steady_clock::time_point last_received_;
  bool closed_ = false;
  bool writing_ = false;  // The writer is inside WriteAll.
  uint64_t sent_frames_ = 0;
  uint64_t received_frames_ = 0;
};

}  // namespace transport
