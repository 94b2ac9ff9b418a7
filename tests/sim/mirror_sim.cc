// The mirror simulation. One schedule, from one seed:
//
// What runs for real: mirror::Volume (range locks, intent marking, fan-out, group commit, the
// acknowledgement rule), mirror::WriteIntentLog on both hosts (its bitmap pages written through
// a SimStore that can lose or tear them, reloaded after a crash through the real page codec
// exactly as MetadataFile::ReadBitmap does), mirror::GroupCommit on both hosts,
// mirror::Resync (rate 0, so its timer never runs), the generation logic (DecideSync,
// DivergeFromPeer, RememberGeneration, FollowPrimaryGeneration) and, on the secondary, the
// shipped mirror::ReplicaApplier: each operation reaches it as the protobuf frame the
// Replicator would send, over a SimLink (transport::FrameLink), and its Acks go back the same
// way; its superblock changes go to a MemorySuperblock.
//
// What is modelled, following the production code line by line:
//   - SimReplicator is mirror::Replicator under `degrade` with the TCP transport replaced by a
//     Wire: SendOrHold, CompleteUnreplicated, RecordDivergence (new generation and peer Outdated
//     recorded before any degraded completion), OnClosed, Plan (the handshake decision, the
//     bitmap made durable before the generations are recorded), StartResync,
//     OnResyncFinished (ResyncDone; on its ack bitmap := current) and CleanOnce (BeginClean,
//     local group-committed datasync, peer Flush, FinishClean only if the link epoch, the
//     connection and the peer's UpToDate state are unchanged).
//   - The secondary's half of PeerListener's handshake: it records the plan's generation and
//     disk state (FollowPrimaryGeneration), waits until the applier has finished operations of
//     earlier links (idle) before Ready, and hands the applier the new connection.
//   - The Wire is one TCP connection: FIFO in each direction, any delay (delivery is a random
//     action). A bad frame or a dead host is a cut: the connection closes, a random prefix of
//     what was in flight to the secondary still arrives (it was in its socket buffer), the rest
//     and every ack in flight are lost. The secondary takes a new connection only after it has
//     read the old one to its end, as PeerListener refuses while the applier is attached.
//   - The superblock (generations, disk states) is durable as soon as it is updated, as
//     MetadataFile::Update is a synchronous write and fdatasync of a double-buffered slot.
//   - A crash of a host drops every write of its disks not covered by a completed datasync
//     (each may survive, survive torn or vanish), destroys its engine and restarts it from
//     what is durable. The primary restarts with peer_disk unknown (no clean shutdown) and the
//     bitmap reloaded from its metadata store.
//
// The schedule: client WRITE (some FUA, some unaligned, mostly into a few hot 4 KiB regions of
// a 64-region volume, so overlaps and shared regions are frequent), WRITE_ZEROES, TRIM and
// FLUSH, at most 6 in flight; completion of any pending operation of either host's disks, in
// any order; delivery of the next frame in either direction; dial and the handshake's steps;
// clean cycles whenever the replicator would run one; link cuts; crashes of either host.
// Per seed: mode sync or flush, a pair in sync or a new pair needing a full resync, how often
// each fault strikes, and whether the resync's buffer budget holds one block or many.
// Optionally (ScheduleOptions::inject_write_eio) data-disk writes fail with EIO.
//
// A connection's end reaches the applier (OnClosed) once the secondary has read everything that
// was in flight before the cut; only then may the primary dial again, as PeerListener refuses a
// primary while the applier is attached.
//
// What is not modelled: failover (the secondary never becomes primary), the `block` policy,
// a failing datasync (GroupCommit then fails the disk for good, and a schedule that must heal
// cannot), a failing metadata disk, the frame header, checksums and authentication (covered
// by unit and fuzz tests; a bad frame is a cut here), DigestRequest (verify), heartbeats and
// timers (no time passes: the resync is unlimited, the clean interval is "whenever the
// schedule picks it"; the one clock the engine reads for a decision, GroupCommit's sync-ahead
// window, is virtual here: kStepTime per step, whatever the machine's speed; both hosts'
// GroupCommits read it).
// The secondary's own write-intent bitmap is real but stays empty: it never is primary here.
// Generations come from NewGeneration (random), but only their equality matters and the trace
// names them g1, g2, ...: a replayed seed takes the same path and prints the same trace.
//
// After the random actions the schedule heals: no more faults, reconnect, resync to the end,
// ResyncDone acknowledged, every client operation answered, then a client FLUSH. Then it checks
// that both disks' durable images are identical and hold, byte for byte, the last write the
// client was told succeeded (where a later write the client was not told about, or a crash
// that could have taken a non-durable acknowledged write, leaves the byte open).

#include "tests/sim/mirror_sim.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>

#include "base/buffer_pool.h"
#include "mirror/generations.h"
#include "mirror/metadata.h"
#include "mirror/replica_applier.h"
#include "mirror/resync.h"
#include "mirror/volume.h"
#include "mirror/write_intent_log.h"
#include "tests/sim/sim_store.h"
#include "transport/frame_link.h"
#include "transport/peer.pb.h"

namespace sim {
namespace {

using base::Status;
using mirror::DecideSync;
using mirror::DiskState;
using mirror::Generations;
using mirror::PeerDone;
using mirror::PeerOutcome;
using mirror::SyncKind;
namespace pb = nbdmirror::peer;

constexpr uint64_t kRegionBytes = 4096;
constexpr uint64_t kRegions = 64;
constexpr uint64_t kVolumeBytes = kRegions * kRegionBytes;
constexpr size_t kMaxOutstanding = 6;
constexpr int kMaxHealSteps = 200000;

// The superblock of one host (durable when changed; see above).
using Meta = mirror::VolumeMetadata;

// The secondary's superblock, as the shipped ReplicaApplier changes it.
class MemorySuperblock final : public mirror::Superblock {
 public:
  explicit MemorySuperblock(Meta& md) : md_(md) {}
  const Meta& get() const override { return md_; }
  Status Update(const std::function<void(Meta&)>& change) override {
    change(md_);
    return Status::Ok();
  }

 private:
  Meta& md_;
};

struct Msg {
  enum class Kind { kWrite, kZero, kFlush, kResyncDone };
  Kind kind = Kind::kWrite;
  uint64_t wire = 0;
  uint64_t seq = 0;
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  std::vector<std::byte> data;
  bool durable = false;
  bool discard = false;
  bool resync = false;
  uint64_t current_gen = 0;
};

struct Ack {
  uint64_t seq = 0;
  int error = 0;
};

// One TCP connection between the hosts.
struct Wire {
  uint64_t id = 0;
  bool open = false;
  std::deque<Msg> to_secondary;
  std::deque<Ack> to_primary;
};

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

// mirror::Replicator (primary side) over a Wire; see the file comment.
class SimReplicator final : public mirror::PeerLink {
 public:
  SimReplicator(World& world, asio::io_context& io, Meta& md, mirror::WriteIntentLog& log,
                base::BufferPool& pool, Variant variant)
      : world_(world), io_(io), md_(md), log_(log), pool_(pool), variant_(variant) {}

  ~SimReplicator() override {
    // The host crashed: resyncs waiting for blocks that will never come back go too.
    resync_.reset();
    for (auto& weak : keep_alives_) {
      if (auto keep_alive = weak.lock()) {
        keep_alive->reset();
      }
    }
  }

  void SetVolume(mirror::Volume* volume) { volume_ = volume; }

  void ReplicateWrite(uint64_t offset_bytes, std::span<const std::byte> data, bool durable,
                      PeerDone done) override {
    Msg m;
    m.kind = Msg::Kind::kWrite;
    m.offset_bytes = offset_bytes;
    m.length_bytes = data.size();
    m.data.assign(data.begin(), data.end());
    m.durable = durable;
    SendOrHold(std::move(m), std::move(done), /*resync=*/false);
  }
  void ReplicateZero(uint64_t offset_bytes, uint64_t length_bytes, nbd::ZeroOptions, bool discard,
                     bool durable, PeerDone done) override {
    Msg m;
    m.kind = Msg::Kind::kZero;
    m.offset_bytes = offset_bytes;
    m.length_bytes = length_bytes;
    m.durable = durable;
    m.discard = discard;
    SendOrHold(std::move(m), std::move(done), /*resync=*/false);
  }
  void ReplicateFlush(PeerDone done) override {
    Msg m;
    m.kind = Msg::Kind::kFlush;
    SendOrHold(std::move(m), std::move(done), /*resync=*/false);
  }

  bool streaming() const { return streaming_; }
  DiskState peer_disk() const { return peer_disk_; }
  bool resync_running() const { return resync_ && resync_->progress().running; }
  bool cleaning() const { return cleaning_; }
  size_t pending_count() const { return pending_.size(); }
  uint64_t cleared_regions() const { return cleared_regions_; }

  // Replicator::Plan without the wire: decides, fills the generations to record and the
  // target generation for the secondary, and marks what the resync must copy.
  mirror::SyncDecision Plan(const Generations& peer, bool peer_up_to_date, Generations& next,
                            uint64_t& target) {
    // Replicator::ConnectOnce holds client operations from here until the link streams.
    handshaking_ = true;
    mirror::SyncDecision decision =
        DecideSync(md_.gens, peer, peer_up_to_date, log_.marked_regions() > 0);
    if (mirror::IsRefusal(decision.kind)) {
      return decision;
    }
    next = md_.gens;
    target = next.current;
    switch (decision.kind) {
      case SyncKind::kNone:
        next.bitmap = next.current;
        next.current_shared = true;
        break;
      case SyncKind::kIncremental:
        target = peer.current;
        break;
      default:
        mirror::RememberGeneration(next, next.bitmap);
        next.bitmap = mirror::NewGeneration();
        target = next.bitmap;
        log_.MarkAll();
        break;
    }
    return decision;
  }
  // Replicator::Plan records `next` like this, after the bitmap is durable.
  void RecordPlan(const Generations& next) { md_.gens = next; }

  // The end of ConnectOnce: the link is up.
  void OnConnected(bool resync) {
    handshaking_ = false;
    streaming_ = true;
    ++link_epoch_;
    // ReleaseHeld: operations held during the handshake go out first.
    auto held = std::move(held_);
    held_.clear();
    for (auto& [msg, done] : held) {
      SendOrHold(std::move(msg), std::move(done), /*resync=*/false);
    }
    if (resync) {
      MarkPeerDisk(DiskState::kInconsistent);
      StartResync();
    } else {
      MarkPeerDisk(DiskState::kUpToDate);
    }
  }

  void OnAck(const Ack& ack);
  void OnClosed();
  // The handshake failed (cut, or the plan could not be recorded): CompleteHeldUnreplicated.
  void AbortHandshake() {
    if (!handshaking_) {
      return;
    }
    handshaking_ = false;
    auto held = std::move(held_);
    held_.clear();
    for (auto& [msg, done] : held) {
      CompleteUnreplicated(std::move(done));
    }
  }
  // Replicator::OnLocalWriteFailed.
  void OnLocalWriteFailed() override;

  // CleanLoop's condition and CleanOnce.
  bool CanClean() const {
    return streaming_ && peer_disk_ == DiskState::kUpToDate && log_.enabled() &&
           log_.marked_regions() > 0 && !resync_running() && !cleaning_;
  }
  void StartClean();

 private:
  struct Pending {
    PeerDone done;
    bool resync = false;
  };

  void SendOrHold(Msg msg, PeerDone done, bool resync);
  void CompleteUnreplicated(PeerDone done) {
    RecordDivergence();
    asio::post(io_, [done = std::move(done)] { done(PeerOutcome::kDegraded); });
  }
  void MarkPeerDisk(DiskState state) {
    if (peer_disk_ == state && md_.peer_disk == state) {
      return;
    }
    peer_disk_ = state;
    md_.peer_disk = state;
  }
  void RecordDivergence() {
    const bool mint = md_.gens.current_shared;
    if (peer_disk_ == DiskState::kUpToDate) {
      peer_disk_ = DiskState::kOutdated;
    }
    if (!mint && md_.peer_disk == peer_disk_) {
      return;
    }
    if (mint) {
      mirror::DivergeFromPeer(md_.gens);
    }
    md_.peer_disk = peer_disk_;
  }
  void StartResync();
  void OnResyncFinished(bool complete);

  World& world_;
  asio::io_context& io_;
  Meta& md_;
  mirror::WriteIntentLog& log_;
  base::BufferPool& pool_;
  const Variant variant_;
  mirror::Volume* volume_ = nullptr;
  bool streaming_ = false;
  bool handshaking_ = false;
  bool resync_again_ = false;
  std::vector<std::pair<Msg, PeerDone>> held_;
  DiskState peer_disk_ = DiskState::kOutdated;  // No clean shutdown recorded.
  std::map<uint64_t, Pending> pending_;
  uint64_t next_seq_ = 1;
  std::shared_ptr<mirror::Resync> resync_;
  std::vector<std::weak_ptr<std::shared_ptr<mirror::Resync>>> keep_alives_;
  uint64_t link_epoch_ = 0;
  bool cleaning_ = false;
  uint64_t cleared_regions_ = 0;
};

// One connection as the secondary sees it: frames in order, its acknowledgements back onto the
// Wire while it is the open one, and its end (OnClosed, posted as PeerConnection does) once
// everything the primary sent before the cut has been read.
class SimLink final : public transport::FrameLink {
 public:
  SimLink(World& world, asio::io_context& io, uint64_t wire)
      : world_(world), io_(io), wire_(wire) {}

  void StartStreaming(transport::FrameHandler* handler) override { handler_ = handler; }
  void Send(transport::FrameType type, const google::protobuf::MessageLite& message,
            std::span<const std::byte> payload) override;
  void Close(Status why) override;
  bool closed() const override { return closed_; }

  void Deliver(transport::Frame frame) { handler_->OnFrame(std::move(frame)); }
  void End(const Status& why);

 private:
  World& world_;
  asio::io_context& io_;
  const uint64_t wire_;
  transport::FrameHandler* handler_ = nullptr;
  bool closed_ = false;
};

// The secondary: the shipped mirror::ReplicaApplier over SimLinks, its own write-intent log on
// a SimStore, plus the secondary's half of PeerListener's handshake (World::DeliverPlan).
class Secondary {
 public:
  Secondary(World& world, SimStore& data, SimStore& meta, Meta& md,
            const std::vector<uint8_t>& bits);
  ~Secondary() {
    // A crash: the applier (and the store callbacks it left queued) go before the io_context.
    applier_.reset();
    link_.reset();
    log_.reset();
    io_.reset();
  }

  asio::io_context& io() { return *io_; }
  bool idle() const { return applier_->idle(); }
  bool attached() const { return applier_->attached(); }
  mirror::ReplicaApplier& applier() { return *applier_; }
  // PeerListener's last step: the applier takes the new connection.
  void Attach(uint64_t wire);
  // A frame off the connection, encoded as the Replicator encodes it.
  void Receive(const Msg& msg);
  // The connection's end has been read: the applier lets go of it.
  void EndOfLink(const Status& why);

 private:
  World& world_;
  MemorySuperblock superblock_;
  std::unique_ptr<asio::io_context> io_;
  std::unique_ptr<base::BufferPool> pool_;
  std::unique_ptr<mirror::WriteIntentLog> log_;
  std::unique_ptr<mirror::ReplicaApplier> applier_;
  std::shared_ptr<SimLink> link_;
};

// The primary's engine, rebuilt at every restart.
struct PrimaryEngine {
  std::unique_ptr<asio::io_context> io;
  std::unique_ptr<base::BufferPool> pool;
  std::unique_ptr<mirror::WriteIntentLog> log;
  std::unique_ptr<SimReplicator> link;
  std::unique_ptr<mirror::Volume> volume;

  ~PrimaryEngine() {
    // Nothing may call back into a part already gone: the link (and its Resync, whose timer
    // needs the io_context) first, the io_context's queued handlers (which may hold buffers)
    // before the pool.
    link.reset();
    volume.reset();
    log.reset();
    io.reset();
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
      : options_(options),
        rng_(options.seed),
        primary_data_("A.data", kVolumeBytes),
        primary_meta_("A.meta", mirror::kBitmapOffsetBytes +
                                    mirror::BitmapPageCount(kRegions) * mirror::kBitmapPageBytes),
        secondary_data_("B.data", kVolumeBytes),
        secondary_meta_("B.meta", primary_meta_.size_bytes()) {}

  ScheduleResult Run();
  ~World() {
    for (SimStore* store : {&primary_data_, &primary_meta_, &secondary_data_, &secondary_meta_}) {
      store->DropPending();
    }
    GenerationNames().clear();
  }

  // For the engine models.
  Wire& wire() { return wire_; }
  void Trace(const std::string& line) { trace_.push_back(std::to_string(step_) + ": " + line); }
  // The simulation's time: kStepTime per step, so GroupCommit's 1 s sync-ahead window opens and
  // closes at the same steps in every run of a seed.
  static constexpr std::chrono::milliseconds kStepTime{20};
  mirror::GroupCommit::Clock::time_point VirtualNow() const {
    return mirror::GroupCommit::Clock::time_point{} + step_ * kStepTime;
  }
  std::mt19937_64& rng() { return rng_; }
  void SendAck(uint64_t wire, uint64_t seq, int error) {
    if (wire_.open && wire_.id == wire) {
      wire_.to_primary.push_back({seq, error});
    }
  }
  // Closes the connection (see the file comment). `primary_notices`: the primary's replicator
  // runs OnClosed (false when the primary itself died); `prefix_arrives`: a random prefix of
  // what was in flight still reaches the secondary (false when the secondary died).
  void Cut(const std::string& why, bool primary_notices, bool prefix_arrives);
  void Fail(const std::string& why) {
    if (failure_.empty()) {
      failure_ = why;
    }
  }
  uint64_t resyncs = 0;
  uint64_t resync_holes = 0;

 private:
  enum class Handshake { kNone, kPersisting, kPlanSent, kRecorded };
  using Action = std::function<void()>;

  void Setup();
  void StartPrimary();
  void StartSecondary();
  // The bitmap as MetadataFile::ReadBitmap loads it from `meta`'s durable image: a page
  // failing its checksum is all set. `torn` counts those pages.
  static std::vector<uint8_t> LoadBitmap(const SimStore& meta, uint64_t& torn);
  void CrashPrimary();
  void CrashSecondary();
  void Drain();
  bool Step(bool healing);
  void AddActions(bool healing, std::vector<std::pair<int, Action>>& actions);
  void SubmitClientOp();
  void OnClientDone(size_t id, const Status& st);
  void CompleteRandom(SimStore& store);
  void DeliverToSecondary();
  void DeliverAck();
  void Dial();
  void DeliverPlan();
  void Ready();
  bool Healed() const;
  void FinalFlush();
  struct Expected {
    std::vector<std::byte> bytes;
    std::vector<int64_t> writer;  // The last op that wrote the byte; -1 for none.
    std::vector<uint8_t> known;   // The byte must hold bytes[at].
  };
  Expected ComputeExpected(bool durable_only) const;
  void CheckFailover();
  void Check();
  std::string Report() const;
  uint64_t RandomOffset();

  ScheduleOptions options_;
  std::mt19937_64 rng_;
  SimStore primary_data_;
  SimStore primary_meta_;
  SimStore secondary_data_;
  SimStore secondary_meta_;
  Meta pmd_;
  Meta smd_;
  mirror::Mode mode_ = mirror::Mode::kSync;
  std::unique_ptr<PrimaryEngine> primary_;
  std::unique_ptr<Secondary> secondary_;
  Wire wire_;
  uint64_t wire_ids_ = 0;
  std::deque<Msg> stale_;  // From closed connections, still to reach the secondary.
  Handshake handshake_ = Handshake::kNone;
  uint64_t handshake_id_ = 0;
  Generations plan_next_;
  uint64_t plan_target_ = 0;
  bool plan_resync_ = false;
  std::deque<ClientOp> ops_;
  size_t outstanding_ = 0;
  uint64_t incarnation_ = 0;
  // Per-schedule weights, so some schedules crash a lot and others barely cut the link.
  int w_crash_primary_ = 1;
  int w_crash_secondary_ = 1;
  int w_cut_ = 1;
  int w_clean_ = 5;
  // The resync's buffer budget: roomy, or one block at a time (blocks wait for buffers).
  size_t pool_bytes_ = 8 << 20;
  int step_ = 0;
  std::vector<std::string> trace_;
  std::string failure_;
  ScheduleResult result_;
};

void SimReplicator::SendOrHold(Msg msg, PeerDone done, bool resync) {
  if (streaming_) {
    const uint64_t seq = next_seq_++;
    msg.seq = seq;
    msg.wire = world_.wire().id;
    msg.resync = resync;
    world_.wire().to_secondary.push_back(std::move(msg));
    pending_.emplace(seq, Pending{std::move(done), resync});
    return;
  }
  if (resync) {
    asio::post(io_, [done = std::move(done)] { done(PeerOutcome::kDegraded); });
    return;
  }
  if (handshaking_) {
    held_.emplace_back(std::move(msg), std::move(done));
    return;
  }
  CompleteUnreplicated(std::move(done));
}

void SimReplicator::OnAck(const Ack& ack) {
  auto it = pending_.find(ack.seq);
  if (it == pending_.end()) {
    world_.Cut("ack for unknown seq " + std::to_string(ack.seq), true, true);
    return;
  }
  if (ack.error != 0) {
    world_.Cut("peer failed to apply seq " + std::to_string(ack.seq), true, true);
    return;
  }
  PeerDone done = std::move(it->second.done);
  pending_.erase(it);
  done(PeerOutcome::kConfirmed);
}

void SimReplicator::OnClosed() {
  streaming_ = false;
  if (resync_) {
    resync_->Cancel();
  }
  if (peer_disk_ == DiskState::kUpToDate) {
    MarkPeerDisk(DiskState::kOutdated);
  }
  auto pending = std::move(pending_);
  pending_.clear();
  for (auto& [seq, op] : pending) {
    if (op.resync) {
      op.done(PeerOutcome::kDegraded);
    } else {
      CompleteUnreplicated(std::move(op.done));
    }
  }
}

void SimReplicator::StartResync() {
  auto resync = std::make_shared<mirror::Resync>(
      io_, *volume_, log_, pool_,
      [this](uint64_t offset, std::span<const std::byte> data, PeerDone done) {
        Msg m;
        m.kind = Msg::Kind::kWrite;
        m.offset_bytes = offset;
        m.length_bytes = data.size();
        m.data.assign(data.begin(), data.end());
        SendOrHold(std::move(m), std::move(done), /*resync=*/true);
      },
      [this](uint64_t offset, uint64_t length, PeerDone done) {
        ++world_.resync_holes;
        Msg m;
        m.kind = Msg::Kind::kZero;
        m.offset_bytes = offset;
        m.length_bytes = length;
        SendOrHold(std::move(m), std::move(done), /*resync=*/true);
      },
      [this](PeerDone done) {
        Msg m;
        m.kind = Msg::Kind::kFlush;
        SendOrHold(std::move(m), std::move(done), /*resync=*/true);
      },
      /*rate_bytes_per_s=*/0);
  resync_ = resync;
  ++world_.resyncs;
  world_.Trace("A resync starts: " + std::to_string(log_.marked_regions()) + " regions marked");
  // Replicator::StartResync's callback holds the Resync itself, so a cancelled resync lives on
  // until its last block comes back (a block may still wait for a range lock or a read when the
  // next connection replaces resync_). The holder lets a crash break that cycle.
  auto keep_alive = std::make_shared<std::shared_ptr<mirror::Resync>>(resync);
  keep_alives_.push_back(keep_alive);
  resync->Start([this, keep_alive](bool complete) { OnResyncFinished(complete); });
}

void SimReplicator::OnResyncFinished(bool complete) {
  world_.Trace(std::string("A resync ") + (complete ? "complete" : "interrupted"));
  if (!complete || !streaming_) {
    return;
  }
  Msg m;
  m.kind = Msg::Kind::kResyncDone;
  m.current_gen = md_.gens.current;
  md_.gens.current_shared = true;  // Replicator records this before ResyncDone leaves.
  SendOrHold(
      std::move(m),
      [this](PeerOutcome outcome) {
        if (outcome != PeerOutcome::kConfirmed) {
          return;
        }
        peer_disk_ = DiskState::kUpToDate;
        md_.gens.bitmap = md_.gens.current;
        md_.peer_disk = DiskState::kUpToDate;
        world_.Trace("A ResyncDone acked: peer UpToDate, " + GensText(md_.gens));
        if (resync_again_) {
          resync_again_ = false;
          OnLocalWriteFailed();
        }
      },
      /*resync=*/true);
}

void SimReplicator::OnLocalWriteFailed() {
  asio::post(io_, [this] {
    if (!streaming_ || log_.pinned_regions() == 0) {
      return;
    }
    if (resync_running()) {
      resync_again_ = true;
      return;
    }
    world_.Trace("A local write failed: resync of " + std::to_string(log_.pinned_regions()) +
                 " pinned regions");
    MarkPeerDisk(DiskState::kInconsistent);
    StartResync();
  });
}

void SimReplicator::StartClean() {
  cleaning_ = true;
  const uint64_t epoch = link_epoch_;
  const uint64_t cycle = log_.BeginClean();
  world_.Trace("A clean cycle " + std::to_string(cycle) + " begins");
  if (variant_ == Variant::kCleanWithoutFlush) {
    // The broken variant: nothing made the completed writes durable on both copies yet.
    const uint64_t cleared = log_.FinishClean(cycle);
    cleared_regions_ += cleared;
    cleaning_ = false;
    world_.Trace("A clean cycle (no flush) cleared " + std::to_string(cleared));
    return;
  }
  volume_->group_commit().RequestDurable([this, epoch, cycle](const Status& local) {
    // CleanOnce resumes its coroutine through the executor between the two awaits.
    asio::post(io_, [this, epoch, cycle, local] {
      Msg flush;
      flush.kind = Msg::Kind::kFlush;
      SendOrHold(
          std::move(flush),
          [this, epoch, cycle, local](PeerOutcome outcome) {
            asio::post(io_, [this, epoch, cycle, local, outcome] {
              cleaning_ = false;
              if (local.ok() && outcome == PeerOutcome::kConfirmed && epoch == link_epoch_ &&
                  streaming_ && peer_disk_ == DiskState::kUpToDate) {
                const uint64_t cleared = log_.FinishClean(cycle);
                cleared_regions_ += cleared;
                world_.Trace("A clean cycle " + std::to_string(cycle) + " cleared " +
                             std::to_string(cleared));
              } else {
                log_.AbortClean();
                world_.Trace("A clean cycle " + std::to_string(cycle) + " aborted");
              }
            });
          },
          /*resync=*/true);
    });
  });
}

void SimLink::Send(transport::FrameType type, const google::protobuf::MessageLite& message,
                   std::span<const std::byte> payload) {
  if (closed_) {
    return;
  }
  // The applier only acknowledges (the simulation sends no DigestRequest).
  pb::Ack ack;
  if (type != transport::FrameType::kAck || !payload.empty() ||
      !ack.ParseFromString(message.SerializeAsString())) {
    world_.Fail(std::string("the secondary sent an unexpected ") + transport::FrameTypeName(type));
    return;
  }
  world_.SendAck(wire_, ack.seq(), static_cast<int>(ack.error()));
}

void SimLink::Close(Status why) {
  // The applier drops a link only for an invalid operation, and the primary sends none.
  world_.Fail("the secondary dropped link " + std::to_string(wire_) + ": " + why.ToString());
  End(why);
}

void SimLink::End(const Status& why) {
  if (closed_) {
    return;
  }
  closed_ = true;
  if (handler_ != nullptr) {
    asio::post(io_, [handler = handler_, why] { handler->OnClosed(why); });
  }
}

Secondary::Secondary(World& world, SimStore& data, SimStore& meta, Meta& md,
                     const std::vector<uint8_t>& bits)
    : world_(world),
      superblock_(md),
      io_(std::make_unique<asio::io_context>()),
      // Room for every frame the wire can hold: PeerConnection would stop reading instead.
      pool_(std::make_unique<base::BufferPool>(64 << 20)),
      log_(std::make_unique<mirror::WriteIntentLog>(*io_, &meta, kVolumeBytes, kRegionBytes, bits)),
      applier_(std::make_unique<mirror::ReplicaApplier>(*io_, data, superblock_, *log_)) {
  applier_->group_commit().SetClock([&world] { return world.VirtualNow(); });
}

void Secondary::Attach(uint64_t wire) {
  link_ = std::make_shared<SimLink>(world_, *io_, wire);
  applier_->Attach(link_, "A");
}

void Secondary::EndOfLink(const Status& why) {
  if (link_) {
    link_->End(why);
    link_.reset();
  }
}

void Secondary::Receive(const Msg& msg) {
  // As Replicator::ReplicateWrite/Zero/Flush, StartResync and OnResyncFinished encode them.
  transport::Frame frame;
  std::string message;
  switch (msg.kind) {
    case Msg::Kind::kWrite: {
      pb::Write write;
      write.set_seq(msg.seq);
      write.set_offset_bytes(msg.offset_bytes);
      write.set_length_bytes(static_cast<uint32_t>(msg.data.size()));
      write.set_durable(msg.durable);
      write.set_resync(msg.resync);
      message = write.SerializeAsString();
      frame.type = transport::FrameType::kWrite;
      std::optional<base::Buffer> payload = pool_->TryAcquire(msg.data.size());
      if (!payload) {
        world_.Fail("the secondary's frame pool is spent");
        return;
      }
      std::copy(msg.data.begin(), msg.data.end(), payload->data());
      frame.payload = std::move(*payload);
      break;
    }
    case Msg::Kind::kZero: {
      pb::Zero zero;
      zero.set_seq(msg.seq);
      zero.set_offset_bytes(msg.offset_bytes);
      zero.set_length_bytes(msg.length_bytes);
      zero.set_durable(msg.durable);
      zero.set_discard(msg.discard);
      zero.set_may_punch_hole(msg.resync);
      message = zero.SerializeAsString();
      frame.type = transport::FrameType::kZero;
      break;
    }
    case Msg::Kind::kFlush: {
      pb::Flush flush;
      flush.set_seq(msg.seq);
      message = flush.SerializeAsString();
      frame.type = transport::FrameType::kFlush;
      break;
    }
    case Msg::Kind::kResyncDone: {
      pb::ResyncDone done;
      done.set_seq(msg.seq);
      done.set_current_gen(msg.current_gen);
      message = done.SerializeAsString();
      frame.type = transport::FrameType::kResyncDone;
      break;
    }
  }
  frame.message.resize(message.size());
  std::memcpy(frame.message.data(), message.data(), message.size());
  if (!link_) {
    world_.Fail("a frame reached the secondary with no connection attached");
    return;
  }
  link_->Deliver(std::move(frame));
}

void World::Cut(const std::string& why, bool primary_notices, bool prefix_arrives) {
  if (!wire_.open) {
    return;
  }
  wire_.open = false;
  size_t arrives = 0;
  if (prefix_arrives && !wire_.to_secondary.empty()) {
    arrives = rng_() % (wire_.to_secondary.size() + 1);
    for (size_t i = 0; i < arrives; ++i) {
      stale_.push_back(std::move(wire_.to_secondary[i]));
    }
  }
  Trace("link " + std::to_string(wire_.id) + " cut (" + why + "): " + std::to_string(arrives) +
        " of " + std::to_string(wire_.to_secondary.size()) + " in flight still arrive");
  wire_.to_secondary.clear();
  wire_.to_primary.clear();
  if (stale_.empty()) {
    secondary_->EndOfLink(Status::Error(ECONNRESET, why));
  }
  ++result_.cuts;
  if (handshake_ != Handshake::kNone) {
    primary_->link->AbortHandshake();
  }
  handshake_ = Handshake::kNone;
  ++handshake_id_;
  if (primary_notices && primary_->link->streaming()) {
    primary_->link->OnClosed();
  }
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
  pool_bytes_ = rng_() % 2 == 0 ? 8 << 20 : 300 << 10;
  // Bitmap pages start empty and valid, as MetadataFile::Create leaves them.
  std::vector<std::byte> meta(primary_meta_.size_bytes());
  std::vector<uint8_t> empty(mirror::kBitmapAreaBytes, 0);
  for (uint64_t p = 0; p < mirror::BitmapPageCount(kRegions); ++p) {
    mirror::EncodeBitmapPage(
        static_cast<uint32_t>(p), empty,
        std::span(meta).subspan(mirror::kBitmapOffsetBytes + p * mirror::kBitmapPageBytes,
                                mirror::kBitmapPageBytes));
  }
  primary_meta_.Initialize(meta);
  secondary_meta_.Initialize(meta);
  const uint64_t g0 = mirror::NewGeneration();
  pmd_.gens.current = g0;
  pmd_.disk = DiskState::kUpToDate;
  if (rng_() % 2 == 0) {
    // A pair that was in sync when it last stopped, both copies zero.
    pmd_.gens.bitmap = g0;
    pmd_.peer_disk = DiskState::kUpToDate;
    smd_.gens.current = smd_.gens.bitmap = g0;
    pmd_.gens.current_shared = smd_.gens.current_shared = true;
    smd_.disk = DiskState::kUpToDate;
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
    primary_data_.Initialize(data);
    op.data = data;
    op.state = ClientOp::State::kOk;
    op.guaranteed = true;
    ops_.push_back(std::move(op));
    pmd_.peer_disk = DiskState::kInconsistent;
    smd_.disk = DiskState::kInconsistent;
    Trace("setup: new pair, secondary never synchronised");
  }
  Trace(std::string("setup: mode ") + (mode_ == mirror::Mode::kSync ? "sync" : "flush") +
        ", weights crash A/B " + std::to_string(w_crash_primary_) + "/" +
        std::to_string(w_crash_secondary_) + ", cut " + std::to_string(w_cut_));
  if (options_.inject_write_eio) {
    primary_data_.set_write_eio_per_mille(5);
    secondary_data_.set_write_eio_per_mille(5);
  }
  StartPrimary();
  StartSecondary();
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
  const std::vector<uint8_t> bits = LoadBitmap(secondary_meta_, torn);
  secondary_ = std::make_unique<Secondary>(*this, secondary_data_, secondary_meta_, smd_, bits);
  if (torn > 0) {
    Trace("B starts with a torn bitmap page");
  }
}

void World::StartPrimary() {
  ++incarnation_;
  uint64_t torn = 0;
  const std::vector<uint8_t> bits = LoadBitmap(primary_meta_, torn);
  auto engine = std::make_unique<PrimaryEngine>();
  engine->io = std::make_unique<asio::io_context>();
  engine->pool = std::make_unique<base::BufferPool>(pool_bytes_);
  engine->log = std::make_unique<mirror::WriteIntentLog>(*engine->io, &primary_meta_, kVolumeBytes,
                                                         kRegionBytes, bits);
  // As in the daemon, marks go ahead over aligned chunks (here 4 regions), in half the
  // schedules; chosen from the seed, so the random stream of every schedule stays as it was.
  if (options_.seed % 2 == 0) {
    engine->log->set_mark_ahead_bytes(4 * kRegionBytes);
  }
  engine->link = std::make_unique<SimReplicator>(*this, *engine->io, pmd_, *engine->log,
                                                 *engine->pool, options_.variant);
  engine->volume = std::make_unique<mirror::Volume>(*engine->io, primary_data_, engine->link.get(),
                                                    mode_, engine->log.get());
  engine->link->SetVolume(engine->volume.get());
  engine->volume->group_commit().SetClock([this] { return VirtualNow(); });
  primary_ = std::move(engine);
  Trace("A starts: " + GensText(pmd_.gens) + ", " +
        std::to_string(primary_->log->marked_regions()) + " regions marked" +
        (torn > 0 ? " (torn bitmap page)" : ""));
}

void World::CrashPrimary() {
  CheckFailover();
  ++result_.primary_crashes;
  result_.cleared_regions += primary_->link->cleared_regions();
  result_.sync_aheads += primary_->volume->group_commit().sync_ahead_count();
  Cut("primary crashed", /*primary_notices=*/false, /*prefix_arrives=*/true);
  Trace(primary_data_.Crash(rng_));
  Trace(primary_meta_.Crash(rng_));
  primary_.reset();
  for (ClientOp& op : ops_) {
    if (op.state == ClientOp::State::kPending) {
      op.state = ClientOp::State::kLost;
    } else if (op.state == ClientOp::State::kOk && !op.guaranteed) {
      op.maybe_lost = true;
    }
  }
  outstanding_ = 0;
  StartPrimary();
}

void World::CrashSecondary() {
  ++result_.secondary_crashes;
  Cut("secondary crashed", /*primary_notices=*/true, /*prefix_arrives=*/false);
  stale_.clear();
  Trace(secondary_data_.Crash(rng_));
  Trace(secondary_meta_.Crash(rng_));
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
      return;
    }
  }
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
    o.state = ClientOp::State::kFailed;
    Trace("client #" + std::to_string(id) + " refused: " + st.ToString());
    return;
  }
  ++outstanding_;
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
}

void World::CompleteRandom(SimStore& store) {
  Trace(store.CompleteAt(rng_() % store.pending_count(), rng_));
}

void World::DeliverToSecondary() {
  Msg msg;
  const bool from_stale = !stale_.empty();
  if (from_stale) {
    msg = std::move(stale_.front());
    stale_.pop_front();
  } else {
    msg = std::move(wire_.to_secondary.front());
    wire_.to_secondary.pop_front();
  }
  static constexpr const char* kNames[] = {"Write", "Zero", "Flush", "ResyncDone"};
  Trace("B receives link " + std::to_string(msg.wire) + " seq " + std::to_string(msg.seq) + " " +
        kNames[static_cast<int>(msg.kind)] + " " + std::to_string(msg.offset_bytes) + "+" +
        std::to_string(msg.length_bytes) + (msg.resync ? " (resync)" : ""));
  const bool last_of_cut = from_stale && stale_.empty();
  secondary_->Receive(msg);
  if (last_of_cut) {
    secondary_->EndOfLink(Status::Error(ECONNRESET, "link cut"));
  }
}

void World::DeliverAck() {
  Ack ack = wire_.to_primary.front();
  wire_.to_primary.pop_front();
  Trace("A receives ack seq " + std::to_string(ack.seq) +
        (ack.error != 0 ? " error " + std::to_string(ack.error) : ""));
  primary_->link->OnAck(ack);
}

// ConnectOnce and Plan, up to the durable bitmap (the primary's side), then the secondary's.
void World::Dial() {
  wire_ = Wire{++wire_ids_, true, {}, {}};
  Generations next;
  uint64_t target = 0;
  const mirror::SyncDecision view = DecideSync(
      pmd_.gens, smd_.gens, smd_.disk == DiskState::kUpToDate, primary_->log->marked_bytes() > 0);
  const mirror::SyncDecision decision =
      primary_->link->Plan(smd_.gens, smd_.disk == DiskState::kUpToDate, next, target);
  Trace("dial link " + std::to_string(wire_.id) + ": A " + GensText(pmd_.gens) + ", B " +
        GensText(smd_.gens) + " " + mirror::DiskStateName(smd_.disk) + ": " +
        mirror::SyncKindName(decision.kind) + " (" + NameGenerations(decision.reason) + ")");
  if (mirror::IsRefusal(decision.kind) || mirror::IsRefusal(view.kind)) {
    Fail("handshake refused: " + NameGenerations(decision.reason) + " / " +
         NameGenerations(view.reason));
    return;
  }
  plan_next_ = next;
  plan_target_ = target;
  plan_resync_ = decision.kind != SyncKind::kNone;
  handshake_ = Handshake::kPersisting;
  const uint64_t id = ++handshake_id_;
  primary_->log->Persist([this, id](const Status& st) {
    if (id != handshake_id_) {
      return;
    }
    if (!st.ok()) {
      Cut("recording the sync plan failed", true, true);
      return;
    }
    primary_->link->RecordPlan(plan_next_);
    handshake_ = Handshake::kPlanSent;
    Trace("A recorded plan: " + GensText(pmd_.gens));
  });
}

void World::DeliverPlan() {
  // PeerListener::Handshake: without a resync the primary vouches the copies are identical and
  // the secondary's own marks are moot (its ClearAll completes at once: it never marks here).
  mirror::FollowPrimaryGeneration(smd_, plan_target_,
                                  plan_resync_ ? DiskState::kInconsistent : DiskState::kUpToDate);
  handshake_ = Handshake::kRecorded;
  Trace("B recorded plan: " + GensText(smd_.gens) + " " + mirror::DiskStateName(smd_.disk));
}

void World::Ready() {
  handshake_ = Handshake::kNone;
  secondary_->Attach(wire_.id);
  Trace("link " + std::to_string(wire_.id) + " up");
  primary_->link->OnConnected(plan_resync_);
}

void World::AddActions(bool healing, std::vector<std::pair<int, Action>>& actions) {
  auto add = [&actions](int weight, Action action) {
    if (weight > 0) {
      actions.emplace_back(weight, std::move(action));
    }
  };
  if (primary_data_.pending_count() > 0) {
    add(200, [this] { CompleteRandom(primary_data_); });
  }
  if (primary_meta_.pending_count() > 0) {
    add(100, [this] { CompleteRandom(primary_meta_); });
  }
  if (secondary_data_.pending_count() > 0) {
    add(200, [this] { CompleteRandom(secondary_data_); });
  }
  if (secondary_meta_.pending_count() > 0) {
    add(100, [this] { CompleteRandom(secondary_meta_); });
  }
  if (!stale_.empty() || (wire_.open && !wire_.to_secondary.empty())) {
    add(150, [this] { DeliverToSecondary(); });
  }
  if (wire_.open && !wire_.to_primary.empty()) {
    add(150, [this] { DeliverAck(); });
  }
  const bool link_down = !wire_.open && handshake_ == Handshake::kNone;
  // PeerListener refuses a primary while the applier still holds the previous connection.
  if (link_down && stale_.empty() && !secondary_->attached() &&
      (options_.writes_during_handshake || outstanding_ == 0)) {
    add(healing ? 50 : 30, [this] { Dial(); });
  }
  if (handshake_ == Handshake::kPlanSent) {
    add(50, [this] { DeliverPlan(); });
  }
  if (handshake_ == Handshake::kRecorded && secondary_->idle()) {
    add(50, [this] { Ready(); });
  }
  if (healing) {
    return;
  }
  if (outstanding_ < kMaxOutstanding &&
      (options_.writes_during_handshake || handshake_ == Handshake::kNone)) {
    // Fewer new requests while the link is down, so that the volume drains now and then and
    // the handshake can start (see ScheduleOptions::writes_during_handshake).
    add(link_down && !options_.writes_during_handshake ? 60 : 250, [this] { SubmitClientOp(); });
  }
  if (primary_->link->CanClean()) {
    add(w_clean_, [this] { primary_->link->StartClean(); });
  }
  if (wire_.open) {
    add(w_cut_, [this] { Cut("link dropped", true, true); });
  }
  add(w_crash_primary_, [this] { CrashPrimary(); });
  add(10, [this] { CheckFailover(); });
  add(w_crash_secondary_, [this] { CrashSecondary(); });
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
  ++step_;
  return true;
}

bool World::Healed() const {
  const SimReplicator& link = *primary_->link;
  return link.streaming() && link.peer_disk() == DiskState::kUpToDate && !link.resync_running() &&
         !link.cleaning() && link.pending_count() == 0 && outstanding_ == 0;
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
  const SimReplicator& link = *primary_->link;
  if (!link.streaming() || link.peer_disk() != DiskState::kUpToDate) {
    return;
  }
  // The primary's status says the standby is connected and UpToDate: if the primary died now
  // and the standby were promoted, every write acknowledged as durable must be on its disk.
  const Expected e = ComputeExpected(/*durable_only=*/true);
  const auto& b = secondary_data_.durable();
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
  const auto& a = options_.inject_write_eio ? primary_data_.data() : primary_data_.durable();
  const auto& b = options_.inject_write_eio ? secondary_data_.data() : secondary_data_.durable();
  if (!options_.inject_write_eio && primary_data_.data() != a) {
    Fail("after the final flush the primary's cache differs from its disk");
    return;
  }
  if (!options_.inject_write_eio && secondary_data_.data() != b) {
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
  result_.resyncs = resyncs;
  result_.resync_holes = resync_holes;
  result_.cleared_regions += primary_->link->cleared_regions();
  result_.sync_aheads += primary_->volume->group_commit().sync_ahead_count();
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
  // The engine's own log lines (a link dropped, a resync done) are part of every schedule; the
  // trace says what happened, and a failure prints it.
  spdlog::set_level(spdlog::level::off);
  World world(options);
  return world.Run();
}

}  // namespace sim
