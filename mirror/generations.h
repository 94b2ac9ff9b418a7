#pragma once
// Generations: how two copies of one volume tell, when they meet, which holds what.
//
// Each copy keeps three kinds of generation identifier (random 64-bit values; 0 means none):
//   current  the data generation of this copy. A primary mints a new one at its first write
//            without the peer (and at start without a configured peer), so two copies with the
//            same `current` have seen exactly the same acknowledged writes.
//   bitmap   the generation the write-intent bitmap is relative to: every region where this copy
//            may differ from a copy whose `current` equals it is marked in the bitmap. While
//            the pair is connected and in sync, bitmap == current.
//   history  older `current` values, newest first, at most kHistoryLength.
//
// When the primary P connects to the secondary S, DecideSync compares them:
//   S.current == 0               S was never synchronised: full resync.
//   S.current == P.current       same writes; resync whatever either bitmap marks (a crash
//                                leaves in-flight regions marked), or nothing.
//   S.current == P.bitmap        P wrote without S since they parted: incremental resync of
//                                P's marked regions (plus any S marked itself).
//   S.bitmap == P.current        S wrote without P (it was promoted) and P did not: S holds
//                                acknowledged writes P lacks. Refused.
//   P.bitmap == S.bitmap         both wrote without the other: split brain. Refused.
//   S.current in P.history       S is several generations behind and P's bitmap does not reach
//                                back that far: full resync.
//   otherwise related            some shared history but both moved on: split brain. Refused.
//   nothing shared               unrelated data. Refused.
// A refusal is never resolved silently: the operator names the copy whose changes are discarded
// (`nbdmirror discard-changes`), which rolls that copy's `current` back to its bitmap base.
//
// Pure logic; no I/O.

#include <cstdint>
#include <string>
#include <vector>

namespace mirror {

struct Generations {
  static constexpr size_t kHistoryLength = 8;
  uint64_t current = 0;
  uint64_t bitmap = 0;
  std::vector<uint64_t> history;  // Newest first.
  // The peer may hold `current`: it was agreed at a handshake, sent in a ResyncDone, or (on a
  // secondary) received from the primary. Writing without the peer must then mint a new one
  // first; otherwise (minted already and never shown to the peer) it need not, however many
  // outages and restarts come in between, which keeps the shared generation in history.
  bool current_shared = false;

  bool operator==(const Generations&) const = default;
};

// A fresh random non-zero identifier.
uint64_t NewGeneration();

// Before the first write without the peer while `current_shared`: moves `current` into history
// and mints a new one, not shared. (Even if this copy had diverged from its bitmap base already:
// the peer may have adopted `current` at a ResyncDone whose acknowledgement was lost, and
// writes it lacks must not be made under a generation it holds.) The bitmap base stays.
void DivergeFromPeer(Generations& gens);

// Pushes `gen` to the front of history (if non-zero and not already there), keeping the newest
// kHistoryLength.
void RememberGeneration(Generations& gens, uint64_t gen);

enum class SyncKind {
  kNone,         // Copies identical: mirror from now on.
  kIncremental,  // Resync the marked regions.
  kFull,         // Resync the whole volume.
  kPeerAhead,    // The secondary holds writes the primary lacks: refused.
  kSplitBrain,   // Both wrote without the other: refused.
  kUnrelated,    // No shared generation: refused.
};

const char* SyncKindName(SyncKind kind);
bool IsRefusal(SyncKind kind);

struct SyncDecision {
  SyncKind kind = SyncKind::kUnrelated;
  std::string reason;  // One sentence for logs, status and the Refuse message.
};

// `secondary_up_to_date`: S's disk state is UpToDate. `any_marked`: either side's bitmap marks
// at least one region.
SyncDecision DecideSync(const Generations& primary, const Generations& secondary,
                        bool secondary_up_to_date, bool any_marked);

// "0x1234abcd..." for logs and status.
std::string GenerationText(uint64_t gen);

}  // namespace mirror
