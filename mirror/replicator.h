#pragma once
// Replicator: the primary's side of the mirror. It implements PeerLink for the Volume, keeps a
// connection to the standby (dialing and redialing it), runs the handshake that decides what
// the standby needs (mirror/generations.h: nothing, the marked regions, everything, or a
// refusal), drives that resync, clears the write-intent bitmap while the pair is in sync, and
// applies the failure policy when the standby goes away.
//
// Handshake (after authentication): both send Hello (identity, size, disk state, generations);
// the secondary then sends its marked regions (BitmapRuns). The primary adds them to its own
// bitmap, decides, makes the bitmap and generations durable, and sends SyncPlan; the secondary
// records the plan durably and answers Ready. Split brain, a secondary ahead of the primary and
// unrelated data are refused on both sides, logged, and shown in status (`sync_refusal`) until
// an operator runs `nbdmirror discard-changes` on the copy whose changes are to go.
//
// Connection states (status "connection"): kConnecting while dialing or between attempts,
// kConnected once the handshake is done and writes are mirrored.
//
// Peer loss (link error, bad frame, heartbeat timeout, a failed write on the standby, or a
// standby that keeps sending heartbeats but acknowledges nothing for `ack_timeout` while
// operations wait for it, as one whose disk hangs):
//   - the peer's copy is recorded as Outdated in the metadata file, durably, before any write
//     is acknowledged without it;
//   - `degrade` (default): writes in flight to the peer and all later writes complete with
//     kDegraded; the volume keeps serving;
//   - `block`: they are held; when the standby is back they are sent again, and answered
//     when it acknowledges them. (They keep their range locks meanwhile, so the resync that
//     follows copies their ranges only after them.)
// The first write acknowledged without the peer mints a new current generation (durably, before
// the acknowledgement), so the returning standby is known to be behind by exactly the marked
// regions.
//
// Bitmap cleaning: a clean cycle spans `clean_interval` (5 s). At its end, if the peer has been
// connected on the same link throughout, is UpToDate and no resync or verify runs, both copies
// are flushed and the regions no write touched during the whole cycle are cleared. Regions
// written at least once a cycle stay marked: a hot working set costs no metadata I/O.
// Cleaning has two costs: the flush (in mode flush a real datasync on both disks, which a client
// that never flushes would not otherwise pay; in mode sync nearly free), and, for a busy volume,
// the marks its next writes must set again, each a metadata write the write waits for. So in
// either mode a cycle cleans only if the volume was idle through it (everything unpinned then
// clears) or if more than `keep_marked_bytes` (4 GiB) is marked; otherwise the regions stay
// marked, like the extents of DRBD's activity log. A crash of the primary, or of the standby,
// then resyncs at most about that much plus what was written in the last cycle (and during the
// outage). (Mode sync used to clean every cycle: a random 4 KiB QD1 load then waited for a
// metadata write on ~600 of every 1000 writes; bench/RESULTS.md.)
//
// Loop thread only.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/asio.h"
#include "base/buffer_pool.h"
#include "base/callback.h"
#include "base/endpoint.h"
#include "mirror/metadata.h"
#include "mirror/peer_link.h"
#include "mirror/resync.h"
#include "mirror/resync_tally.h"
#include "mirror/verifier.h"
#include "mirror/volume.h"
#include "mirror/write_intent_log.h"
#include "transport/peer_connection.h"

namespace nbdmirror::peer {
class Hello;
class SyncPlan;
}  // namespace nbdmirror::peer

namespace mirror {

enum class PeerLossPolicy { kDegrade, kBlock };
enum class ConnectionState { kStandalone, kConnecting, kConnected };
const char* ConnectionStateName(ConnectionState state);

struct ReplicatorOptions {
  std::string node_id;
  std::string peer_node_id;
  base::Endpoint peer_endpoint;
  std::string secret;
  asio::ssl::context* tls = nullptr;
  transport::LinkTiming timing;
  PeerLossPolicy on_peer_loss = PeerLossPolicy::kDegrade;
  bool skip_initial_sync = false;
  std::chrono::milliseconds retry_interval{1000};
  uint64_t resync_rate_bytes_per_s = 0;  // 0: unlimited.
  std::chrono::milliseconds clean_interval{5000};
  // Operations pending and no Ack at all for this long: the peer is lost (0: never). Looked at
  // every half of it, so it strikes after one to one and a half times it.
  std::chrono::milliseconds ack_timeout{30000};
  // While the volume is busy, clean only once more than this is marked (see above).
  uint64_t keep_marked_bytes = 4ull << 30;
  // With the peer in sync, marks cover aligned chunks of this size (see Start).
  uint64_t mark_ahead_bytes = 1 << 20;
  // The blocks verify compares by digest.
  uint64_t verify_block_bytes = Verifier::kBlockBytes;

  // For the mirror simulation: how a link is made and how time passes. Unset: TCP (TLS if
  // `tls`) to peer_endpoint, authenticated with `secret`; asio timers.
  using DialFn =
      std::function<asio::awaitable<base::Result<std::shared_ptr<transport::MessageLink>>>()>;
  using SleepFn = std::function<asio::awaitable<void>(std::chrono::milliseconds)>;
  DialFn dial;
  SleepFn sleep;
};

class Replicator final : public PeerLink, public transport::FrameHandler {
 public:
  // Everything is borrowed and must outlive the replicator. `peer_disk_known_good` says the
  // metadata recorded a clean shutdown with the peer UpToDate (for status until it connects).
  Replicator(asio::io_context& io, ReplicatorOptions options, Superblock& metadata,
             WriteIntentLog& intent_log, base::BufferPool& pool, bool peer_disk_known_good);
  ~Replicator() override;

  void SetVolume(Volume* volume) { volume_ = volume; }
  void Start();
  // The daemon is draining: operations that `block` holds fail (kAborted) rather than wait.
  void BeginShutdown();
  // Stops dialing and closes the link. In-flight operations complete (kDegraded).
  void Stop();

  // PeerLink.
  void ReplicateWrite(uint64_t offset_bytes, std::span<const std::byte> data, bool durable,
                      PeerDone done) override;
  void ReplicateZero(uint64_t offset_bytes, uint64_t length_bytes, nbd::ZeroOptions options,
                     bool discard, bool durable, PeerDone done) override;
  void ReplicateFlush(PeerDone done) override;
  // Resyncs the pinned regions of a failed local write (now, or after the running resync).
  void OnLocalWriteFailed() override;

  // FrameHandler.
  void OnFrame(transport::Frame frame) override;
  void OnClosed(const base::Status& why) override;

  // Online verify (`nbdmirror verify`): compares both copies block by block by digest; differing
  // blocks are marked and resynchronised. Refused unless connected with the peer UpToDate and
  // no resync or verify running.
  base::Status StartVerify();
  // The running or last verify; null before the first.
  const VerifyProgress* verify() const { return verifier_ ? &verifier_->progress() : nullptr; }

  ConnectionState connection() const { return connection_; }
  DiskState peer_disk() const { return peer_disk_; }
  ResyncProgress resync() const;
  size_t pending_count() const { return pending_.size(); }
  size_t held_count() const { return held_.size(); }
  const std::string& last_error() const { return last_error_; }
  // Why the last handshake was refused for split brain, a peer ahead or unrelated data ("" if
  // it was not), and the kind of the last sync decision ("" before the first).
  const std::string& sync_refusal() const { return sync_refusal_; }
  const std::string& last_sync_kind() const { return last_sync_kind_; }
  // A clean cycle is flushing both copies before it clears regions.
  bool cleaning() const { return cleaning_; }
  // Bytes copied by every resync of this run, running ones included; never decreases.
  uint64_t resynced_bytes_total() const { return resync_tally_.total(); }
  // True when every write since the start of this connection reached the peer, the peer is
  // UpToDate, nothing is in flight and no verify is running: what a clean shutdown may record.
  bool PeerInSync() const;

 private:
  using SendFn = base::Callback<void(uint64_t seq)>;
  // An operation sent to the peer, or held for it (block policy). `send` can send it again:
  // its payload is borrowed from the client's request, which waits for this very operation.
  struct Pending {
    SendFn send;
    PeerDone done;
    bool resync = false;  // Resync, verify and clean traffic: never held, never degrades a write.
    std::shared_ptr<std::string> digest;  // A DigestRequest's answer lands here.
  };

  asio::awaitable<void> DialLoop();
  asio::awaitable<base::Result<std::shared_ptr<transport::MessageLink>>> DialTcp();
  asio::awaitable<void> Sleep(std::chrono::milliseconds duration);
  asio::awaitable<base::Status> ConnectOnce();
  // Plan, SyncPlan, Ready: the part of the handshake during which client operations are held.
  asio::awaitable<base::Status> Negotiate(const nbdmirror::peer::Hello& peer_hello,
                                          transport::MessageLink& link,
                                          nbdmirror::peer::SyncPlan& plan);
  void CompleteHeldUnreplicated();
  base::Status CheckPeerHello(const google::protobuf::MessageLite& hello) const;
  // Reads the secondary's BitmapRuns.
  asio::awaitable<base::Status> ReceivePeerBitmap(transport::MessageLink& link,
                                                  std::vector<ByteRange>& runs);
  // Receives the peer's bitmap, decides, and makes the plan durable; fills `plan`. A refusal
  // comes back as an error.
  asio::awaitable<base::Status> Plan(const nbdmirror::peer::Hello& peer_hello,
                                     transport::MessageLink& link, nbdmirror::peer::SyncPlan& plan);
  asio::awaitable<void> CleanLoop();
  asio::awaitable<void> AckWatch();
  asio::awaitable<void> CleanOnce(uint64_t cycle);
  uint64_t NextSeq() { return next_seq_++; }
  bool Streaming() const { return link_ != nullptr && connection_ == ConnectionState::kConnected; }
  // Sends a client operation's frame (SendAlone when nothing else awaits the peer).
  void SendLive(transport::FrameType type, const google::protobuf::MessageLite& message,
                std::span<const std::byte> payload = {});
  void SendOrHold(SendFn send, PeerDone done, bool resync,
                  std::shared_ptr<std::string> digest = nullptr);
  void OnVerifyFinished(const VerifyProgress& result);
  void CompleteUnreplicated(Pending op);
  void MarkPeerDisk(DiskState state);
  // The first write without the peer: a new current generation, the peer Outdated, durably.
  // False when that could not be made durable (the superblock's write failed, now or before):
  // nothing may then be acknowledged without the peer.
  bool RecordDivergence();
  void StartResync();
  void OnResyncFinished(bool complete);
  void ReleaseHeld();

  asio::io_context& io_;
  ReplicatorOptions options_;
  Superblock& metadata_;
  WriteIntentLog& intent_log_;
  base::BufferPool& pool_;
  Volume* volume_ = nullptr;
  std::shared_ptr<transport::MessageLink> link_;
  ConnectionState connection_ = ConnectionState::kStandalone;
  DiskState peer_disk_ = DiskState::kInconsistent;
  using PendingMap = std::unordered_map<uint64_t, Pending>;
  PendingMap pending_;
  // Nodes of answered operations, kept for reuse so that an operation costs no allocation here;
  // never more than the most operations that were in flight at once.
  std::vector<PendingMap::node_type> spare_pending_;
  std::vector<Pending> held_;  // Block policy: waiting for the peer to come back.
  uint64_t next_seq_ = 1;
  std::shared_ptr<Resync> resync_;
  // Every resync started whose completion callback may still come (a cancelled one finishes
  // its blocks in flight first): abandoned at destruction, so none calls back into a gone
  // replicator or keeps itself alive through its callback.
  std::vector<std::weak_ptr<Resync>> unfinished_resyncs_;
  std::shared_ptr<Verifier> verifier_;
  ResyncProgress resync_progress_;
  uint64_t link_epoch_ = 0;  // Counts connections, so a clean cycle spans one link.
  uint64_t acks_received_ = 0;
  bool cleaning_ = false;
  std::string sync_refusal_;
  std::string last_sync_kind_;
  ResyncTally resync_tally_;
  std::unique_ptr<base::AsyncEvent> link_closed_;
  bool stopping_ = false;
  bool shutting_down_ = false;
  bool handshaking_ = false;           // Between the sync decision and streaming.
  // Operations completed without the peer (CompleteUnreplicated), ever. A handshake during which
  // this moved is refused: its plan no longer covers what the peer lacks.
  uint64_t unreplicated_count_ = 0;
  // A superblock update failed: the state on disk lags the state in memory (Superblock::Update
  // changes memory either way). Every record retries until one succeeds.
  bool metadata_behind_ = false;
  bool resync_again_ = false;          // A local write failed during a resync or verify.
  std::string last_error_;
};

}  // namespace mirror
