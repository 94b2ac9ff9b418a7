#include "transport/frame_link.h"

#include "transport/peer.pb.h"

namespace transport {

using base::Status;
namespace pb = nbdmirror::peer;

asio::awaitable<Status> MessageLink::Expect(FrameType type, google::protobuf::MessageLite& out) {
  auto frame = co_await ReadFrame(handshake_deadline());
  if (!frame.ok()) {
    co_return frame.status();
  }
  if (frame.value().type == FrameType::kRefuse && type != FrameType::kRefuse) {
    pb::Refuse refuse;
    (void)frame.value().Parse(refuse);
    co_return Status::Error(ECONNREFUSED, "peer refused: " + refuse.reason());
  }
  if (frame.value().type != type) {
    co_return Status::Error(EPROTO, std::string("expected ") + FrameTypeName(type) + ", got " +
                                        FrameTypeName(frame.value().type));
  }
  if (!frame.value().Parse(out)) {
    co_return Status::Error(EPROTO, std::string(FrameTypeName(type)) + " does not parse");
  }
  co_return Status::Ok();
}

}  // namespace transport
