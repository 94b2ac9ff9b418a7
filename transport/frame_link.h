#pragma once
// FrameLink: the streaming phase of a peer link, as the side that applies operations sees it.
// PeerConnection implements it over a socket; the mirror simulation implements it over its
// in-memory wire, so the shipped ReplicaApplier runs there unchanged.
//
// Contract: after StartStreaming(handler), every verified frame reaches handler->OnFrame in
// order, and the close (whatever its cause) reaches handler->OnClosed exactly once, posted to
// the loop. Send() after the close is dropped. Loop thread only.

#include <google/protobuf/message_lite.h>

#include <cstddef>
#include <span>
#include <vector>

#include "base/buffer_pool.h"
#include "base/status.h"
#include "transport/frame.h"

namespace transport {

struct Frame {
  FrameType type = FrameType::kHeartbeat;
  std::vector<std::byte> message;
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
  virtual void Close(base::Status why) = 0;
  virtual bool closed() const = 0;
};

}  // namespace transport
