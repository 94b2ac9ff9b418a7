#pragma once
// FrameLink and MessageLink: a peer link as the mirror's state machines (Replicator,
// PeerListener, ReplicaApplier) see it. PeerConnection implements them over a socket; the mirror
// simulation implements them over its in-memory wire, so the shipped state machines run there
// unchanged.
//
// FrameLink is the streaming phase: after StartStreaming(handler), every verified frame reaches
// handler->OnFrame in order, and the close (whatever its cause, Close() included) reaches
// handler->OnClosed exactly once, posted to the loop. Send() after the close is dropped.
//
// MessageLink adds the handshake phase, before StartStreaming: coroutine calls that send one
// message and read one frame. Authentication happens before a MessageLink is handed over.
//
// Loop thread only.

#include <google/protobuf/message_lite.h>

#include <boost/container/small_vector.hpp>
#include <chrono>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "base/asio.h"
#include "base/buffer_pool.h"
#include "base/status.h"
#include "transport/frame.h"

namespace transport {

// A frame's protobuf message bytes. Every message of the data path (Write, Zero, Flush, Ack
// without a digest) is a few dozen bytes: they stay in place, with no allocation per frame;
// larger ones (handshake, digests) go to the heap.
inline constexpr size_t kInlineMessageBytes = 64;
using MessageBytes = boost::container::small_vector<std::byte, kInlineMessageBytes>;

// Boost's small_vector predates std::contiguous_iterator, so spans of it are made by hand.
inline std::span<const std::byte> Bytes(const MessageBytes& m) { return {m.data(), m.size()}; }
inline std::span<std::byte> Bytes(MessageBytes& m) { return {m.data(), m.size()}; }

struct Frame {
  FrameType type = FrameType::kHeartbeat;
  MessageBytes message;
  base::Buffer payload;

  // Parses the protobuf message; false if it does not parse.
  bool Parse(google::protobuf::MessageLite& out) const {
    return out.ParseFromArray(message.data(), static_cast<int>(message.size()));
  }
};

class FrameHandler {
 public:
  virtual ~FrameHandler() = default;
  virtual void OnFrame(Frame frame) = 0;
  virtual void OnClosed(const base::Status& why) = 0;
};

class FrameLink {
 public:
  virtual ~FrameLink() = default;
  // `handler` is borrowed until OnClosed has run.
  virtual void StartStreaming(FrameHandler* handler) = 0;
  // Queues a frame. `payload` is borrowed until the frame is sent or the link closes.
  virtual void Send(FrameType type, const google::protobuf::MessageLite& message,
                    std::span<const std::byte> payload = {}) = 0;
  // Send, for a frame that nothing is expected to join soon (its sender has nothing else in
  // flight): a link may put it on the wire at once rather than in its writer's next batch.
  virtual void SendAlone(FrameType type, const google::protobuf::MessageLite& message,
                         std::span<const std::byte> payload = {}) {
    Send(type, message, payload);
  }
  virtual void Close(base::Status why) = 0;
  virtual bool closed() const = 0;
};

class MessageLink : public FrameLink {
 public:
  virtual const std::string& remote() const = 0;
  virtual asio::awaitable<base::Status> SendMessage(
      FrameType type, const google::protobuf::MessageLite& message) = 0;
  // Reads one frame; `deadline` bounds how long a silent peer can hold the handshake.
  virtual asio::awaitable<base::Result<Frame>> ReadFrame(std::chrono::milliseconds deadline) = 0;
  // Heartbeats must come often enough for the stricter of the two sides' timeouts. Called
  // before StartStreaming with the timeout the peer announced in its Hello.
  virtual void AdaptToPeerTimeout(std::chrono::milliseconds peer_timeout) = 0;
  // How long Expect waits for a frame.
  virtual std::chrono::milliseconds handshake_deadline() const = 0;

  // Reads one frame of the given type and parses it into `out`. A Refuse frame instead is an
  // ECONNREFUSED error carrying the peer's reason.
  asio::awaitable<base::Status> Expect(FrameType type, google::protobuf::MessageLite& out);
};

}  // namespace transport
