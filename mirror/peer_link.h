#pragma once
// PeerLink: how the Volume reaches the other copy. The Replicator implements it over the
// network; tests implement it with fakes.
//
// Every call is made on the loop thread and calls `done` exactly once, later, from the loop:
//   kConfirmed  the peer applied the operation (and, if `durable`, made it durable)
//   kDegraded   the peer is not there, and the failure policy lets the write complete without
//               it; the link has already recorded (durably) that the peer's copy is outdated.
//   kAborted    the peer is not there, the policy is `block`, and the daemon is shutting down:
//               the operation must fail rather than be acknowledged without the peer.
//   kUnrecorded the peer is not there and the link could not record durably that its copy is
//               outdated (the metadata write failed): the operation must fail (EIO).
// Under the `block` policy a link never answers kDegraded: it holds `done` until the peer is
// back and has the operation.
//
// Buffers are borrowed until `done` runs.

#include <cstdint>
#include <functional>
#include <span>

#include "base/callback.h"
#include "nbd-server/block_device.h"

namespace mirror {

enum class PeerOutcome { kConfirmed, kDegraded, kAborted, kUnrecorded };
using PeerDone = base::Callback<void(PeerOutcome)>;

class PeerLink {
 public:
  virtual ~PeerLink() = default;
  virtual void ReplicateWrite(uint64_t offset_bytes, std::span<const std::byte> data,
                              bool durable, PeerDone done) = 0;
  virtual void ReplicateZero(uint64_t offset_bytes, uint64_t length_bytes,
                             nbd::ZeroOptions options, bool discard, bool durable,
                             PeerDone done) = 0;
  virtual void ReplicateFlush(PeerDone done) = 0;
  // A local write failed after it was fanned out: the peer may hold data this copy does not.
  // The volume has pinned the write's regions in the intent log; the link resynchronises them
  // when it can.
  virtual void OnLocalWriteFailed() {}
};

}  // namespace mirror
