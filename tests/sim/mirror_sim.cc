// The mirror simulation. One schedule, from one seed:
//
// What runs is the shipped engine of both hosts, unchanged:
//   - the primary: mirror::Volume (range locks, intent marking, fan-out, group commit, the
//     acknowledgement rule), mirror::Replicator (dialing, the handshake and its sync decision,
//     streaming, loss of the peer under `degrade`, the resync through mirror::Resync, clean
//     cycles, the generations it records), mirror::WriteIntentLog and mirror::GroupCommit;
//   - the secondary: mirror::PeerListener's handshake (Serve), mirror::ReplicaApplier, its own
//     WriteIntentLog and GroupCommit.
// Each host has its own io_context; the schedule runs one action, then polls both until idle.
//
// What is simulated around it:
//   - Disks (tests/sim/sim_store.h): each host's data and metadata stores complete operations
//     in any order the schedule picks; a crash drops every write not covered by a completed
//     datasync (each may survive, survive torn or vanish).
//   - Superblocks: a MemorySuperblock per host (tests/sim/memory_superblock.h), durable as
//     soon as it is updated, as MetadataFile::Update is a synchronous write and fdatasync of a
//     double-buffered slot.
//     Bitmap pages go through the metadata SimStore and are reloaded after a crash through the
//     real page codec, exactly as MetadataFile::ReadBitmap does.
//   - The network: the Replicator's dial and the listener's accept are replaced by Connect,
//     which makes a Connection (one TCP connection: a FIFO of frames each way) with a SimEnd
//     (transport::MessageLink) at each host. Frames carry the real protobuf messages and
//     payloads; the schedule delivers them one at a time, in either direction, with any delay.
//     A close (by an end, a network cut or a crash) ends the connection: a random prefix of
//     what was in flight toward each surviving end still arrives (it was in a socket buffer),
//     the rest is lost, and then that end sees the close.
//   - Time: the Replicator's timers (the retry interval between dials, the clean interval, the
//     ack watch's look every half --peer-ack-timeout-ms) are Sleeps that end when the schedule
//     says the interval has passed. GroupCommit's sync-ahead
//     window reads a virtual clock, kStepTime per step, on both hosts.
//   - The engine's log lines go into the schedule's trace (generations renamed g1, g2, ...).
//
// The schedule: client WRITE (some FUA, some unaligned, mostly into a few hot 4 KiB regions of
// a 64-region volume, so overlaps and shared regions are frequent), WRITE_ZEROES, TRIM and
// FLUSH, at most 6 in flight; completion of any pending operation of any disk, in any order;
// delivery of the next frame of any connection in either direction; the retry and clean
// intervals passing; link cuts; crashes of either host (the engine is destroyed and restarted
// from what is durable; a restarted primary does not know the peer's state and dials at once);
// failovers: while the primary reports its standby connected and UpToDate, the primary's host
// dies, the standby is restarted as primary (the daemon's --primary, refused unless its copy is
// UpToDate) and serves the clients, and the old primary rejoins as its standby. Roles can swap
// back and forth within a schedule; bit rot: a byte of the standby's disk changes behind every
// component's back, and the operator runs `nbdmirror verify` (the shipped Verifier, the
// applier's DigestRequest), which must find it so that the resync after it repairs it before
// the schedule ends (a verify also runs now and then with nothing to find); a faulty proxy: an
// operation or an Ack duplicated, or overtaking the frame before it (the applier must drop the
// link at an operation out of sequence, the replicator at an Ack it does not expect; Acks in
// another order are fine).
// Per seed: mode sync or flush; --on-peer-loss degrade or block (under block, every write
// acknowledged as durable must be durable on the standby at its reply, checked there); a pair
// in sync or a new pair needing a full resync; how often each fault strikes; whether a busy
// volume cleans its bitmap every cycle or keeps it marked; marks of one region or of aligned
// chunks of four; whether the resync's buffer budget holds one block or many. Optionally
// (ScheduleOptions::inject_write_eio) data-disk writes fail with EIO.
//
// Failing datasyncs (and the flushes of write-throughs), in a quarter of the schedules on each
// host: GroupCommit fails that disk for good; the standby then refuses every primary and the
// primary fails every durable request, until the operator restarts that daemon (a schedule
// action).
//
// What is not simulated: promoting a standby the primary did not report UpToDate (its copy may
// lack writes the primary acknowledged without it; the generations then refuse the rejoin as
// split brain, which a schedule that must heal cannot get past), a failing metadata disk,
// authentication, TLS, the frame header and its checksum (covered by unit and fuzz tests; a bad
// frame is a close here), heartbeats (a silent peer is a cut here), and the resync rate limit
// (unlimited here).
//
// After the random actions the schedule heals: no more faults and no more clean cycles; the
// retry interval passes whenever the replicator waits for it, until the pair is connected, the
// resync done and acknowledged, the peer UpToDate and every client operation answered; then a
// client FLUSH. Then it checks that both disks' durable images are identical and hold, byte for
// byte, the last write the client was told succeeded (where a later write the client was not
// told about, or a crash that could have taken a non-durable acknowledged write, leaves the
// byte open). Along the way, whenever the primary reports the standby connected and UpToDate,
// it checks that a failover at that moment would lose no write acknowledged as durable.

#include "tests/sim/mirror_sim.h"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>

#include "base/async_event.h"
#include "base/buffer_pool.h"
#include "mirror/generations.h"
#include "mirror/metadata.h"
#include "mirror/peer_listener.h"
#include "mirror/replica_applier.h"
#include "mirror/replicator.h"
#include "mirror/volume.h"
#include "mirror/write_intent_log.h"
#include "tests/sim/memory_superblock.h"
#include "tests/sim/sim_store.h"
#include "transport/frame_link.h"
#include "transport/peer.pb.h"

namespace sim {
namespace {

using base::Status;
using mirror::DiskState;
using mirror::Generations;
using transport::FrameType;
namespace pb = nbdmirror::peer;

constexpr uint64_t kRegionBytes = 4096;
constexpr uint64_t kRegions = 64;
constexpr uint64_t kVolumeBytes = kRegions * kRegionBytes;
constexpr size_t kMaxOutstanding = 6;
constexpr int kMaxHealSteps = 200000;
// The two intervals the Replicator sleeps for; the schedule tells them apart by length.
constexpr std::chrono::milliseconds kRetryInterval{1000};
constexpr std::chrono::milliseconds kCleanInterval{5000};
constexpr std::chrono::milliseconds kAckTimeout{4000};  // Its watch sleeps half of it.
constexpr const char* kVolumeUuid = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

using Meta = mirror::VolumeMetadata;

// Generations are random (NewGeneration); the trace names them g1, g2, ... in order of first
// appearance, so a replayed seed prints the same trace. One schedule runs at a time.
std::map<uint64_t, std::string>& GenerationNames() {
  static std::map<uint64_t, std::string> names;
  return names;
}
std::string Gen(uint64_t gen) {
  if (gen == 0) {
    return "0";
  }
  auto& names = GenerationNames();
  auto [it, added] = names.emplace(gen, "");
  if (added) {
    it->second = "g" + std::to_string(names.size());
  }
  return it->second;
}
// DecideSync's reasons name generations in hex: rename those too.
std::string NameGenerations(std::string text) {
  for (const auto& [gen, name] : GenerationNames()) {
    const std::string hex = mirror::GenerationText(gen);
    for (size_t at = text.find(hex); at != std::string::npos; at = text.find(hex)) {
      text.replace(at, hex.size(), name);
    }
  }
  return text;
}
std::string GensText(const Generations& g) {
  return "cur=" + Gen(g.current) + " bm=" + Gen(g.bitmap);
}

class World;

enum class Side { kPrimary, kSecondary };

// A frame on its way: what PeerConnection would write to the socket.
struct WireFrame {
  FrameType type = FrameType::kHeartbeat;
  std::string message;
  std::vector<std::byte> payload;
};

class SimEnd;

// One TCP connection between the hosts (see the file comment).
struct Connection {
  uint64_t id = 0;
  bool open = true;
  std::deque<WireFrame> to_secondary;
  std::deque<WireFrame> to_primary;
  std::weak_ptr<SimEnd> primary;
  std::weak_ptr<SimEnd> secondary;
  std::deque<WireFrame>& toward(Side side) {
    return side == Side::kPrimary ? to_primary : to_secondary;
  }
  std::weak_ptr<SimEnd>& end(Side side) { return side == Side::kPrimary ? primary : secondary; }
};

// One host's end of a Connection, as PeerConnection behaves after authentication: frames in
// order, read one at a time during the handshake and handed to the handler once streaming;
// received payloads from the host's BufferPool; the close reported once, posted to the loop.
class SimEnd final : public transport::MessageLink {
 public:
  SimEnd(World& world, std::shared_ptr<Connection> connection, Side side, std::string name,
         std::string remote, asio::io_context& io, base::BufferPool& pool)
      : world_(world),
        connection_(std::move(connection)),
        side_(side),
        io_(io),
        pool_(pool),
        readable_(io.get_executor()),
        name_(std::move(name)),
        remote_(std::move(remote)) {}

  const std::string& remote() const override { return remote_; }
  asio::awaitable<Status> SendMessage(FrameType type,
                                      const google::protobuf::MessageLite& message) override {
    if (closed_) {
      co_return Status::Error(ECONNRESET, "link closed: " + why_);
    }
    Push(type, message, {});
    co_return Status::Ok();
  }
  asio::awaitable<base::Result<transport::Frame>> ReadFrame(std::chrono::milliseconds) override {
    while (inbox_.empty() && !closed_) {
      co_await readable_.Wait();
    }
    if (inbox_.empty()) {
      co_return Status::Error(ECONNRESET, "link closed: " + why_);
    }
    transport::Frame frame = std::move(inbox_.front());
    inbox_.pop_front();
    co_return frame;
  }
  void AdaptToPeerTimeout(std::chrono::milliseconds) override {}
  std::chrono::milliseconds handshake_deadline() const override { return kRetryInterval; }

  void StartStreaming(transport::FrameHandler* handler) override {
    handler_ = handler;
    // Frames that arrived during the handshake (PeerConnection's read-ahead) come first.
    auto early = std::move(inbox_);
    inbox_.clear();
    for (transport::Frame& frame : early) {
      handler_->OnFrame(std::move(frame));
    }
    if (closed_) {
      ReportClose();
    }
  }
  void Send(FrameType type, const google::protobuf::MessageLite& message,
            std::span<const std::byte> payload) override {
    if (!closed_) {
      Push(type, message, payload);
    }
  }
  void Close(Status why) override;
  bool closed() const override { return closed_; }

  // From the World: a frame arrives; the connection's end has been read.
  void Receive(WireFrame wire);
  void End(const std::string& why) {
    if (!closed_) {
      MarkClosed(why);
    }
  }

 private:
  void Push(FrameType type, const google::protobuf::MessageLite& message,
            std::span<const std::byte> payload);
  void MarkClosed(const std::string& why) {
    closed_ = true;
    why_ = why;
    readable_.Notify();
    if (handler_ != nullptr) {
      ReportClose();
    }
  }
  void ReportClose() {
    if (close_reported_) {
      return;
    }
    close_reported_ = true;
    asio::post(io_, [handler = handler_, why = why_] {
      handler->OnClosed(Status::Error(ECONNRESET, why));
    });
  }

  World& world_;
  std::shared_ptr<Connection> connection_;
  const Side side_;
  asio::io_context& io_;
  base::BufferPool& pool_;
  base::AsyncEvent readable_;
  const std::string name_;
  const std::string remote_;
  transport::FrameHandler* handler_ = nullptr;
  std::deque<transport::Frame> inbox_;
  bool closed_ = false;
  bool close_reported_ = false;
  std::string why_;
};

// The secondary's engine, rebuilt at every restart: the shipped listener and applier.
class Secondary {
 public:
  Secondary(World& world, SimStore& data, SimStore& meta, Meta& md,
            const std::vector<uint8_t>& bits, const std::string& primary_name);
  ~Secondary() {
    // A crash. The parts go while the io_context lives (their timers and events belong to it),
    // then the io_context drops its queued handlers and parked coroutines unrun, then the pool
    // whose buffers those may hold.
    listener_.reset();
    applier_.reset();
    log_.reset();
    io_.reset();
    pool_.reset();
  }

  asio::io_context& io() { return *io_; }
  base::BufferPool& pool() { return *pool_; }
  mirror::PeerListener& listener() { return *listener_; }
  mirror::ReplicaApplier& applier() { return *applier_; }

 private:
  MemorySuperblock superblock_;
  std::unique_ptr<asio::io_context> io_;
  std::unique_ptr<base::BufferPool> pool_;
  std::unique_ptr<mirror::WriteIntentLog> log_;
  std::unique_ptr<mirror::ReplicaApplier> applier_;
  std::unique_ptr<mirror::PeerListener> listener_;
};

// The primary's engine, rebuilt at every restart.
struct PrimaryEngine {
  std::unique_ptr<asio::io_context> io;
  std::unique_ptr<base::BufferPool> pool;
  std::unique_ptr<MemorySuperblock> superblock;
  std::unique_ptr<mirror::WriteIntentLog> log;
  std::unique_ptr<mirror::Replicator> replicator;
  std::unique_ptr<mirror::Volume> volume;

  ~PrimaryEngine() {
    // As for the secondary: the parts, then the io_context, then the pool.
    replicator.reset();
    volume.reset();
    log.reset();
    io.reset();
    superblock.reset();
    pool.reset();
  }
};

struct ClientOp {
  enum class Kind { kWrite, kZero, kTrim, kFlush };
  enum class State { kPending, kOk, kFailed, kLost };
  Kind kind = Kind::kWrite;
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  std::vector<std::byte> data;  // Borrowed by the volume until the reply.
  bool fua = false;
  State state = State::kPending;
  bool guaranteed = false;     // Acknowledged durable on both (sync mode, FUA, a later FLUSH).
  bool maybe_lost = false;     // Acknowledged, not durable, and the primary crashed since.
  std::vector<size_t> covers;  // FLUSH: writes acknowledged before it was sent.
};

class World {
 public:
  explicit World(const ScheduleOptions& options)
      : options_(options), rng_(options.seed), host_a_("A"), host_b_("B") {}

  ScheduleResult Run();
  ~World() {
    // Operations no disk completed hold callbacks (and buffers) of the engines: gone first.
    for (SimStore* store : {&P().data, &P().meta, &S().data, &S().meta}) {
      store->DropPending();
    }
    primary_.reset();
    secondary_.reset();
    GenerationNames().clear();
  }

  void Trace(const std::string& line) { trace_.push_back(std::to_string(step_) + ": " + line); }
  // An engine log line: generations named as in the rest of the trace.
  void TraceLog(const std::string& line);
  // The simulation's time: kStepTime per step, so GroupCommit's 1 s sync-ahead window opens and
  // closes at the same steps in every run of a seed.
  static constexpr std::chrono::milliseconds kStepTime{20};
  mirror::GroupCommit::Clock::time_point VirtualNow() const {
    return mirror::GroupCommit::Clock::time_point{} + step_ * kStepTime;
  }
  void Fail(const std::string& why) {
    if (failure_.empty()) {
      failure_ = why;
    }
  }
  // Ends a connection (see the file comment). `closer`: the side that closed it or crashed
  // (it reads nothing more); nullopt for a network cut. `crashed`: the closer died.
  void Cut(const std::shared_ptr<Connection>& connection, const std::string& why,
           std::optional<Side> closer, bool crashed);
  // A frame leaves `from`'s end.
  void Sent(Side from, const WireFrame& frame);
  // Puts a frame on its way: now and then (per seed) an operation or an Ack is duplicated, or
  // overtakes the frame before it, as a faulty proxy between the hosts might do. (TCP itself
  // never does; nor is a frame dropped without the connection ending, which only a timeout
  // could notice.)
  void Carry(WireFrame frame, std::deque<WireFrame>& queue);

 private:
  using Action = std::function<void()>;
  struct Sleeper {
    std::chrono::milliseconds duration;
    bool woken = false;
    base::AsyncEvent* event = nullptr;
  };

  void Setup();
  void StartPrimary();
  void StartSecondary();
  // The bitmap as MetadataFile::ReadBitmap loads it from `meta`'s durable image: a page
  // failing its checksum is all set. `torn` counts those pages.
  static std::vector<uint8_t> LoadBitmap(const SimStore& meta, uint64_t& torn);
  // The Replicator's dial: a new connection, whose other end the secondary's listener serves.
  asio::awaitable<base::Result<std::shared_ptr<transport::MessageLink>>> Connect();
  // The Replicator's timers: until the schedule says `duration` has passed.
  asio::awaitable<void> Sleep(std::chrono::milliseconds duration);
  bool Sleeping(std::chrono::milliseconds duration) const;
  void Wake(std::chrono::milliseconds duration);
  // The primary's host loses power: its engine goes, unsynced writes may be lost or torn.
  void KillPrimary(const std::string& why);
  void CrashPrimary();
  void CrashSecondary();
  void Failover();
  bool MayFailOver() const;
  // Bit rot on the standby's disk, and the operator's `nbdmirror verify` that must find it.
  void Rot();
  void StartVerify();
  void WatchVerify();
  bool Rotten() const { return rot_epoch_ != repaired_epoch_; }
  void Drain();
  bool Step(bool healing);
  void AddActions(bool healing, std::vector<std::pair<int, Action>>& actions);
  void SubmitClientOp();
  void OnClientDone(size_t id, const Status& st);
  void CompleteRandom(SimStore& store);
  void Deliver(const std::shared_ptr<Connection>& connection, Side to);
  void EndOf(const std::shared_ptr<Connection>& connection, Side side, const std::string& why);
  std::shared_ptr<Connection> OpenConnection() const;
  bool Connected() const;
  bool Healed() const;
  bool LinksQuiet() const;  // No frame on its way on an open connection.
  void FinalFlush();
  struct Expected {
    std::vector<std::byte> bytes;
    std::vector<int64_t> writer;  // The last op that wrote the byte; -1 for none.
    std::vector<uint8_t> known;   // The byte must hold bytes[at].
  };
  Expected ComputeExpected(bool durable_only) const;
  void CheckFailover();
  void Check();
  void Tally();
  void TallySecondary();  // Before the secondary's engine goes.
  std::string Report() const;
  uint64_t RandomOffset();

  ScheduleOptions options_;
  std::mt19937_64 rng_;
  // A host: its disks and superblock outlive its engine. A starts as the primary; a failover
  // swaps the roles.
  struct Host {
    explicit Host(const std::string& host_name)
        : name(host_name),
          data(host_name + ".data", kVolumeBytes),
          meta(host_name + ".meta", mirror::kBitmapOffsetBytes + mirror::BitmapPageCount(kRegions) *
                                                                     mirror::kBitmapPageBytes) {
      md.node_id = host_name;
    }
    std::string name;
    SimStore data;
    SimStore meta;
    Meta md;
  };
  Host& P() { return *primary_host_; }
  Host& S() { return *secondary_host_; }
  const Host& P() const { return *primary_host_; }
  const Host& S() const { return *secondary_host_; }
  Host host_a_;
  Host host_b_;
  Host* primary_host_ = &host_a_;
  Host* secondary_host_ = &host_b_;
  mirror::Mode mode_ = mirror::Mode::kSync;
  std::unique_ptr<PrimaryEngine> primary_;
  std::unique_ptr<Secondary> secondary_;
  std::vector<std::shared_ptr<Connection>> connections_;
  uint64_t connection_ids_ = 0;
  std::vector<Sleeper*> sleepers_;
  std::deque<ClientOp> ops_;
  size_t outstanding_ = 0;
  // Per-schedule weights, so some schedules crash a lot and others barely cut the link.
  int w_crash_primary_ = 1;
  int w_crash_secondary_ = 1;
  int w_cut_ = 1;
  int w_clean_ = 5;
  int w_failover_ = 0;
  bool block_ = false;  // --on-peer-loss block rather than degrade.
  int w_rot_ = 0;
  int w_mangle_ = 0;  // Per mille of numbered frames duplicated or reordered.
  int w_ack_watch_ = 0;
  int standby_datasync_eio_ = 0;  // Per mille of the standby's datasyncs that fail.
  int primary_datasync_eio_ = 0;  // The same on the primary (write-throughs' flushes too).
  // Rots so far; the rots a completed verify has found (their marks then resync them); the
  // rots before the running verify started, while one is watched.
  uint64_t rot_epoch_ = 0;
  uint64_t repaired_epoch_ = 0;
  std::optional<uint64_t> verify_epoch_;
  // The resync's buffer budget: roomy, or one block at a time (blocks wait for buffers).
  size_t pool_bytes_ = 8 << 20;
  // 0: a clean cycle clears even while the volume is busy; the daemon's default otherwise.
  uint64_t keep_marked_bytes_ = 0;
  int step_ = 0;
  std::vector<std::string> trace_;
  std::string failure_;
  ScheduleResult result_;
};

// The engine's log, into the trace of the running schedule.
class TraceSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit TraceSink(World& world) : world_(world) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    world_.TraceLog(std::string(msg.payload.data(), msg.payload.size()));
  }
  void flush_() override {}

 private:
  World& world_;
};

void SimEnd::Push(FrameType type, const google::protobuf::MessageLite& message,
                  std::span<const std::byte> payload) {
  if (!connection_->open) {
    return;
  }
  WireFrame frame{type, message.SerializeAsString(), {payload.begin(), payload.end()}};
  world_.Sent(side_, frame);
  world_.Carry(std::move(frame),
               connection_->toward(side_ == Side::kPrimary ? Side::kSecondary : Side::kPrimary));
}

void SimEnd::Receive(WireFrame wire) {
  if (closed_) {
    return;
  }
  transport::Frame frame;
  frame.type = wire.type;
  frame.message.resize(wire.message.size());
  std::transform(wire.message.begin(), wire.message.end(), frame.message.begin(),
                 [](char c) { return static_cast<std::byte>(c); });
  if (!wire.payload.empty()) {
    // PeerConnection would stop reading until a buffer comes back; the pools here are roomy.
    std::optional<base::Buffer> buffer = pool_.TryAcquire(wire.payload.size());
    if (!buffer) {
      world_.Fail("a host's frame pool is spent");
      return;
    }
    std::copy(wire.payload.begin(), wire.payload.end(), buffer->data());
    frame.payload = std::move(*buffer);
  }
  if (handler_ != nullptr) {
    handler_->OnFrame(std::move(frame));
    return;
  }
  inbox_.push_back(std::move(frame));
  readable_.Notify();
}

void SimEnd::Close(Status why) {
  if (closed_) {
    return;
  }
  MarkClosed(why.ToString());
  world_.Cut(connection_, name_ + " closed it: " + why.ToString(), side_, /*crashed=*/false);
}

Secondary::Secondary(World& world, SimStore& data, SimStore& meta, Meta& md,
                     const std::vector<uint8_t>& bits, const std::string& primary_name)
    : superblock_(md),
      io_(std::make_unique<asio::io_context>()),
      // Room for everything a connection can hold: PeerConnection would stop reading instead.
      pool_(std::make_unique<base::BufferPool>(64 << 20)),
      log_(std::make_unique<mirror::WriteIntentLog>(*io_, &meta, kVolumeBytes, kRegionBytes, bits)),
      applier_(std::make_unique<mirror::ReplicaApplier>(*io_, data, superblock_, *log_)) {
  applier_->group_commit().SetClock([&world] { return world.VirtualNow(); });
  mirror::PeerListenerOptions options;
  options.node_id = md.node_id;
  options.peer_node_id = primary_name;
  listener_ = std::make_unique<mirror::PeerListener>(*io_, options, superblock_, *log_, *pool_,
                                                     applier_.get());
}

void World::TraceLog(const std::string& line) {
  // Name every generation either host records, in a fixed order, so that one minted just now
  // gets the same name in every run of the seed.
  for (const Meta* md : {&host_a_.md, &host_b_.md}) {
    Gen(md->gens.current);
    Gen(md->gens.bitmap);
    for (uint64_t gen : md->gens.history) {
      Gen(gen);
    }
  }
  Trace("  | " + NameGenerations(line));
  if (line.starts_with("resync to ") && line.find("bytes marked") != std::string::npos) {
    ++result_.resyncs;
  }
  if (line.find("lost: ") != std::string::npos &&
      line.find("acknowledged nothing") != std::string::npos) {
    ++result_.ack_timeouts;
  }
}

void World::Sent(Side from, const WireFrame& frame) {
  if (from == Side::kPrimary && frame.type == FrameType::kZero) {
    pb::Zero zero;
    // Resync holes: the only Zero frames that may punch holes (the clients here never ask).
    if (zero.ParseFromString(frame.message) && zero.may_punch_hole() && !zero.discard()) {
      ++result_.resync_holes;
    }
  }
}

bool Numbered(FrameType type) {
  switch (type) {
    case FrameType::kWrite:
    case FrameType::kZero:
    case FrameType::kFlush:
    case FrameType::kResyncDone:
    case FrameType::kDigestRequest:
    case FrameType::kAck:
      return true;
    default:
      return false;  // The handshake's: one at a time, each awaited.
  }
}

void World::Carry(WireFrame frame, std::deque<WireFrame>& queue) {
  if (w_mangle_ == 0 || !Numbered(frame.type) ||
      rng_() % 1000 >= static_cast<uint64_t>(w_mangle_)) {
    queue.push_back(std::move(frame));
    return;
  }
  ++result_.mangled_frames;
  if (rng_() % 2 == 0 || queue.empty()) {
    Trace(std::string(transport::FrameTypeName(frame.type)) + " duplicated on the way");
    queue.push_back(frame);
    queue.push_back(std::move(frame));
  } else {
    Trace(std::string(transport::FrameTypeName(frame.type)) + " overtakes the frame before it");
    queue.insert(queue.end() - 1, std::move(frame));
  }
}

std::string Describe(const WireFrame& frame) {
  std::string text = transport::FrameTypeName(frame.type);
  auto range = [](uint64_t offset, uint64_t length) {
    return " " + std::to_string(offset) + "+" + std::to_string(length);
  };
  switch (frame.type) {
    case FrameType::kWrite: {
      pb::Write m;
      if (m.ParseFromString(frame.message)) {
        text += " seq " + std::to_string(m.seq()) + range(m.offset_bytes(), m.length_bytes()) +
                (m.durable() ? " durable" : "") + (m.resync() ? " resync" : "");
      }
      break;
    }
    case FrameType::kZero: {
      pb::Zero m;
      if (m.ParseFromString(frame.message)) {
        text += " seq " + std::to_string(m.seq()) + range(m.offset_bytes(), m.length_bytes()) +
                (m.durable() ? " durable" : "") + (m.discard() ? " discard" : "");
      }
      break;
    }
    case FrameType::kFlush: {
      pb::Flush m;
      if (m.ParseFromString(frame.message)) {
        text += " seq " + std::to_string(m.seq());
      }
      break;
    }
    case FrameType::kResyncDone: {
      pb::ResyncDone m;
      if (m.ParseFromString(frame.message)) {
        text += " seq " + std::to_string(m.seq()) + " at " + Gen(m.current_gen());
      }
      break;
    }
    case FrameType::kAck: {
      pb::Ack m;
      if (m.ParseFromString(frame.message)) {
        text += " seq " + std::to_string(m.seq()) +
                (m.error() != 0 ? " error " + std::to_string(m.error()) : "");
      }
      break;
    }
    default:
      break;
  }
  return text;
}

void World::Cut(const std::shared_ptr<Connection>& connection, const std::string& why,
                std::optional<Side> closer, bool crashed) {
  if (!connection->open) {
    return;
  }
  connection->open = false;
  ++result_.cuts;
  std::string text = "link " + std::to_string(connection->id) + " ends (" + why + "):";
  for (Side to : {Side::kSecondary, Side::kPrimary}) {
    std::deque<WireFrame>& queue = connection->toward(to);
    const size_t in_flight = queue.size();
    // The closer reads nothing more; toward a survivor a random prefix is already in its
    // socket buffer.
    const size_t arrives = closer == to || queue.empty() ? 0 : rng_() % (queue.size() + 1);
    queue.resize(arrives);
    text += " to " + (to == Side::kPrimary ? P().name : S().name) + " " + std::to_string(arrives) +
            " of " + std::to_string(in_flight) + " arrive;";
  }
  Trace(text);
  for (Side side : {Side::kSecondary, Side::kPrimary}) {
    if (closer == side && crashed) {
      continue;  // Its engine is about to go; nothing of it may run.
    }
    if (connection->toward(side).empty()) {
      EndOf(connection, side, why);
    }
  }
}

void World::EndOf(const std::shared_ptr<Connection>& connection, Side side,
                  const std::string& why) {
  if (auto end = connection->end(side).lock()) {
    end->End(why);
  }
}

void World::Deliver(const std::shared_ptr<Connection>& connection, Side to) {
  std::deque<WireFrame>& queue = connection->toward(to);
  WireFrame frame = std::move(queue.front());
  queue.pop_front();
  Trace((to == Side::kPrimary ? P().name : S().name) + " receives link " +
        std::to_string(connection->id) + " " + Describe(frame));
  if (auto end = connection->end(to).lock()) {
    end->Receive(std::move(frame));
  }
  if (!connection->open && queue.empty()) {
    EndOf(connection, to, "link " + std::to_string(connection->id) + " closed");
  }
}

asio::awaitable<base::Result<std::shared_ptr<transport::MessageLink>>> World::Connect() {
  auto connection = std::make_shared<Connection>();
  connection->id = ++connection_ids_;
  auto a = std::make_shared<SimEnd>(*this, connection, Side::kPrimary, P().name, S().name,
                                    *primary_->io, *primary_->pool);
  auto b = std::make_shared<SimEnd>(*this, connection, Side::kSecondary, S().name, P().name,
                                    secondary_->io(), secondary_->pool());
  connection->primary = a;
  connection->secondary = b;
  connections_.push_back(connection);
  Trace(P().name + " dials: link " + std::to_string(connection->id));
  asio::co_spawn(secondary_->io(), secondary_->listener().Serve(b), asio::detached);
  co_return std::shared_ptr<transport::MessageLink>(std::move(a));
}

asio::awaitable<void> World::Sleep(std::chrono::milliseconds duration) {
  base::AsyncEvent event(co_await asio::this_coro::executor);
  Sleeper sleeper{duration, false, &event};
  sleepers_.push_back(&sleeper);
  // Off the list however the coroutine ends (its frame is destroyed with a crashed engine).
  struct Unlist {
    World* world;
    Sleeper* sleeper;
    ~Unlist() { std::erase(world->sleepers_, sleeper); }
  } unlist{this, &sleeper};
  while (!sleeper.woken) {
    co_await event.Wait();
  }
}

bool World::Sleeping(std::chrono::milliseconds duration) const {
  return std::any_of(sleepers_.begin(), sleepers_.end(),
                     [duration](const Sleeper* s) { return s->duration == duration && !s->woken; });
}

void World::Wake(std::chrono::milliseconds duration) {
  for (Sleeper* sleeper : sleepers_) {
    if (sleeper->duration == duration && !sleeper->woken) {
      Trace(duration == kRetryInterval   ? "the retry interval passes"
            : duration == kCleanInterval ? "the clean interval passes"
                                         : "half the ack timeout passes");
      sleeper->woken = true;
      sleeper->event->Notify();
      return;
    }
  }
}

std::shared_ptr<Connection> World::OpenConnection() const {
  for (auto it = connections_.rbegin(); it != connections_.rend(); ++it) {
    if ((*it)->open) {
      return *it;
    }
  }
  return nullptr;
}

bool World::Connected() const {
  return primary_->replicator->connection() == mirror::ConnectionState::kConnected;
}

void World::Setup() {
  mode_ = rng_() % 2 == 0 ? mirror::Mode::kSync : mirror::Mode::kFlush;
  // Against a total weight near 1500 per step: a few crashes and cuts per schedule at most.
  static constexpr int kCrash[] = {0, 1, 2, 5};
  static constexpr int kCut[] = {0, 2, 6, 15};
  w_crash_primary_ = kCrash[rng_() % 4];
  w_crash_secondary_ = kCrash[rng_() % 4];
  w_cut_ = kCut[rng_() % 4];
  w_clean_ = 20 + static_cast<int>(rng_() % 80);
  static constexpr int kFailover[] = {0, 2, 8};
  w_failover_ = kFailover[rng_() % 3];
  block_ = rng_() % 4 == 0;
  static constexpr int kRot[] = {0, 0, 3};
  w_rot_ = kRot[rng_() % 3];
  static constexpr int kMangle[] = {0, 0, 5, 20};
  w_mangle_ = kMangle[rng_() % 4];
  static constexpr int kAckWatch[] = {0, 5, 30};
  w_ack_watch_ = kAckWatch[rng_() % 3];
  static constexpr int kDatasyncEio[] = {0, 0, 0, 20};
  standby_datasync_eio_ = kDatasyncEio[rng_() % 4];
  S().data.set_datasync_eio_per_mille(standby_datasync_eio_);
  primary_datasync_eio_ = kDatasyncEio[rng_() % 4];
  P().data.set_datasync_eio_per_mille(primary_datasync_eio_);
  pool_bytes_ = rng_() % 2 == 0 ? 8 << 20 : 300 << 10;
  keep_marked_bytes_ = rng_() % 2 == 0 ? 0 : mirror::ReplicatorOptions().keep_marked_bytes;
  // Bitmap pages start empty and valid, as MetadataFile::Create leaves them.
  std::vector<std::byte> meta(P().meta.size_bytes());
  std::vector<uint8_t> empty(mirror::kBitmapAreaBytes, 0);
  for (uint64_t p = 0; p < mirror::BitmapPageCount(kRegions); ++p) {
    mirror::EncodeBitmapPage(
        static_cast<uint32_t>(p), empty,
        std::span(meta).subspan(mirror::kBitmapOffsetBytes + p * mirror::kBitmapPageBytes,
                                mirror::kBitmapPageBytes));
  }
  P().meta.Initialize(meta);
  S().meta.Initialize(meta);
  for (Meta* md : {&host_a_.md, &host_b_.md}) {
    md->size_bytes = kVolumeBytes;
    md->region_bytes = kRegionBytes;
  }
  P().md.volume_uuid = kVolumeUuid;
  const uint64_t g0 = mirror::NewGeneration();
  P().md.gens.current = g0;
  P().md.disk = DiskState::kUpToDate;
  if (rng_() % 2 == 0) {
    // A pair that was in sync when it last stopped, both copies zero.
    P().md.gens.bitmap = g0;
    P().md.peer_disk = DiskState::kUpToDate;
    S().md.gens.current = S().md.gens.bitmap = g0;
    P().md.gens.current_shared = S().md.gens.current_shared = true;
    S().md.disk = DiskState::kUpToDate;
    S().md.volume_uuid = kVolumeUuid;
    Trace("setup: paired at " + Gen(g0));
  } else {
    // A new pair: the primary holds data (a client wrote it, durably, before the standby was
    // first configured); the secondary was never synchronised.
    std::vector<std::byte> data(kVolumeBytes);
    ClientOp op;
    op.kind = ClientOp::Kind::kWrite;
    op.length_bytes = kVolumeBytes;
    for (size_t i = 0; i < data.size(); i += 8) {
      uint64_t word = rng_();
      for (size_t k = 0; k < 8; ++k, word >>= 8) {
        data[i + k] = static_cast<std::byte>(word % 251 + 1);
      }
    }
    P().data.Initialize(data);
    op.data = data;
    op.state = ClientOp::State::kOk;
    op.guaranteed = true;
    ops_.push_back(std::move(op));
    P().md.peer_disk = DiskState::kInconsistent;
    S().md.disk = DiskState::kInconsistent;
    Trace("setup: new pair, secondary never synchronised");
  }
  Trace(std::string("setup: mode ") + (mode_ == mirror::Mode::kSync ? "sync" : "flush") +
        ", weights crash A/B " + std::to_string(w_crash_primary_) + "/" +
        std::to_string(w_crash_secondary_) + ", cut " + std::to_string(w_cut_) +
        (keep_marked_bytes_ == 0 ? ", cleans while busy" : ", keeps a busy bitmap marked") +
        (block_ ? ", on peer loss block" : ", on peer loss degrade"));
  if (options_.inject_write_eio) {
    P().data.set_write_eio_per_mille(5);
    S().data.set_write_eio_per_mille(5);
  }

  StartSecondary();
  StartPrimary();
}

std::vector<uint8_t> World::LoadBitmap(const SimStore& meta, uint64_t& torn) {
  const uint64_t pages = mirror::BitmapPageCount(kRegions);
  std::vector<uint8_t> bits(pages * mirror::kBitmapAreaBytes, 0);
  for (uint64_t p = 0; p < pages; ++p) {
    std::span<const std::byte> page(
        meta.durable().data() + mirror::kBitmapOffsetBytes + p * mirror::kBitmapPageBytes,
        mirror::kBitmapPageBytes);
    std::span<uint8_t> area(bits.data() + p * mirror::kBitmapAreaBytes, mirror::kBitmapAreaBytes);
    if (!mirror::DecodeBitmapPage(static_cast<uint32_t>(p), page, area)) {
      std::fill(area.begin(), area.end(), 0xff);
      ++torn;
    }
  }
  for (uint64_t r = kRegions; r < pages * mirror::kBitsPerPage; ++r) {
    bits[r / 8] &= static_cast<uint8_t>(~(1u << (r % 8)));
  }
  return bits;
}

void World::StartSecondary() {
  uint64_t torn = 0;
  const std::vector<uint8_t> bits = LoadBitmap(S().meta, torn);
  secondary_ = std::make_unique<Secondary>(*this, S().data, S().meta, S().md, bits, P().name);
  Trace(S().name + " starts as secondary: " + GensText(S().md.gens) + " " +
        mirror::DiskStateName(S().md.disk) + (torn > 0 ? " (torn bitmap page)" : ""));
}

void World::StartPrimary() {
  uint64_t torn = 0;
  const std::vector<uint8_t> bits = LoadBitmap(P().meta, torn);
  auto engine = std::make_unique<PrimaryEngine>();
  engine->io = std::make_unique<asio::io_context>();
  engine->pool = std::make_unique<base::BufferPool>(pool_bytes_);
  engine->superblock = std::make_unique<MemorySuperblock>(P().md);
  engine->log = std::make_unique<mirror::WriteIntentLog>(*engine->io, &P().meta, kVolumeBytes,
                                                         kRegionBytes, bits);
  mirror::ReplicatorOptions options;
  options.node_id = P().name;
  options.peer_node_id = S().name;
  options.retry_interval = kRetryInterval;
  options.clean_interval = kCleanInterval;
  options.ack_timeout = kAckTimeout;
  options.keep_marked_bytes = keep_marked_bytes_;
  options.on_peer_loss = block_ ? mirror::PeerLossPolicy::kBlock : mirror::PeerLossPolicy::kDegrade;
  // Verify compares 16 KiB blocks here (1 MiB in the daemon: the whole of this volume).
  options.verify_block_bytes = 4 * kRegionBytes;
  // Marks of one region, or (as the daemon does, with 1 MiB) of aligned chunks, here 4 regions.
  options.mark_ahead_bytes = options_.seed % 2 == 0 ? 4 * kRegionBytes : kRegionBytes;
  options.dial = [this] { return Connect(); };
  options.sleep = [this](std::chrono::milliseconds duration) { return Sleep(duration); };
  // After a crash the primary cannot know the peer's state: no clean shutdown was recorded.
  engine->replicator = std::make_unique<mirror::Replicator>(
      *engine->io, std::move(options), *engine->superblock, *engine->log, *engine->pool,
      /*peer_disk_known_good=*/false);
  engine->volume = std::make_unique<mirror::Volume>(*engine->io, P().data, engine->replicator.get(),
                                                    mode_, engine->log.get());
  engine->replicator->SetVolume(engine->volume.get());
  engine->volume->group_commit().SetClock([this] { return VirtualNow(); });
  primary_ = std::move(engine);
  Trace(P().name + " starts as primary: " + GensText(P().md.gens) + ", " +
        std::to_string(primary_->log->marked_regions()) + " regions marked" +
        (torn > 0 ? " (torn bitmap page)" : ""));
  primary_->replicator->Start();
}

void World::Tally() {
  result_.cleared_regions += primary_->log->stats().cleared_regions;
  result_.sync_aheads += primary_->volume->group_commit().sync_ahead_count();
  result_.write_throughs += primary_->volume->group_commit().write_through_count();
  if (mode_ == mirror::Mode::kFlush) {
    // (In mode sync no FLUSH ever asks the peer: only mode flush decides.)
    result_.flushes_without_peer += primary_->volume->stats().flushes_without_peer;
  }
}

void World::TallySecondary() {
  if (secondary_) {
    result_.write_throughs += secondary_->applier().group_commit().write_through_count();
  }
}

void World::KillPrimary(const std::string& why) {
  CheckFailover();
  verify_epoch_.reset();  // A verify dies with its engine; its marks made so far stay.
  ++result_.primary_crashes;
  Tally();
  for (const auto& connection : connections_) {
    Cut(connection, why, Side::kPrimary, /*crashed=*/true);
  }
  Trace(P().data.Crash(rng_));
  Trace(P().meta.Crash(rng_));
  primary_.reset();
  for (ClientOp& op : ops_) {
    if (op.state == ClientOp::State::kPending) {
      op.state = ClientOp::State::kLost;
    } else if (op.state == ClientOp::State::kOk && !op.guaranteed) {
      op.maybe_lost = true;
    }
  }
  outstanding_ = 0;
}

void World::CrashPrimary() {
  KillPrimary("primary crashed");
  StartPrimary();
}

void World::Failover() {
  // The primary host dies while it reports its standby connected and UpToDate (the moment an
  // operator or a cluster manager may promote it: CheckFailover, run first, proves it safe).
  // The standby's daemon is restarted with --primary (its disk may lose what it had not synced:
  // the restart is a power loss too, which promises less); the old primary's host comes back
  // and rejoins as the standby, to be resynced incrementally: the regions it had marked when it
  // died plus those the new primary wrote since. The clients now write to the new primary.
  ++result_.failovers;
  Trace("failover: " + P().name + " dies, " + S().name + " is restarted as primary, " + P().name +
        " rejoins as its standby");
  KillPrimary(P().name + " died");
  for (const auto& connection : connections_) {
    Cut(connection, S().name + " restarts", Side::kSecondary, /*crashed=*/true);
  }
  Trace(S().data.Crash(rng_));
  Trace(S().meta.Crash(rng_));
  TallySecondary();
  secondary_.reset();
  std::swap(primary_host_, secondary_host_);
  P().data.set_datasync_eio_per_mille(primary_datasync_eio_);
  S().data.set_datasync_eio_per_mille(standby_datasync_eio_);
  StartSecondary();
  StartPrimary();
}

bool World::MayFailOver() const {
  // As the daemon: only an UpToDate copy may start as primary. Nor a copy with bit rot nobody
  // has found yet: that would be data lost, whatever the mirror does.
  return Connected() && primary_->replicator->peer_disk() == DiskState::kUpToDate &&
         S().md.disk == DiskState::kUpToDate && !Rotten();
}

void World::Rot() {
  const uint64_t at = rng_() % kVolumeBytes;
  S().data.Rot(at);
  ++rot_epoch_;
  ++result_.rots;
  Trace(S().name + ".data rots at byte " + std::to_string(at));
}

void World::StartVerify() {
  Status st = primary_->replicator->StartVerify();
  Trace("operator: nbdmirror verify: " + (st.ok() ? std::string("started") : st.ToString()));
  if (st.ok()) {
    verify_epoch_ = rot_epoch_;
  }
}

void World::WatchVerify() {
  if (!verify_epoch_) {
    return;
  }
  const mirror::VerifyProgress* verify = primary_->replicator->verify();
  if (verify == nullptr || verify->running) {
    return;
  }
  if (verify->finished && verify->error.empty()) {
    // Every rot before it started is marked now (persisted before `finished`), so the resync
    // that follows, or the next connection's, copies it over.
    repaired_epoch_ = std::max(repaired_epoch_, *verify_epoch_);
    if (verify->differing_bytes > 0) {
      ++result_.verify_repairs;
    }
  }
  verify_epoch_.reset();
}

void World::CrashSecondary() {
  ++result_.secondary_crashes;
  for (const auto& connection : connections_) {
    Cut(connection, "secondary crashed", Side::kSecondary, /*crashed=*/true);
  }
  Trace(S().data.Crash(rng_));
  Trace(S().meta.Crash(rng_));
  TallySecondary();
  secondary_.reset();
  StartSecondary();
}

void World::Drain() {
  for (;;) {
    size_t ran = 0;
    primary_->io->restart();
    ran += primary_->io->poll();
    secondary_->io().restart();
    ran += secondary_->io().poll();
    if (ran == 0) {
      break;
    }
  }
  // Connections with nothing left to deliver are gone.
  std::erase_if(connections_, [](const std::shared_ptr<Connection>& c) {
    return !c->open && c->to_primary.empty() && c->to_secondary.empty();
  });
}

void World::AddActions(bool healing, std::vector<std::pair<int, Action>>& actions) {
  auto add = [&actions](int weight, Action action) {
    if (weight > 0) {
      actions.emplace_back(weight, std::move(action));
    }
  };
  for (SimStore* store : {&P().data, &P().meta, &S().data, &S().meta}) {
    if (store->pending_count() > 0) {
      add(store == &P().meta || store == &S().meta ? 100 : 200,
          [this, store] { CompleteRandom(*store); });
    }
  }
  for (const auto& connection : connections_) {
    for (Side to : {Side::kSecondary, Side::kPrimary}) {
      if (!connection->toward(to).empty()) {
        add(150, [this, connection, to] { Deliver(connection, to); });
      }
    }
  }
  const bool link_down = OpenConnection() == nullptr;
  if (Sleeping(kRetryInterval) && (options_.writes_during_handshake || outstanding_ == 0)) {
    add(healing ? 50 : 30, [this] { Wake(kRetryInterval); });
  }
  const mirror::Replicator& replicator = *primary_->replicator;
  if (!verify_epoch_ && Connected() && replicator.peer_disk() == DiskState::kUpToDate &&
      !replicator.resync().running && (Rotten() || (!healing && w_rot_ > 0))) {
    // Mostly when there is rot to find; now and then when there is none.
    add(Rotten() ? 20 : 2, [this] { StartVerify(); });
  }
  if (secondary_->applier().disk_failed()) {
    // A datasync failed on the standby: its disk stays Failed (and its listener refuses every
    // primary) until the operator restarts its daemon; the primary goes on without it.
    add(20, [this] {
      ++result_.standby_disk_failures;
      Trace("operator: the standby's disk failed; its daemon is restarted");
      CrashSecondary();
    });
  }
  if (primary_->volume->disk_failed()) {
    // A datasync (or a write-through's flush) failed on the primary: durable requests fail
    // until the operator restarts its daemon (or fails over to the standby, also a choice here).
    add(20, [this] {
      ++result_.primary_disk_failures;
      Trace("operator: the primary's disk failed; its daemon is restarted");
      CrashPrimary();
    });
  }
  if (healing) {
    return;
  }
  const bool handshaking = !link_down && !Connected();
  if (outstanding_ < kMaxOutstanding && (options_.writes_during_handshake || !handshaking)) {
    // Fewer new requests while the link is down, so that the volume drains now and then and
    // the handshake can start (see ScheduleOptions::writes_during_handshake).
    add(link_down && !options_.writes_during_handshake ? 60 : 250, [this] { SubmitClientOp(); });
  }
  if (Sleeping(kCleanInterval)) {
    add(w_clean_, [this] { Wake(kCleanInterval); });
  }
  if (Sleeping(kAckTimeout / 2)) {
    add(w_ack_watch_, [this] { Wake(kAckTimeout / 2); });
  }
  if (options_.variant == Variant::kCleanWithoutFlush && Connected() &&
      primary_->replicator->peer_disk() == DiskState::kUpToDate &&
      primary_->log->marked_regions() > 0) {
    // The broken engine: it clears the bitmap with nothing making the completed writes durable
    // on both copies first.
    add(w_clean_, [this] {
      Trace(P().name + " clears its bitmap without a flush (broken variant)");
      primary_->log->ClearAll([](const Status&) {});
    });
  }
  if (auto connection = OpenConnection()) {
    add(w_cut_, [this, connection] { Cut(connection, "link dropped", std::nullopt, false); });
  }
  add(w_crash_primary_, [this] { CrashPrimary(); });
  add(w_rot_, [this] { Rot(); });
  if (MayFailOver()) {
    add(w_failover_, [this] { Failover(); });
  }
  add(10, [this] { CheckFailover(); });
  add(w_crash_secondary_, [this] { CrashSecondary(); });
}

bool World::Healed() const {
  const mirror::Replicator& r = *primary_->replicator;
  return Connected() && r.peer_disk() == DiskState::kUpToDate && !r.resync().running &&
         !r.cleaning() && r.pending_count() == 0 && r.held_count() == 0 && outstanding_ == 0 &&
         !Rotten() && !verify_epoch_ && LinksQuiet() && !primary_->volume->disk_failed();
}

bool World::LinksQuiet() const {
  // A frame still on its way (an Ack the faulty proxy duplicated, say) would strike during the
  // final FLUSH, after the faults are over.
  return std::all_of(connections_.begin(), connections_.end(), [](const auto& c) {
    return !c->open || (c->to_secondary.empty() && c->to_primary.empty());
  });
}

uint64_t World::RandomOffset() {
  // Mostly a few hot regions, so writes overlap and share regions often.
  const uint64_t region = rng_() % 100 < 70 ? rng_() % 10 : rng_() % kRegions;
  uint64_t offset = region * kRegionBytes + (rng_() % 8) * 512;
  if (rng_() % 8 == 0) {
    offset += rng_() % 512;
  }
  return std::min(offset, kVolumeBytes - 1);
}

void World::SubmitClientOp() {
  ClientOp op;
  const uint64_t pick = rng_() % 100;
  op.kind = pick < 75   ? ClientOp::Kind::kWrite
            : pick < 80 ? ClientOp::Kind::kZero
            : pick < 84 ? ClientOp::Kind::kTrim
                        : ClientOp::Kind::kFlush;
  op.fua = op.kind != ClientOp::Kind::kFlush && rng_() % 6 == 0;
  if (op.kind != ClientOp::Kind::kFlush) {
    op.offset_bytes = RandomOffset();
    uint64_t length = 512 * (1 + rng_() % 16);
    if (rng_() % 8 == 0) {
      length = 1 + rng_() % (3 * kRegionBytes);
    }
    op.length_bytes = std::min(length, kVolumeBytes - op.offset_bytes);
  }
  const size_t id = ops_.size();
  if (op.kind == ClientOp::Kind::kWrite) {
    op.data.resize(op.length_bytes);
    for (size_t i = 0; i < op.data.size(); ++i) {
      // Distinct per write and per sector, never zero: a torn or lost write shows.
      op.data[i] = static_cast<std::byte>((id * 37 + i / 512 * 11 + i) | 1);
    }
  } else if (op.kind != ClientOp::Kind::kFlush) {
    op.data.assign(op.length_bytes, std::byte{0});
  } else {
    for (size_t i = 0; i < ops_.size(); ++i) {
      if (ops_[i].kind != ClientOp::Kind::kFlush && ops_[i].state == ClientOp::State::kOk) {
        op.covers.push_back(i);
      }
    }
  }
  ops_.push_back(std::move(op));
  ClientOp& o = ops_.back();
  static constexpr const char* kNames[] = {"WRITE", "WRITE_ZEROES", "TRIM", "FLUSH"};
  Trace("client #" + std::to_string(id) + " " + kNames[static_cast<int>(o.kind)] + " " +
        std::to_string(o.offset_bytes) + "+" + std::to_string(o.length_bytes) +
        (o.fua ? " FUA" : ""));
  auto done = [this, id](const Status& st) { OnClientDone(id, st); };
  mirror::Volume& volume = *primary_->volume;
  // Counted before the call: a FLUSH with nothing to wait for answers from inside it.
  ++outstanding_;
  Status st;
  switch (o.kind) {
    case ClientOp::Kind::kWrite:
      st = volume.Write(o.offset_bytes, o.data, o.fua, done);
      break;
    case ClientOp::Kind::kZero:
      st = volume.WriteZeroes(o.offset_bytes, o.length_bytes, {}, o.fua, done);
      break;
    case ClientOp::Kind::kTrim:
      st = volume.Trim(o.offset_bytes, o.length_bytes, o.fua, done);
      break;
    case ClientOp::Kind::kFlush:
      st = volume.Flush(done);
      break;
  }
  if (!st.ok()) {
    --outstanding_;
    o.state = ClientOp::State::kFailed;
    Trace("client #" + std::to_string(id) + " refused: " + st.ToString());
  }
}

void World::OnClientDone(size_t id, const Status& st) {
  ClientOp& op = ops_[id];
  if (op.state != ClientOp::State::kPending) {
    Fail("client op #" + std::to_string(id) + " answered twice");
    return;
  }
  --outstanding_;
  op.state = st.ok() ? ClientOp::State::kOk : ClientOp::State::kFailed;
  ++result_.acked_writes;
  Trace("client #" + std::to_string(id) + " replied " + (st.ok() ? "OK" : st.ToString()));
  if (!st.ok()) {
    return;
  }
  if (op.kind == ClientOp::Kind::kFlush) {
    for (size_t w : op.covers) {
      if (!ops_[w].maybe_lost) {
        ops_[w].guaranteed = true;
      }
    }
  } else if (mode_ == mirror::Mode::kSync || op.fua) {
    op.guaranteed = true;
  }
  if (block_ && op.guaranteed && op.kind != ClientOp::Kind::kFlush && !Rotten()) {
    // `block` never acknowledges a write without the peer: at the reply of a durable write (mode
    // sync or FUA) the standby's disk holds it durably. The range lock keeps any other write to
    // these bytes out until now. (A write in mode flush without FUA is only promised written
    // there: a power loss of the standby may take it even after its acknowledgement left.)
    const std::vector<std::byte>& image = S().data.durable();
    if (!std::equal(op.data.begin(), op.data.end(),
                    image.begin() + static_cast<long>(op.offset_bytes))) {
      Fail("under `block`, client op #" + std::to_string(id) +
           " was acknowledged as durable before the standby's disk held it durably");
    }
  }
}

void World::CompleteRandom(SimStore& store) {
  Trace(store.CompleteAt(rng_() % store.pending_count(), rng_));
}

bool World::Step(bool healing) {
  std::vector<std::pair<int, Action>> actions;
  AddActions(healing, actions);
  if (actions.empty()) {
    return false;
  }
  int total = 0;
  for (const auto& a : actions) {
    total += a.first;
  }
  int pick = static_cast<int>(rng_() % static_cast<uint64_t>(total));
  for (auto& a : actions) {
    if (pick < a.first) {
      a.second();
      break;
    }
    pick -= a.first;
  }
  Drain();
  if (primary_->replicator->held_count() > 0) {
    ++result_.steps_holding_writes;
  }
  WatchVerify();
  ++step_;
  return true;
}

void World::FinalFlush() {
  bool flushed = false;
  Status result;
  Trace("heal: final FLUSH");
  Status st = primary_->volume->Flush([&](Status s) {
    flushed = true;
    result = std::move(s);
  });
  if (!st.ok()) {
    Fail("final flush refused: " + st.ToString());
    return;
  }
  Drain();
  for (int i = 0; !flushed && i < kMaxHealSteps && failure_.empty(); ++i) {
    if (!Step(/*healing=*/true)) {
      break;
    }
  }
  if (!flushed) {
    Fail("final flush never completed");
  } else if (!result.ok()) {
    Fail("final flush failed: " + result.ToString());
  }
}

World::Expected World::ComputeExpected(bool durable_only) const {
  // The last writer of each byte in submission order (overlapping writes run in that order).
  // A byte is known when that writer is required; a failed, lost, possibly lost (or, with
  // `durable_only`, not yet durable) write may have landed whole, in part or not at all, so its
  // bytes are open until a later required write covers them.
  Expected e;
  e.bytes.assign(kVolumeBytes, std::byte{0});
  e.writer.assign(kVolumeBytes, -1);
  e.known.assign(kVolumeBytes, 1);  // All zeroes at first.
  for (size_t id = 0; id < ops_.size(); ++id) {
    const ClientOp& op = ops_[id];
    if (op.kind == ClientOp::Kind::kFlush) {
      continue;
    }
    const bool required =
        op.state == ClientOp::State::kOk && !op.maybe_lost && (!durable_only || op.guaranteed);
    std::fill_n(e.known.begin() + static_cast<long>(op.offset_bytes), op.length_bytes,
                required ? 1 : 0);
    std::fill_n(e.writer.begin() + static_cast<long>(op.offset_bytes), op.length_bytes,
                static_cast<int64_t>(id));
    std::copy(op.data.begin(), op.data.end(), e.bytes.begin() + static_cast<long>(op.offset_bytes));
  }
  return e;
}

void World::CheckFailover() {
  if (Rotten()) {
    return;  // The standby's disk changed behind everyone's back; verify has yet to find it.
  }
  if (!Connected() || primary_->replicator->peer_disk() != DiskState::kUpToDate) {
    return;
  }
  // The primary's status says the standby is connected and UpToDate: if the primary died now
  // and the standby were promoted, every write acknowledged as durable must be on its disk.
  const Expected e = ComputeExpected(/*durable_only=*/true);
  const auto& b = S().data.durable();
  for (uint64_t at = 0; at < kVolumeBytes; ++at) {
    if (e.known[at] != 0 && b[at] != e.bytes[at]) {
      Fail(
          "the primary reports the standby UpToDate, but a failover now would lose durable "
          "acknowledged write #" +
          std::to_string(e.writer[at]) + " at byte " + std::to_string(at) + " (region " +
          std::to_string(at / kRegionBytes) + "): the standby's disk holds " +
          std::to_string(static_cast<int>(b[at])) + ", expected " +
          std::to_string(static_cast<int>(e.bytes[at])));
      return;
    }
  }
  ++result_.failover_checks;
}

void World::Check() {
  // With EIO injected, a failed write may have left bytes in a cache no datasync covers
  // (GroupCommit counts only successful writes; a real device flushes its whole cache at the
  // next FLUSH, but none may come): compare what each host serves.
  const auto& a = options_.inject_write_eio ? P().data.data() : P().data.durable();
  const auto& b = options_.inject_write_eio ? S().data.data() : S().data.durable();
  if (!options_.inject_write_eio && P().data.data() != a) {
    Fail("after the final flush the primary's cache differs from its disk");
    return;
  }
  if (!options_.inject_write_eio && S().data.data() != b) {
    Fail("after the final flush the secondary's cache differs from its disk");
    return;
  }
  // Every acknowledged write not possibly lost in a primary crash must be there.
  const Expected e = ComputeExpected(/*durable_only=*/false);
  const auto& expected = e.bytes;
  const auto& known = e.known;
  const auto& writer = e.writer;
  if (a == b) {
    for (uint64_t at = 0; at < kVolumeBytes; ++at) {
      if (known[at] != 0 && a[at] != expected[at]) {
        Fail("acknowledged write #" + std::to_string(writer[at]) + " missing at byte " +
             std::to_string(at) + " (region " + std::to_string(at / kRegionBytes) + "): expected " +
             std::to_string(static_cast<int>(expected[at])) + ", both copies hold " +
             std::to_string(static_cast<int>(a[at])));
        return;
      }
    }
    return;
  }
  for (uint64_t at = 0; at < kVolumeBytes; ++at) {
    if (a[at] != b[at]) {
      const uint64_t region = at / kRegionBytes;
      Fail("copies differ at byte " + std::to_string(at) + " (region " + std::to_string(region) +
           "): primary " + std::to_string(static_cast<int>(a[at])) + ", secondary " +
           std::to_string(static_cast<int>(b[at])) + "; last writer #" +
           std::to_string(writer[at]));
      return;
    }
    if (known[at] != 0 && a[at] != expected[at]) {
      Fail("acknowledged write #" + std::to_string(writer[at]) + " missing at byte " +
           std::to_string(at) + " (region " + std::to_string(at / kRegionBytes) + "): expected " +
           std::to_string(static_cast<int>(expected[at])) + ", both copies hold " +
           std::to_string(static_cast<int>(a[at])));
      return;
    }
  }
}

std::string World::Report() const {
  std::ostringstream out;
  out << "SIMULATION FAILED: seed " << options_.seed << " (replay: SIM_SEED=" << options_.seed
      << (options_.variant == Variant::kCleanWithoutFlush ? " SIM_VARIANT=clean-without-flush" : "")
      << (options_.inject_write_eio ? " SIM_EIO=1" : "")
      << (options_.writes_during_handshake ? "" : " SIM_NO_HANDSHAKE_WRITES=1") << ")\n  " << failure_
      << "\n";
  const size_t tail = options_.keep_full_trace ? trace_.size() : 80;
  const size_t from = trace_.size() > tail ? trace_.size() - tail : 0;
  out << "  trace (" << (from > 0 ? "last " + std::to_string(tail) + " of " : "") << trace_.size()
      << " lines; SIM_TRACE=1 for all):\n";
  for (size_t i = from; i < trace_.size(); ++i) {
    out << "    " << trace_[i] << "\n";
  }
  return out.str();
}

ScheduleResult World::Run() {
  Setup();
  for (step_ = 0; step_ < options_.steps && failure_.empty();) {
    Step(/*healing=*/false);
  }
  Trace("heal begins");
  S().data.set_datasync_eio_per_mille(0);
  P().data.set_datasync_eio_per_mille(0);
  w_mangle_ = 0;  // The proxy is fixed: frames sent from now on arrive as sent.
  for (int i = 0; failure_.empty() && !Healed(); ++i) {
    if (i >= kMaxHealSteps || !Step(/*healing=*/true)) {
      Fail("the pair never healed (stuck)");
    }
  }
  if (failure_.empty()) {
    FinalFlush();
  }
  if (failure_.empty()) {
    Check();
  }
  Tally();
  TallySecondary();
  // FNV-1a over the whole trace: two runs of a seed must take the same path, line for line.
  result_.trace_hash = 1469598103934665603ull;
  for (const std::string& line : trace_) {
    for (const char c : line) {
      result_.trace_hash = (result_.trace_hash ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    }
    result_.trace_hash = (result_.trace_hash ^ '\n') * 1099511628211ull;
  }
  result_.trace_lines = trace_.size();
  if (!failure_.empty()) {
    result_.ok = false;
    result_.failure = Report();
  }
  return result_;
}

}  // namespace

ScheduleResult RunSchedule(const ScheduleOptions& options) {
  World world(options);
  // The engine's log lines go into the schedule's trace while it runs.
  auto previous = spdlog::default_logger();
  auto logger = std::make_shared<spdlog::logger>("sim", std::make_shared<TraceSink>(world));
  logger->set_level(spdlog::level::debug);
  spdlog::set_default_logger(logger);
  ScheduleResult result = world.Run();
  spdlog::set_default_logger(previous);
  return result;
}

}  // namespace sim
