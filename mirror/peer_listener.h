#pragma once
// PeerListener: accepts connections from the other daemon on --listen.
//
// On a secondary it runs the acceptor side of the handshake: authenticate, check the caller's
// Hello (it must be the configured peer, a primary, of the same size and, once paired, the same
// volume), answer with our Hello and our marked regions (BitmapRuns), check the generations
// itself (split brain, a secondary ahead of the primary and unrelated data are refused here as
// well as on the primary), record the primary's SyncPlan durably, and hand the link to the
// ReplicaApplier. On a primary it authenticates and then refuses: a node that dials a
// primary believes it is primary itself, and two primaries would split the volume.
//
// A standby whose disk failed a datasync refuses every primary until its daemon restarts.
//
// Every refusal is logged with its reason and sent to the caller in a Refuse frame; nothing is
// written to the volume before the handshake is complete.

#include <string>

#include "base/asio.h"
#include "base/buffer_pool.h"
#include "base/endpoint.h"
#include "mirror/metadata.h"
#include "mirror/replica_applier.h"
#include "mirror/write_intent_log.h"
#include "transport/peer_connection.h"

namespace nbdmirror::peer {
class Hello;
}

namespace mirror {

struct PeerListenerOptions {
  std::string node_id;
  std::string peer_node_id;
  std::string secret;
  asio::ssl::context* tls = nullptr;
  transport::LinkTiming timing;
};

class PeerListener {
 public:
  // `applier` is null on a primary. Everything is borrowed.
  PeerListener(asio::io_context& io, PeerListenerOptions options, Superblock& metadata,
               WriteIntentLog& intent_log, base::BufferPool& pool, ReplicaApplier* applier);

  base::Status Listen(const base::Endpoint& endpoint);
  void Stop();
  // Runs the handshake on an authenticated link and, if it succeeds, hands the link to the
  // applier; a refusal is counted, logged and closes the link. Listen's accepted connections
  // come here after authentication; the mirror simulation hands over its own links.
  asio::awaitable<void> Serve(std::shared_ptr<transport::MessageLink> link);
  uint64_t refused_count() const { return refused_count_; }
  // Why the last primary was refused for split brain, being behind, or unrelated data; "" if the
  // last handshake got past that check.
  const std::string& sync_refusal() const { return sync_refusal_; }

 private:
  asio::awaitable<void> AcceptLoop();
  asio::awaitable<void> Handle(asio::ip::tcp::socket socket);
  asio::awaitable<base::Status> Handshake(std::shared_ptr<transport::MessageLink> link);
  // The rest of the handshake, once this link holds it: waits for an earlier link's operations
  // to finish, checks the primary against this copy, answers, and records the plan.
  asio::awaitable<base::Status> AgreeOnPlan(std::shared_ptr<transport::MessageLink> link,
                                            const nbdmirror::peer::Hello& hello);
  // Sends a Refuse frame with `why`; returns the refusal as a Status.
  static asio::awaitable<base::Status> RefuseWith(transport::MessageLink& link, int error,
                                                  std::string why);
  asio::awaitable<base::Status> SendBitmap(transport::MessageLink& link);
  void Refused(transport::MessageLink& link, const base::Status& why);

  asio::io_context& io_;
  PeerListenerOptions options_;
  Superblock& metadata_;
  WriteIntentLog& intent_log_;
  base::BufferPool& pool_;
  ReplicaApplier* applier_;
  asio::ip::tcp::acceptor acceptor_;
  bool stopping_ = false;
  bool handshaking_ = false;
  uint64_t refused_count_ = 0;
  std::string sync_refusal_;
};

}  // namespace mirror
