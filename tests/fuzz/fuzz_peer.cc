// Fuzzes what a standby does with the frames of a hostile or broken primary once the link is
// authenticated: mirror::PeerListener::Serve (the handshake), then mirror::ReplicaApplier (the
// operations), the shipped classes, on the simulation's in-memory disks (tests/sim/sim_store.h).
//
// An input is a script, read with FuzzedDataProvider: the standby's starting state (paired or
// new, ahead, behind, its marked regions, its region size, how often its disks fail), then
// steps: a frame arrives from the primary, a disk operation completes (the input picks which,
// so they complete in any order), the clock moves past the sync-ahead window, the primary hangs
// up or connects again. Frames are mostly what a primary sends (Hello, SyncPlan, then
// operations numbered one after another), a field now and then at an edge: another version,
// node, size, volume or generation, a seq repeated or skipped, a range at or past the end of the
// volume or wrapping round 2^64, a payload longer or shorter than declared. Some frames are raw
// bytes where the message goes, a type out of place or unknown, or a damaged header. Each frame
// passes the real header and CRC checks (transport/frame.h) on its way in, as PeerConnection's.
//
// Besides ASan, UBSan, LSan and the engine's own CHECKs, an input fails (abort) when:
//   - the volume's store is asked for anything outside the volume, or the metadata store for
//     anything but whole bitmap pages and datasyncs;
//   - the volume's store is asked to read or write outside the delivery of a frame to the
//     applier (the handshake writes nothing to the volume; nothing does after the close);
//   - a frame the applier's contract calls invalid (Predict below models replica_applier.h)
//     does not drop the link or reaches the store, or a valid one drops the link or does not
//     submit exactly its own operation;
//   - Ready goes to a primary whose Hello or SyncPlan the listener should have refused, before
//     the plan is recorded, while operations of an earlier link are in flight, or with the
//     disk failed;
//   - an Ack names an operation that was not accepted or was acknowledged already; or says
//     success when the volume's durable image lacks what it promises (a durable Write or Zero,
//     everything acknowledged before a Flush or ResyncDone), a digest does not match the range,
//     or a ResyncDone left the copy anything but UpToDate at its generation with nothing
//     marked; or every disk operation has completed, the link is still open, and an accepted
//     operation has had no Ack;
//   - at the end, with the primary gone and every disk operation complete, anything is left:
//     an operation in flight, a coroutine parked, a payload buffer held, a link referenced.
// Where another operation on the same range was in flight or came later, what the volume must
// hold is left open (the primary never sends overlapping operations together).

#include <fuzzer/FuzzedDataProvider.h>
#include <google/protobuf/message.h>
#include <google/protobuf/stubs/logging.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "base/async_event.h"
#include "base/buffer_pool.h"
#include "base/sha256.h"
#include "mirror/metadata.h"
#include "mirror/peer_listener.h"
#include "mirror/replica_applier.h"
#include "mirror/write_intent_log.h"
#include "tests/sim/memory_superblock.h"
#include "tests/sim/sim_store.h"
#include "transport/frame.h"
#include "transport/frame_link.h"
#include "transport/peer.pb.h"

namespace {

using base::Status;
using mirror::DiskState;
using transport::FrameType;
namespace pb = nbdmirror::peer;

// Mostly a small volume, as each input allocates it afresh; now and then one a little over the
// longest range a DigestRequest may ask for, so that limit is reached inside the volume.
constexpr uint64_t kSmallVolumeBytes = 256 << 10;
constexpr uint64_t kLargeVolumeBytes = transport::kMaxDigestRangeBytes + 4096;
constexpr const char* kVolumeUuid = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
// Generations: the one the pair shares, two later ones.
constexpr uint64_t kGenA = 0xa0a0a0a0a0a0a0a0;
constexpr uint64_t kGenB = 0xb0b0b0b0b0b0b0b0;
constexpr uint64_t kGenC = 0xc0c0c0c0c0c0c0c0;
constexpr size_t kMaxSteps = 1000;
// Enough for every payload a script can send (one per step) to be held at once, so a frame never
// waits for a buffer: PeerConnection would stop reading, which the script cannot express.
constexpr uint32_t kMaxPayloadBytes = 128 << 10;
constexpr size_t kPoolBytes = kMaxSteps * kMaxPayloadBytes;
// A script step or a completion moves the clock this much; the input can move it further.
constexpr std::chrono::milliseconds kStepTime{1};

[[noreturn]] void Bug(const std::string& what) {
  std::fprintf(stderr, "fuzz_peer: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

std::string Range(uint64_t offset, uint64_t length) {
  return std::to_string(offset) + "+" + std::to_string(length);
}

bool Overlaps(uint64_t a_offset, uint64_t a_length, uint64_t b_offset, uint64_t b_length) {
  return a_offset < b_offset + b_length && b_offset < a_offset + a_length;
}

// FUZZ_PEER_LOG=1: the script's steps go to the log with the engine's lines, to follow a
// reproducer.
bool tracing = false;

void Trace(const std::string& line) {
  if (tracing) {
    spdlog::debug("script: {}", line);
  }
}

// A frame as the script sends it, for the trace.
std::string Describe(const std::vector<std::byte>& wire) {
  auto header =
      transport::ParseFrameHeader(std::span<const std::byte, transport::kFrameHeaderBytes>(
          wire.data(), transport::kFrameHeaderBytes));
  if (!header.ok()) {
    return "a frame with a bad header";
  }
  const auto type = header.value().type;
  const auto* message = reinterpret_cast<const char*>(wire.data()) + transport::kFrameHeaderBytes;
  const int message_bytes = static_cast<int>(header.value().message_bytes);
  std::unique_ptr<google::protobuf::Message> parsed;
  switch (type) {
    case FrameType::kHello:
      parsed = std::make_unique<pb::Hello>();
      break;
    case FrameType::kSyncPlan:
      parsed = std::make_unique<pb::SyncPlan>();
      break;
    case FrameType::kWrite:
      parsed = std::make_unique<pb::Write>();
      break;
    case FrameType::kZero:
      parsed = std::make_unique<pb::Zero>();
      break;
    case FrameType::kFlush:
      parsed = std::make_unique<pb::Flush>();
      break;
    case FrameType::kResyncDone:
      parsed = std::make_unique<pb::ResyncDone>();
      break;
    case FrameType::kDigestRequest:
      parsed = std::make_unique<pb::DigestRequest>();
      break;
    default:
      return transport::FrameTypeName(type);
  }
  if (message_bytes > static_cast<int>(wire.size() - transport::kFrameHeaderBytes) ||
      !parsed->ParseFromArray(message, message_bytes)) {
    return std::string(transport::FrameTypeName(type)) + " (does not parse)";
  }
  return std::string(transport::FrameTypeName(type)) + " {" + parsed->ShortDebugString() +
         "} payload " + std::to_string(header.value().payload_bytes);
}

// A SimStore whose every submission is checked (SimStore itself answers a range outside it with
// EINVAL, which here would hide the bug) and, for the volume, recorded for the frame being
// delivered.
class CheckedStore final : public mirror::LocalStore {
 public:
  enum class Op { kRead, kWrite, kWriteThrough, kZero, kDiscard, kDatasync };
  struct Submitted {
    Op op;
    uint64_t offset_bytes;
    uint64_t length_bytes;
  };

  CheckedStore(const std::string& name, uint64_t size_bytes, bool metadata)
      : sim_(name, size_bytes), metadata_(metadata) {}

  sim::SimStore& sim() { return sim_; }
  // The volume is read and written only from within OnFrame (see Standby::Deliver).
  void OpenForFrame() {
    open_for_frame_ = true;
    submitted_.clear();
  }
  std::vector<Submitted> CloseForFrame() {
    open_for_frame_ = false;
    return std::move(submitted_);
  }
  int reads_in_flight() const { return reads_in_flight_; }
  // A submit call may fail at once (it then never calls back), as the contract allows.
  void FailSubmissions(int per_mille, uint64_t seed) {
    submit_eio_per_mille_ = per_mille;
    rng_.seed(seed);
  }

  uint64_t size_bytes() const override { return sim_.size_bytes(); }
  std::string Describe() const override { return sim_.Describe(); }
  Status Read(uint64_t offset, std::span<std::byte> out, mirror::StoreDone done) override {
    if (Status st = Submit(Op::kRead, offset, out.size()); !st.ok()) {
      return st;
    }
    ++reads_in_flight_;
    return sim_.Read(offset, out, [this, done = std::move(done)](Status st) {
      --reads_in_flight_;
      done(std::move(st));
    });
  }
  Status Write(uint64_t offset, std::span<const std::byte> in, mirror::StoreDone done) override {
    if (Status st = Submit(Op::kWrite, offset, in.size()); !st.ok()) {
      return st;
    }
    return sim_.Write(offset, in, std::move(done));
  }
  Status WriteThrough(uint64_t offset, std::span<const std::byte> in,
                      mirror::StoreDone done) override {
    if (Status st = Submit(Op::kWriteThrough, offset, in.size()); !st.ok()) {
      return st;
    }
    return sim_.WriteThrough(offset, in, std::move(done));
  }
  Status Datasync(mirror::StoreDone done) override {
    if (Status st = Submit(Op::kDatasync, 0, 0); !st.ok()) {
      return st;
    }
    return sim_.Datasync(std::move(done));
  }
  Status Discard(uint64_t offset, uint64_t length, mirror::StoreDone done) override {
    if (Status st = Submit(Op::kDiscard, offset, length); !st.ok()) {
      return st;
    }
    return sim_.Discard(offset, length, std::move(done));
  }
  Status ZeroRange(uint64_t offset, uint64_t length, nbd::ZeroOptions options,
                   mirror::StoreDone done) override {
    if (Status st = Submit(Op::kZero, offset, length); !st.ok()) {
      return st;
    }
    return sim_.ZeroRange(offset, length, options, std::move(done));
  }
  Status Prefetch(uint64_t offset, uint64_t length, mirror::StoreDone done) override {
    Bug(sim_.Describe() + ": the standby prefetched " + Range(offset, length));
  }
  base::Result<std::vector<nbd::Extent>> Allocation(uint64_t offset, uint64_t length) override {
    Bug(sim_.Describe() + ": the standby asked for the allocation of " + Range(offset, length));
  }

 private:
  Status Submit(Op op, uint64_t offset, uint64_t length) {
    Check(op, offset, length);
    if (submit_eio_per_mille_ > 0 && static_cast<int>(rng_() % 1000) < submit_eio_per_mille_) {
      return Status::Error(EIO, "injected submission failure");
    }
    return Status::Ok();
  }
  void Check(Op op, uint64_t offset, uint64_t length) {
    const uint64_t size = sim_.size_bytes();
    if (offset > size || length > size - offset) {
      Bug(sim_.Describe() + ": operation at " + Range(offset, length) + " outside the store");
    }
    if (metadata_) {
      // Bitmap pages only: the superblock slots are MetadataFile's alone.
      if (op != Op::kDatasync &&
          (op != Op::kWrite || offset < mirror::kBitmapOffsetBytes ||
           (offset - mirror::kBitmapOffsetBytes) % mirror::kBitmapPageBytes != 0 ||
           length != mirror::kBitmapPageBytes)) {
        Bug(sim_.Describe() + ": not a bitmap page write at " + Range(offset, length));
      }
      return;
    }
    if (op == Op::kDatasync) {
      return;  // Group commit syncs whenever a durable operation or a Flush asks.
    }
    if (!open_for_frame_) {
      Bug(sim_.Describe() + ": data operation at " + Range(offset, length) +
          " outside the delivery of a frame (during the handshake or after the close)");
    }
    submitted_.push_back({op, offset, length});
  }

  sim::SimStore sim_;
  const bool metadata_;
  bool open_for_frame_ = false;
  std::vector<Submitted> submitted_;
  int reads_in_flight_ = 0;
  int submit_eio_per_mille_ = 0;
  std::mt19937_64 rng_;
};

class Standby;

// The standby's end of one connection after authentication, as PeerConnection behaves: during
// the handshake frames are read (and checked) one at a time, those behind waiting their turn;
// once streaming each checked frame goes to the handler on arrival, heartbeats excepted;
// nothing is read after the close, which the handler hears of once, posted to the loop.
class FuzzLink final : public transport::MessageLink {
 public:
  FuzzLink(int id, Standby& standby, asio::io_context& io, base::BufferPool& pool)
      : id(id), standby_(standby), io_(io), pool_(pool), readable_(io.get_executor()) {}

  const std::string& remote() const override { return remote_; }
  asio::awaitable<Status> SendMessage(FrameType type,
                                      const google::protobuf::MessageLite& message) override;
  asio::awaitable<base::Result<transport::Frame>> ReadFrame(std::chrono::milliseconds) override;
  void AdaptToPeerTimeout(std::chrono::milliseconds) override {}
  std::chrono::milliseconds handshake_deadline() const override {
    return std::chrono::milliseconds(1000);
  }
  void StartStreaming(transport::FrameHandler* handler) override;
  void Send(FrameType type, const google::protobuf::MessageLite& message,
            std::span<const std::byte> payload) override;
  void Close(Status why) override { MarkClosed(why.ToString()); }
  bool closed() const override { return closed_; }

  // From the script: one frame's bytes arrive; the primary closes its end.
  void Arrive(std::vector<std::byte> wire);
  void HangUp();

  const int id;  // 1 for the first connection, and so on (for the trace).
  // What the model follows of this link: the handshake's messages as the listener read them
  // (and the volume the standby belonged to when the Hello came), the last accepted seq, and
  // the accepted operations not yet acknowledged (seq -> index in Standby::accepted_).
  std::optional<pb::Hello> hello;
  std::string uuid_at_hello;
  std::optional<pb::SyncPlan> plan;
  std::optional<uint64_t> last_seq;
  std::multimap<uint64_t, size_t> unacked;

 private:
  base::Result<transport::Frame> Decode(const std::vector<std::byte>& wire);
  // Streaming: a frame read, checked and handed to the handler.
  void Take(const std::vector<std::byte>& wire);
  void MarkClosed(const std::string& why);

  Standby& standby_;
  asio::io_context& io_;
  base::BufferPool& pool_;
  base::AsyncEvent readable_;
  const std::string remote_ = "primary a";
  transport::FrameHandler* handler_ = nullptr;
  std::deque<std::vector<std::byte>> unread_;
  int frames_read_ = 0;
  bool peer_gone_ = false;
  bool closed_ = false;
  bool close_reported_ = false;
  std::string why_;
};

// What the primary sends, built from the input. Each choice takes one byte, mostly meaning
// "as a primary would": a script of random bytes then keeps its link for many operations, and
// the fuzzer finds the edges by changing single bytes.
class Primary {
 public:
  Primary(FuzzedDataProvider& in, uint64_t volume_bytes) : in_(in), volume_bytes_(volume_bytes) {}

  // A new connection: the handshake starts again, and so do the numbers.
  void Reconnect() {
    phase_ = Phase::kHello;
    seq_ = in_.PickValueInArray<uint64_t>({1, 1, 1, 1, 0, UINT64_MAX, 1000, UINT64_MAX - 1});
  }
  std::vector<std::byte> Next();

 private:
  enum class Phase { kHello, kSyncPlan, kStreaming };

  // True once in `n` (by the next byte).
  bool OneIn(int n) { return in_.ConsumeIntegralInRange<int>(0, n - 1) == 0; }
  std::vector<std::byte> Natural();
  std::vector<std::byte> Unusual();
  std::vector<std::byte> Hello();
  std::vector<std::byte> SyncPlan();
  std::vector<std::byte> Operation();
  std::vector<std::byte> Write();
  std::vector<std::byte> Zero();
  std::vector<std::byte> Digest();
  uint64_t Seq();
  uint64_t Gen();
  // Mostly a 4 KiB-aligned offset where `length` fits; now and then one at an edge.
  uint64_t Offset(uint64_t length);
  // Mostly one of the lengths a primary sends; now and then one at an edge.
  uint64_t Length(uint64_t max_bytes);

  FuzzedDataProvider& in_;
  const uint64_t volume_bytes_;
  Phase phase_ = Phase::kHello;
  uint64_t seq_ = 1;
  std::string hello_uuid_ = kVolumeUuid;
};

std::vector<std::byte> Wire(FrameType type, const std::string& message,
                            std::span<const std::byte> payload = {}) {
  const auto bytes = std::as_bytes(std::span(message.data(), message.size()));
  const auto header = transport::BuildFrameHeader(type, bytes, payload);
  std::vector<std::byte> wire(header.begin(), header.end());
  wire.insert(wire.end(), bytes.begin(), bytes.end());
  wire.insert(wire.end(), payload.begin(), payload.end());
  return wire;
}

std::vector<std::byte> Primary::Next() { return OneIn(16) ? Unusual() : Natural(); }

std::vector<std::byte> Primary::Natural() {
  switch (phase_) {
    case Phase::kHello:
      phase_ = Phase::kSyncPlan;
      return Hello();
    case Phase::kSyncPlan:
      phase_ = Phase::kStreaming;
      return SyncPlan();
    case Phase::kStreaming:
      break;
  }
  return Operation();
}

std::vector<std::byte> Primary::Unusual() {
  switch (in_.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: {
      pb::Heartbeat beat;
      beat.set_sent_unix_ms(in_.ConsumeIntegral<uint64_t>());
      return Wire(FrameType::kHeartbeat, beat.SerializeAsString());
    }
    case 1:
      return in_.ConsumeBool() ? Hello() : SyncPlan();  // Out of place, or repeated.
    case 2:
      return Operation();  // Perhaps before the handshake is done.
    case 3: {
      // Types the standby never takes from a primary, with whatever message.
      const FrameType type = in_.PickValueInArray(
          {FrameType::kAuthChallenge, FrameType::kAuthResponse, FrameType::kReady,
           FrameType::kRefuse, FrameType::kBitmapRuns, FrameType::kAck});
      return Wire(type, in_.ConsumeRandomLengthString(24));
    }
    case 4: {
      // Raw bytes as an operation's message (a Write's with a payload).
      const FrameType type =
          in_.PickValueInArray({FrameType::kWrite, FrameType::kZero, FrameType::kFlush,
                                FrameType::kResyncDone, FrameType::kDigestRequest});
      const std::string message = in_.ConsumeRandomLengthString(32);
      std::vector<std::byte> payload;
      if (type == FrameType::kWrite) {
        payload.resize(in_.PickValueInArray<size_t>({0, 1, 512, 4096}), std::byte{0x77});
      }
      return Wire(type, message, payload);
    }
    case 5: {
      // A type number PeerConnection does not know, or a payload on a type that takes none.
      const auto type = static_cast<FrameType>(in_.ConsumeIntegral<uint16_t>());
      std::vector<std::byte> payload(in_.ConsumeIntegralInRange<size_t>(0, 16), std::byte{1});
      return Wire(type, in_.ConsumeRandomLengthString(8), payload);
    }
    default: {
      // A damaged byte anywhere: header, message or payload.
      std::vector<std::byte> wire = Natural();
      const size_t at = in_.ConsumeIntegralInRange<size_t>(0, wire.size() - 1);
      wire[at] ^= static_cast<std::byte>(in_.ConsumeIntegralInRange<uint8_t>(1, 255));
      return wire;
    }
  }
}

uint64_t Primary::Gen() {
  if (!OneIn(4)) {
    return kGenA;
  }
  return in_.PickValueInArray<uint64_t>({kGenB, kGenC, 0, in_.ConsumeIntegral<uint64_t>()});
}

std::vector<std::byte> Primary::Hello() {
  // A perturbed Hello has each field at an edge by one more byte.
  const bool perturbed = OneIn(8);
  auto edge = [&] { return perturbed && in_.ConsumeBool(); };
  pb::Hello hello;
  hello.set_protocol_version(edge() ? in_.ConsumeIntegral<uint32_t>()
                                    : transport::kPeerProtocolVersion);
  hello.set_node_id(edge() ? in_.PickValueInArray<std::string>({"", "b", "A", "a "}) : "a");
  hello.set_role(edge() ? in_.PickValueInArray({pb::ROLE_UNSPECIFIED, pb::ROLE_SECONDARY})
                        : pb::ROLE_PRIMARY);
  hello_uuid_ = edge() ? in_.ConsumeRandomLengthString(4) : kVolumeUuid;
  hello.set_volume_uuid(hello_uuid_);
  hello.set_size_bytes(
      edge() ? in_.PickValueInArray<uint64_t>({0, volume_bytes_ - 1, volume_bytes_ + 1, UINT64_MAX})
             : volume_bytes_);
  hello.set_disk(pb::DISK_UP_TO_DATE);
  hello.set_timeout_ms(in_.PickValueInArray<uint32_t>({5000, 0, 1, UINT32_MAX}));
  hello.set_current_gen(Gen());
  hello.set_bitmap_gen(Gen());
  for (int i = in_.ConsumeIntegralInRange<int>(0, 3); i > 0; --i) {
    hello.add_history_gens(Gen());
  }
  hello.set_marked_bytes(in_.ConsumeBool() ? 0 : 65536);
  return Wire(FrameType::kHello, hello.SerializeAsString());
}

std::vector<std::byte> Primary::SyncPlan() {
  const bool perturbed = OneIn(8);
  auto edge = [&] { return perturbed && in_.ConsumeBool(); };
  pb::SyncPlan plan;
  plan.set_volume_uuid(edge() ? in_.ConsumeRandomLengthString(4) : hello_uuid_);
  plan.set_kind(edge()
                    ? pb::SyncPlan::KIND_UNSPECIFIED
                    : in_.PickValueInArray({pb::SyncPlan::KIND_NONE, pb::SyncPlan::KIND_INCREMENTAL,
                                            pb::SyncPlan::KIND_FULL}));
  plan.set_target_gen(edge() ? Gen() : kGenA);
  plan.set_resync_bytes(in_.ConsumeBool() ? 0 : volume_bytes_);
  return Wire(FrameType::kSyncPlan, plan.SerializeAsString());
}

uint64_t Primary::Seq() {
  if (!OneIn(32)) {
    return seq_++;
  }
  // Repeated, one skipped, or anything.
  return in_.PickValueInArray<uint64_t>({seq_ - 1, seq_ + 1, in_.ConsumeIntegral<uint64_t>()});
}

uint64_t Primary::Offset(uint64_t length) {
  if (!OneIn(16)) {
    const uint64_t room = length > volume_bytes_ ? 0 : (volume_bytes_ - length) / 4096;
    return in_.ConsumeIntegralInRange<uint64_t>(0, room) * 4096;
  }
  switch (in_.ConsumeIntegralInRange<int>(0, 7)) {
    case 0:
      return volume_bytes_ - length;  // Ends at the end (wraps if longer than the volume).
    case 1:
      return volume_bytes_ - length + 1;
    case 2:
      return volume_bytes_;
    case 3:
      return volume_bytes_ + 1;
    case 4:
      return 0 - length;  // offset + length wraps to exactly 0.
    case 5:
      return UINT64_MAX;
    case 6:
      return in_.ConsumeIntegral<uint64_t>();
    default:
      return in_.ConsumeIntegralInRange<uint64_t>(0, volume_bytes_);  // Unaligned.
  }
}

uint64_t Primary::Length(uint64_t max_bytes) {
  if (!OneIn(16)) {
    return in_.PickValueInArray<uint64_t>({4096, 4096, 4096, 8192, 65536, 512});
  }
  return in_.PickValueInArray<uint64_t>(
      {0, 1, volume_bytes_, volume_bytes_ + 1, transport::kMaxDigestRangeBytes,
       transport::kMaxDigestRangeBytes + 1, kMaxPayloadBytes, max_bytes,
       in_.ConsumeIntegralInRange<uint64_t>(0, volume_bytes_)});
}

std::vector<std::byte> Primary::Operation() {
  switch (in_.ConsumeIntegralInRange<int>(0, 15)) {
    case 8:
    case 9:
    case 10:
      return Zero();
    case 11:
    case 12: {
      pb::Flush flush;
      flush.set_seq(Seq());
      return Wire(FrameType::kFlush, flush.SerializeAsString());
    }
    case 13: {
      pb::ResyncDone done;
      done.set_seq(Seq());
      done.set_current_gen(Gen());
      return Wire(FrameType::kResyncDone, done.SerializeAsString());
    }
    case 14:
      return Digest();
    case 15: {
      pb::Heartbeat beat;
      return Wire(FrameType::kHeartbeat, beat.SerializeAsString());
    }
    default:
      return Write();
  }
}

std::vector<std::byte> Primary::Write() {
  const auto length = static_cast<uint32_t>(Length(UINT32_MAX));
  pb::Write write;
  write.set_seq(Seq());
  write.set_offset_bytes(Offset(length));
  write.set_length_bytes(length);
  write.set_durable(in_.ConsumeBool());
  write.set_resync(in_.ConsumeBool());
  // The payload carries the declared length, or now and then a byte more or less, or nothing.
  uint64_t payload_bytes = length;
  if (OneIn(32)) {
    payload_bytes = in_.PickValueInArray<uint64_t>({length + 1ull, length - 1ull, 0});
  }
  // Past kMaxPayloadBytes the declared length cannot be carried anyway.
  payload_bytes = std::min<uint64_t>(payload_bytes, kMaxPayloadBytes);
  const std::vector<std::byte> payload(payload_bytes, static_cast<std::byte>(write.seq()));
  return Wire(FrameType::kWrite, write.SerializeAsString(), payload);
}

std::vector<std::byte> Primary::Zero() {
  const uint64_t length =
      OneIn(16) ? in_.PickValueInArray<uint64_t>({volume_bytes_, UINT64_MAX}) : Length(UINT64_MAX);
  pb::Zero zero;
  zero.set_seq(Seq());
  zero.set_offset_bytes(Offset(length));
  zero.set_length_bytes(length);
  zero.set_durable(in_.ConsumeBool());
  zero.set_may_punch_hole(in_.ConsumeBool());
  zero.set_discard(in_.ConsumeBool());
  return Wire(FrameType::kZero, zero.SerializeAsString());
}

std::vector<std::byte> Primary::Digest() {
  const auto length = static_cast<uint32_t>(Length(UINT32_MAX));
  pb::DigestRequest request;
  request.set_seq(Seq());
  request.set_offset_bytes(Offset(length));
  request.set_length_bytes(length);
  return Wire(FrameType::kDigestRequest, request.SerializeAsString());
}

// An operation the applier accepted, and what its Ack promises.
struct Accepted {
  enum class Kind { kWrite, kDigest, kFlush, kResyncDone };
  Kind kind = Kind::kFlush;
  uint64_t seq = 0;
  // What it submits to the volume (none for Flush and ResyncDone).
  std::optional<CheckedStore::Submitted> op;
  // A Write or Zero: the byte it leaves everywhere in its range, if it is one byte repeated.
  std::optional<std::byte> fill;
  bool durable = false;
  uint64_t current_gen = 0;  // ResyncDone.

  // Filled in as the script goes on.
  bool acked_ok = false;
  bool acked = false;
  // Another write to the range may land after this one, or (a digest) before its read.
  bool overlapped = false;
  // Flush, ResyncDone: the writes acknowledged before it arrived.
  std::vector<size_t> covers;
};

// What the applier is to do with a frame, by its contract (replica_applier.h): validate, then
// submit the one operation, or drop the link and submit nothing.
struct Prediction {
  bool valid = false;
  std::string why;  // Why it is invalid.
  Accepted accepted;
};

std::optional<std::byte> Fill(std::span<const std::byte> bytes) {
  if (bytes.empty() ||
      !std::all_of(bytes.begin(), bytes.end(), [&](std::byte b) { return b == bytes[0]; })) {
    return std::nullopt;
  }
  return bytes[0];
}

Prediction Predict(const transport::Frame& frame, const std::optional<uint64_t>& last_seq,
                   uint64_t volume_bytes, int reads_in_flight) {
  Prediction p;
  Accepted& a = p.accepted;
  auto in_range = [volume_bytes](uint64_t offset, uint64_t length) {
    return offset <= volume_bytes && length <= volume_bytes - offset;
  };
  auto seq_follows = [&](uint64_t seq) { return !last_seq || seq == *last_seq + 1; };
  auto verdict = [&](bool valid, const char* why) {
    p.valid = valid;
    p.why = valid ? "" : why;
    return p;
  };
  switch (frame.type) {
    case FrameType::kWrite: {
      pb::Write m;
      if (!frame.Parse(m)) {
        return verdict(false, "Write does not parse");
      }
      a.kind = Accepted::Kind::kWrite;
      a.seq = m.seq();
      a.op = {CheckedStore::Op::kWrite, m.offset_bytes(), m.length_bytes()};
      a.fill = Fill(frame.payload.span());
      a.durable = m.durable();
      return verdict(seq_follows(m.seq()) && m.length_bytes() > 0 &&
                         m.length_bytes() == frame.payload.size() &&
                         in_range(m.offset_bytes(), m.length_bytes()),
                     "Write out of sequence, empty, of the wrong length or outside the volume");
    }
    case FrameType::kZero: {
      pb::Zero m;
      if (!frame.Parse(m)) {
        return verdict(false, "Zero does not parse");
      }
      a.kind = Accepted::Kind::kWrite;
      a.seq = m.seq();
      a.op = {m.discard() ? CheckedStore::Op::kDiscard : CheckedStore::Op::kZero, m.offset_bytes(),
              m.length_bytes()};
      a.fill = std::byte{0};
      a.durable = m.durable();
      return verdict(seq_follows(m.seq()) && m.length_bytes() > 0 &&
                         in_range(m.offset_bytes(), m.length_bytes()),
                     "Zero out of sequence, empty or outside the volume");
    }
    case FrameType::kFlush: {
      pb::Flush m;
      const bool parsed = frame.Parse(m);
      a.kind = Accepted::Kind::kFlush;
      a.seq = m.seq();
      return verdict(parsed && seq_follows(m.seq()), "Flush unparsed or out of sequence");
    }
    case FrameType::kResyncDone: {
      pb::ResyncDone m;
      const bool parsed = frame.Parse(m);
      a.kind = Accepted::Kind::kResyncDone;
      a.seq = m.seq();
      a.current_gen = m.current_gen();
      return verdict(parsed && m.current_gen() != 0 && seq_follows(m.seq()),
                     "ResyncDone unparsed, without a generation or out of sequence");
    }
    case FrameType::kDigestRequest: {
      pb::DigestRequest m;
      if (!frame.Parse(m)) {
        return verdict(false, "DigestRequest does not parse");
      }
      a.kind = Accepted::Kind::kDigest;
      a.seq = m.seq();
      a.op = {CheckedStore::Op::kRead, m.offset_bytes(), m.length_bytes()};
      // The applier allows 8 digest reads in flight (kMaxDigestReads, private).
      return verdict(seq_follows(m.seq()) && m.length_bytes() > 0 &&
                         m.length_bytes() <= transport::kMaxDigestRangeBytes &&
                         in_range(m.offset_bytes(), m.length_bytes()) && reads_in_flight < 8,
                     "DigestRequest out of sequence, empty, too long, outside the volume or "
                     "one too many");
    }
    default:
      return verdict(false, "not an operation");
  }
}

// The standby: the shipped listener and applier on checked in-memory disks, and the script.
class Standby {
 public:
  explicit Standby(FuzzedDataProvider& in);
  ~Standby();

  void Run();
  // FuzzLink hands each frame to the applier through here, and shows what the standby sends.
  void Deliver(FuzzLink& link, transport::FrameHandler& handler, transport::Frame frame);
  void CheckReady(const FuzzLink& link);
  void CheckAck(FuzzLink& link, const pb::Ack& ack);
  const mirror::VolumeMetadata& metadata() const { return superblock_.get(); }

 private:
  static mirror::VolumeMetadata InitialMetadata(FuzzedDataProvider& in, uint64_t volume_bytes);
  std::vector<uint8_t> InitialBits(uint64_t region_bytes);
  void SetFaults();
  void Step();
  void Connect();
  FuzzLink* OpenLink();
  void CompleteOne(CheckedStore& store);
  void Poll();
  void Drain();
  void CheckAcked();
  void CheckNothingLeft();
  void Accept(FuzzLink& link, Accepted accepted);
  void CheckSubmitted(const Accepted& accepted, const std::vector<CheckedStore::Submitted>& ops);
  void CheckDurable(const Accepted& accepted);
  void CheckResyncDone(const Accepted& accepted);

  FuzzedDataProvider& in_;
  const uint64_t volume_bytes_;
  mirror::VolumeMetadata md_;  // The superblock's (durable at once, can fail).
  sim::MemorySuperblock superblock_{md_};
  CheckedStore data_;
  CheckedStore meta_;
  std::mt19937_64 rng_;  // SimStore's fault injection.
  mirror::GroupCommit::Clock::time_point now_{};
  Primary primary_;
  std::unique_ptr<asio::io_context> io_;
  std::unique_ptr<base::BufferPool> pool_;
  std::unique_ptr<mirror::WriteIntentLog> log_;
  std::unique_ptr<mirror::ReplicaApplier> applier_;
  std::unique_ptr<mirror::PeerListener> listener_;
  std::vector<std::shared_ptr<FuzzLink>> links_;
  std::vector<Accepted> accepted_;  // Of every link, in order of arrival.
};

mirror::VolumeMetadata Standby::InitialMetadata(FuzzedDataProvider& in, uint64_t volume_bytes) {
  mirror::VolumeMetadata md;
  md.node_id = "b";
  md.size_bytes = volume_bytes;
  // 40000: the last region is short.
  md.region_bytes = in.PickValueInArray<uint64_t>({65536, 4096, volume_bytes, 40000});
  md.volume_uuid = kVolumeUuid;
  md.disk = DiskState::kUpToDate;
  md.gens.current = md.gens.bitmap = kGenA;
  md.gens.current_shared = true;
  switch (in.ConsumeIntegralInRange<int>(0, 6)) {
    case 1:  // Never synchronised.
      md.volume_uuid.clear();
      md.gens = {};
      md.disk = DiskState::kInconsistent;
      break;
    case 2:  // A resync was interrupted.
      md.disk = DiskState::kInconsistent;
      break;
    case 3:  // Promoted meanwhile: it holds writes a primary at A lacks.
      md.gens.current = kGenB;
      md.gens.history = {kGenA};
      break;
    case 4:  // Two generations on from A, and back in sync at C.
      md.gens.current = md.gens.bitmap = kGenC;
      md.gens.history = {kGenB, kGenA};
      break;
    case 5:
      md.disk = DiskState::kOutdated;
      break;
    case 6:
      md.disk = DiskState::kFailed;
      break;
    default:  // In sync at A.
      break;
  }
  return md;
}

std::vector<uint8_t> Standby::InitialBits(uint64_t region_bytes) {
  const uint64_t regions = mirror::RegionCount(volume_bytes_, region_bytes);
  std::vector<uint8_t> bits(mirror::BitmapPageCount(regions) * mirror::kBitmapAreaBytes, 0);
  for (int runs = in_.ConsumeIntegralInRange<int>(0, 3); runs > 0; --runs) {
    const uint64_t first = in_.ConsumeIntegralInRange<uint64_t>(0, regions - 1);
    const uint64_t end = std::min(regions, first + in_.ConsumeIntegralInRange<uint64_t>(1, 4));
    for (uint64_t r = first; r < end; ++r) {
      bits[r / 8] |= static_cast<uint8_t>(1u << (r % 8));
    }
  }
  return bits;
}

Standby::Standby(FuzzedDataProvider& in)
    : in_(in),
      volume_bytes_(in.ConsumeIntegralInRange<int>(0, 7) == 0 ? kLargeVolumeBytes
                                                              : kSmallVolumeBytes),
      md_(InitialMetadata(in, volume_bytes_)),
      data_("b.data", volume_bytes_, /*metadata=*/false),
      meta_("b.meta",
            mirror::kBitmapOffsetBytes + mirror::BitmapPageCount(mirror::RegionCount(
                                             volume_bytes_, superblock_.get().region_bytes)) *
                                             mirror::kBitmapPageBytes,
            /*metadata=*/true),
      rng_(in.ConsumeIntegral<uint64_t>()),
      primary_(in, volume_bytes_),
      io_(std::make_unique<asio::io_context>()),
      pool_(std::make_unique<base::BufferPool>(kPoolBytes)) {
  const uint64_t region_bytes = superblock_.get().region_bytes;
  log_ = std::make_unique<mirror::WriteIntentLog>(*io_, &meta_, volume_bytes_, region_bytes,
                                                  InitialBits(region_bytes));
  applier_ = std::make_unique<mirror::ReplicaApplier>(*io_, data_, superblock_, *log_);
  applier_->group_commit().SetClock([this] { return now_; });
  mirror::PeerListenerOptions options;
  options.node_id = "b";
  options.peer_node_id = "a";
  // Now and then this node is a primary itself (no applier), which must refuse every caller.
  const bool primary = in_.ConsumeIntegralInRange<int>(0, 31) == 0;
  listener_ = std::make_unique<mirror::PeerListener>(*io_, options, superblock_, *log_, *pool_,
                                                     primary ? nullptr : applier_.get());
  SetFaults();
}

Standby::~Standby() {
  // As the simulation's Secondary: the parts while the io_context lives, then the io_context
  // (dropping whatever is parked), then the pool its handlers' buffers came from.
  data_.sim().DropPending();
  meta_.sim().DropPending();
  listener_.reset();
  applier_.reset();
  log_.reset();
  links_.clear();
  io_.reset();
  pool_.reset();
}

void Standby::SetFaults() {
  data_.sim().set_write_eio_per_mille(in_.PickValueInArray({0, 0, 0, 100}));
  data_.sim().set_datasync_eio_per_mille(in_.PickValueInArray({0, 0, 0, 100}));
  meta_.sim().set_write_eio_per_mille(in_.PickValueInArray({0, 0, 0, 200}));
  meta_.sim().set_datasync_eio_per_mille(in_.PickValueInArray({0, 0, 0, 200}));
  data_.FailSubmissions(in_.PickValueInArray({0, 0, 0, 0, 0, 0, 0, 100}), rng_());
  meta_.FailSubmissions(in_.PickValueInArray({0, 0, 0, 0, 0, 0, 0, 100}), rng_());
  // Mostly never; else from the handshake's update on, or from the one at a ResyncDone.
  superblock_.FailAfter(in_.PickValueInArray({-1, -1, -1, -1, -1, -1, 0, 1}));
}

void Standby::Run() {
  Connect();
  for (size_t step = 0; step < kMaxSteps && in_.remaining_bytes() > 0; ++step) {
    Step();
    now_ += kStepTime;
    Poll();
  }
  // With the primary still connected, every accepted operation is acknowledged once the disks
  // have done their part.
  Drain();
  CheckAcked();
  for (const auto& link : links_) {
    link->HangUp();
  }
  Drain();
  CheckNothingLeft();
}

void Standby::Step() {
  // Mostly frames and completions; a connection lasts for a hundred steps or so.
  const uint8_t pick = in_.ConsumeIntegral<uint8_t>();
  if (pick < 150) {
    std::vector<std::byte> wire = primary_.Next();
    if (FuzzLink* link = OpenLink()) {
      if (tracing) {
        Trace("link " + std::to_string(link->id) + " carries " + Describe(wire));
      }
      link->Arrive(std::move(wire));
    }
  } else if (pick < 210) {
    CompleteOne(data_);
  } else if (pick < 230) {
    CompleteOne(meta_);
  } else if (pick < 240) {
    Drain();
    CheckAcked();
  } else if (pick < 248) {
    Trace("the clock moves on past the sync-ahead window");
    now_ += mirror::GroupCommit::kSyncAheadWindow * 2;
  } else if (pick < 252) {
    if (FuzzLink* link = OpenLink()) {
      Trace("the primary hangs up link " + std::to_string(link->id));
      link->HangUp();
    }
  } else {
    Connect();
  }
}

void Standby::Connect() {
  auto link = std::make_shared<FuzzLink>(static_cast<int>(links_.size()) + 1, *this, *io_, *pool_);
  links_.push_back(link);
  Trace("the primary connects: link " + std::to_string(link->id));
  primary_.Reconnect();
  // Not asio::detached: an exception out of the handshake would vanish with it.
  asio::co_spawn(*io_, listener_->Serve(link), [](std::exception_ptr e) {
    if (e) {
      Bug("PeerListener::Serve threw");
    }
  });
}

// The primary talks on its newest connection still open (a refused one is closed).
FuzzLink* Standby::OpenLink() {
  for (auto it = links_.rbegin(); it != links_.rend(); ++it) {
    if (!(*it)->closed()) {
      return it->get();
    }
  }
  return nullptr;
}

void Standby::CompleteOne(CheckedStore& store) {
  const size_t pending = store.sim().pending_count();
  if (pending > 0) {
    Trace(store.sim().CompleteAt(in_.ConsumeIntegralInRange<size_t>(0, pending - 1), rng_));
  }
}

void Standby::Poll() {
  io_->restart();
  io_->poll();
}

void Standby::Drain() {
  // Oldest first; a bound, so that an engine that keeps submitting fails rather than hangs.
  for (int round = 0;; ++round) {
    if (round > 100000) {
      Bug("the standby never settles: it keeps submitting disk operations");
    }
    Poll();
    if (data_.sim().pending_count() > 0) {
      Trace(data_.sim().CompleteAt(0, rng_));
    } else if (meta_.sim().pending_count() > 0) {
      Trace(meta_.sim().CompleteAt(0, rng_));
    } else {
      return;
    }
    now_ += kStepTime;
  }
}

void Standby::CheckAcked() {
  for (const auto& link : links_) {
    if (!link->closed() && !link->unacked.empty()) {
      Bug("seq " + std::to_string(link->unacked.begin()->first) +
          " was accepted and never acknowledged, with every disk operation complete");
    }
  }
}

void Standby::CheckNothingLeft() {
  if (applier_->attached()) {
    Bug("the applier is still attached to a closed link");
  }
  if (!applier_->idle()) {
    Bug("the applier has operations in flight with none left on the disks");
  }
  if (!io_->stopped()) {
    Bug("work is left on the loop (a coroutine parked for good?)");
  }
  if (pool_->in_use_bytes() != 0) {
    Bug(std::to_string(pool_->in_use_bytes()) + " payload bytes still held");
  }
  for (const auto& link : links_) {
    if (link.use_count() != 1) {
      Bug("a closed link is still referenced");
    }
  }
}

void Standby::Deliver(FuzzLink& link, transport::FrameHandler& handler, transport::Frame frame) {
  const Prediction p = Predict(frame, link.last_seq, volume_bytes_, data_.reads_in_flight());
  if (p.valid) {
    // Before the call: an Ack could come from inside it.
    Accept(link, p.accepted);
  }
  data_.OpenForFrame();
  handler.OnFrame(std::move(frame));
  const std::vector<CheckedStore::Submitted> ops = data_.CloseForFrame();
  if (!p.valid) {
    if (!link.closed()) {
      Bug("the applier kept the link after an invalid frame: " + p.why);
    }
    if (!ops.empty()) {
      Bug("an invalid frame reached the volume at " +
          Range(ops[0].offset_bytes, ops[0].length_bytes) + ": " + p.why);
    }
    return;
  }
  if (link.closed()) {
    Bug("the applier dropped the link on a valid frame, seq " + std::to_string(p.accepted.seq));
  }
  CheckSubmitted(p.accepted, ops);
}

void Standby::Accept(FuzzLink& link, Accepted accepted) {
  link.last_seq = accepted.seq;
  const bool writes = accepted.kind == Accepted::Kind::kWrite;
  if (accepted.op) {
    const auto& range = *accepted.op;
    for (Accepted& earlier : accepted_) {
      if (!earlier.op || !Overlaps(earlier.op->offset_bytes, earlier.op->length_bytes,
                                   range.offset_bytes, range.length_bytes)) {
        continue;
      }
      const bool earlier_writes = earlier.kind == Accepted::Kind::kWrite;
      // This write may land after the earlier operation; an earlier write still in flight may
      // land after this one, or before this digest's read.
      if (writes) {
        earlier.overlapped = true;
      }
      if (earlier_writes && !earlier.acked) {
        accepted.overlapped = true;
      }
    }
  } else {
    for (size_t i = 0; i < accepted_.size(); ++i) {
      if (accepted_[i].kind == Accepted::Kind::kWrite && accepted_[i].acked_ok) {
        accepted.covers.push_back(i);
      }
    }
  }
  link.unacked.emplace(accepted.seq, accepted_.size());
  accepted_.push_back(std::move(accepted));
}

void Standby::CheckSubmitted(const Accepted& accepted,
                             const std::vector<CheckedStore::Submitted>& ops) {
  const std::string seq = "seq " + std::to_string(accepted.seq);
  const size_t expected = accepted.op ? 1 : 0;
  if (ops.size() != expected) {
    Bug(seq + " submitted " + std::to_string(ops.size()) + " operations to the volume, not " +
        std::to_string(expected));
  }
  if (!accepted.op) {
    return;
  }
  const auto& want = *accepted.op;
  const auto& got = ops[0];
  // Whether a write goes through (RWF_DSYNC) is GroupCommit's choice.
  const bool kind_matches = got.op == want.op || (want.op == CheckedStore::Op::kWrite &&
                                                  got.op == CheckedStore::Op::kWriteThrough);
  if (!kind_matches || got.offset_bytes != want.offset_bytes ||
      got.length_bytes != want.length_bytes) {
    Bug(seq + " reached the volume as another operation, at " +
        Range(got.offset_bytes, got.length_bytes));
  }
}

void Standby::CheckReady(const FuzzLink& link) {
  const pb::Hello* hello = link.hello ? &*link.hello : nullptr;
  const pb::SyncPlan* plan = link.plan ? &*link.plan : nullptr;
  if (hello == nullptr || hello->protocol_version() != transport::kPeerProtocolVersion ||
      hello->node_id() != "a" || hello->role() != pb::ROLE_PRIMARY ||
      hello->size_bytes() != volume_bytes_ || hello->volume_uuid().empty() ||
      (!link.uuid_at_hello.empty() && hello->volume_uuid() != link.uuid_at_hello)) {
    Bug("Ready after a Hello the listener must refuse");
  }
  if (plan == nullptr || plan->volume_uuid() != hello->volume_uuid() ||
      plan->kind() == pb::SyncPlan::KIND_UNSPECIFIED || plan->target_gen() == 0) {
    Bug("Ready after a SyncPlan the listener must refuse");
  }
  const auto& md = superblock_.get();
  const DiskState disk =
      plan->kind() == pb::SyncPlan::KIND_NONE ? DiskState::kUpToDate : DiskState::kInconsistent;
  if (md.volume_uuid != plan->volume_uuid() || md.gens.current != plan->target_gen() ||
      md.gens.bitmap != plan->target_gen() || md.disk != disk) {
    Bug("Ready before the SyncPlan is recorded");
  }
  if (plan->kind() == pb::SyncPlan::KIND_NONE && log_->marked_regions() != 0) {
    Bug("Ready in sync with regions still marked");
  }
  if (applier_->attached() || !applier_->idle()) {
    Bug("Ready while operations of an earlier link are in flight");
  }
  if (applier_->disk_failed()) {
    Bug("Ready to a primary with the disk failed");
  }
}

void Standby::CheckAck(FuzzLink& link, const pb::Ack& ack) {
  Trace("the standby sends Ack {" + ack.ShortDebugString() + "}");
  auto it = link.unacked.find(ack.seq());
  if (it == link.unacked.end()) {
    Bug("Ack for seq " + std::to_string(ack.seq()) + ", not accepted or acknowledged already");
  }
  Accepted& a = accepted_[it->second];
  link.unacked.erase(it);
  a.acked = true;
  a.acked_ok = ack.error() == 0;
  const bool digest_due = a.kind == Accepted::Kind::kDigest && a.acked_ok;
  if (ack.digest().size() != (digest_due ? 32u : 0u)) {
    Bug("Ack for seq " + std::to_string(ack.seq()) + " with a digest of " +
        std::to_string(ack.digest().size()) + " bytes");
  }
  if (!a.acked_ok) {
    return;
  }
  switch (a.kind) {
    case Accepted::Kind::kWrite:
      if (a.durable) {
        CheckDurable(a);
      }
      return;
    case Accepted::Kind::kDigest: {
      const auto range =
          std::span(data_.sim().data()).subspan(a.op->offset_bytes, a.op->length_bytes);
      if (!a.overlapped && ack.digest() != base::Sha256(range)) {
        Bug("Ack for seq " + std::to_string(a.seq) + " carries another range's digest");
      }
      return;
    }
    case Accepted::Kind::kResyncDone:
      CheckResyncDone(a);
      [[fallthrough]];
    case Accepted::Kind::kFlush:
      for (size_t covered : a.covers) {
        CheckDurable(accepted_[covered]);
      }
      return;
  }
}

void Standby::CheckDurable(const Accepted& a) {
  if (a.overlapped || !a.fill || !a.op) {
    return;  // What the range holds is open (see the file comment).
  }
  const auto range =
      std::span(data_.sim().durable()).subspan(a.op->offset_bytes, a.op->length_bytes);
  if (!std::all_of(range.begin(), range.end(), [&](std::byte b) { return b == *a.fill; })) {
    Bug("seq " + std::to_string(a.seq) + " at " + Range(a.op->offset_bytes, a.op->length_bytes) +
        " is acknowledged as durable and is not");
  }
}

void Standby::CheckResyncDone(const Accepted& a) {
  const auto& md = superblock_.get();
  if (md.disk != DiskState::kUpToDate || md.gens.current != a.current_gen ||
      md.gens.bitmap != a.current_gen || log_->marked_regions() != 0) {
    Bug("ResyncDone seq " + std::to_string(a.seq) +
        " acknowledged with the copy not UpToDate at its generation, or regions marked");
  }
}

asio::awaitable<Status> FuzzLink::SendMessage(FrameType type,
                                              const google::protobuf::MessageLite& message) {
  if (closed_) {
    co_return Status::Error(ECONNRESET, "link closed: " + why_);
  }
  Trace(std::string("the standby sends ") + transport::FrameTypeName(type));
  if (type == FrameType::kReady) {
    standby_.CheckReady(*this);
  }
  co_return Status::Ok();
}

asio::awaitable<base::Result<transport::Frame>> FuzzLink::ReadFrame(std::chrono::milliseconds) {
  // Frames that arrived before the primary hung up are still read; after our own close, none.
  while (unread_.empty() && !closed_ && !peer_gone_) {
    co_await readable_.Wait();
  }
  if (closed_ || unread_.empty()) {
    co_return Status::Error(ECONNRESET, closed_ ? "link closed: " + why_ : "the primary hung up");
  }
  std::vector<std::byte> wire = std::move(unread_.front());
  unread_.pop_front();
  auto frame = Decode(wire);
  // The listener reads a Hello, then a SyncPlan: what it saw is what Ready is checked against.
  const int index = frames_read_++;
  if (frame.ok() && index == 0 && frame.value().type == FrameType::kHello) {
    uuid_at_hello = standby_.metadata().volume_uuid;
    if (pb::Hello m; frame.value().Parse(m)) {
      hello = m;
    }
  }
  if (frame.ok() && index == 1 && frame.value().type == FrameType::kSyncPlan) {
    if (pb::SyncPlan m; frame.value().Parse(m)) {
      plan = m;
    }
  }
  co_return frame;
}

void FuzzLink::StartStreaming(transport::FrameHandler* handler) {
  handler_ = handler;
  // Frames read ahead during the handshake come first, each checked as it is reached.
  while (!unread_.empty() && !closed_) {
    std::vector<std::byte> wire = std::move(unread_.front());
    unread_.pop_front();
    Take(wire);
  }
  unread_.clear();
  if (peer_gone_) {
    MarkClosed("the primary hung up");
  }
  if (closed_ && !close_reported_) {
    close_reported_ = true;
    asio::post(io_, [handler, why = why_] { handler->OnClosed(Status::Error(ECONNRESET, why)); });
  }
}

void FuzzLink::Send(FrameType type, const google::protobuf::MessageLite& message,
                    std::span<const std::byte> payload) {
  if (closed_) {
    return;
  }
  if (type != FrameType::kAck || !payload.empty()) {
    Bug(std::string("the applier sent a ") + transport::FrameTypeName(type));
  }
  pb::Ack ack;
  if (!ack.ParseFromString(message.SerializeAsString())) {
    Bug("the applier sent an Ack that does not parse");
  }
  standby_.CheckAck(*this, ack);
}

void FuzzLink::Arrive(std::vector<std::byte> wire) {
  if (closed_ || peer_gone_) {
    return;
  }
  if (handler_ == nullptr) {
    unread_.push_back(std::move(wire));
    readable_.Notify();
    return;
  }
  Take(wire);
}

void FuzzLink::Take(const std::vector<std::byte>& wire) {
  auto frame = Decode(wire);
  if (!frame.ok()) {
    MarkClosed(frame.status().ToString());
    return;
  }
  if (frame.value().type == FrameType::kHeartbeat) {
    return;  // PeerConnection's reader keeps heartbeats to itself.
  }
  standby_.Deliver(*this, *handler_, frame.TakeValue());
}

void FuzzLink::HangUp() {
  if (closed_ || peer_gone_) {
    return;
  }
  peer_gone_ = true;
  readable_.Notify();
  if (handler_ != nullptr) {
    MarkClosed("the primary hung up");
  }
}

base::Result<transport::Frame> FuzzLink::Decode(const std::vector<std::byte>& wire) {
  auto header =
      transport::ParseFrameHeader(std::span<const std::byte, transport::kFrameHeaderBytes>(
          wire.data(), transport::kFrameHeaderBytes));
  if (!header.ok()) {
    return header.status();
  }
  const transport::FrameHeader& h = header.value();
  const auto body = std::span(wire).subspan(transport::kFrameHeaderBytes);
  if (body.size() != size_t{h.message_bytes} + h.payload_bytes) {
    // A damaged length: the reader is out of step with the frames, which the CRC would catch at
    // the latest; or it waits for bytes that never come, until the primary is gone.
    return Status::Error(EPROTO, "a damaged frame length");
  }
  transport::Frame frame;
  frame.type = h.type;
  frame.message.assign(body.begin(), body.begin() + h.message_bytes);
  if (h.payload_bytes > 0) {
    std::optional<base::Buffer> buffer = pool_.TryAcquire(h.payload_bytes);
    if (!buffer) {
      Bug("the harness's payload pool is spent");
    }
    std::memcpy(buffer->data(), body.data() + h.message_bytes, h.payload_bytes);
    frame.payload = std::move(*buffer);
  }
  if (!transport::FrameCrcMatches(h, transport::Bytes(frame.message), frame.payload.span())) {
    return Status::Error(EBADMSG, "CRC mismatch");
  }
  return frame;
}

void FuzzLink::MarkClosed(const std::string& why) {
  if (closed_) {
    return;
  }
  closed_ = true;
  why_ = why;
  readable_.Notify();
  if (handler_ != nullptr && !close_reported_) {
    close_reported_ = true;
    asio::post(io_,
               [handler = handler_, why] { handler->OnClosed(Status::Error(ECONNRESET, why)); });
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Every refusal and rejection is logged, and protobuf complains of each string that is not
  // UTF-8: at thousands of inputs a second that is all the fuzzer would do.
  tracing = std::getenv("FUZZ_PEER_LOG") != nullptr;
  if (tracing) {
    spdlog::set_level(spdlog::level::debug);
  } else {
    spdlog::set_level(spdlog::level::off);
    google::protobuf::SetLogHandler(nullptr);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Standby standby(in);
  standby.Run();
  return 0;
}
