#pragma once
// WriteIntentLog: the write-intent bitmap of a running node, one bit per region of the volume
// (64 KiB by default), kept in memory and persisted in the metadata file's bitmap pages.
//
// A set bit means: this copy and the peer's may differ in that region. The rules that make the
// bitmap trustworthy after any crash:
//   - Set before write. Mark() sets the bits of a write's regions and calls `ready` only once
//     the pages holding them are durable (written and fdatasynced). Writes whose regions are
//     all marked and durable already go ahead at once, without metadata I/O: a workload on hot
//     regions costs none. Marks that arrive together share one page write and one datasync.
//   - Clear lazily, only when safe. A clean cycle (BeginClean ... FinishClean) is run by the
//     replicator around a flush that made every completed write durable on both copies while
//     the peer was connected; FinishClean clears the marked regions that no write touched since
//     BeginClean (a write in flight at BeginClean counts as touching). A resync block follows
//     the same rule per block: NoteCopied when the peer confirmed the block (copied under its
//     range lock, so the copies were identical there), ClearCopied once a flush on both sides
//     made that copy durable; regions a write touched in between stay marked. Cleared pages
//     are written without waiting; a lost clear only costs a resync.
//   - A failed metadata write or datasync fails the waiting writes and every later Mark (EIO):
//     a write whose intent cannot be recorded must not happen.
//
// Page I/O goes through a LocalStore opened on the metadata file (io_uring in the daemon, a
// fake in tests), at kBitmapOffsetBytes + page * kBitmapPageBytes.
//
// Disabled (`--no-write-intent-bitmap`, for measuring its cost): Mark() is free, nothing is
// tracked, and every resync after an outage is a full one.
//
// Loop thread only. Callbacks come from the loop, never from inside the call that registers
// them.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <map>
#include <memory_resource>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/asio.h"
#include "base/status.h"
#include "mirror/local_store.h"

namespace mirror {

struct IntentLogStats {
  uint64_t marks = 0;            // Mark() calls (client writes).
  uint64_t marks_waited = 0;     // Marks that had to wait for metadata I/O.
  uint64_t page_writes = 0;      // Bitmap pages written.
  uint64_t datasyncs = 0;        // Datasyncs of the metadata file.
  uint64_t cleared_regions = 0;  // Bits cleared by clean cycles and resync.
};

class WriteIntentLog {
 public:
  // `bits` as MetadataFile::ReadBitmap returns them. `meta_store` is borrowed.
  WriteIntentLog(asio::io_context& io, LocalStore* meta_store, uint64_t volume_bytes,
                 uint64_t region_bytes, std::vector<uint8_t> bits, bool enabled = true);

  bool enabled() const { return enabled_; }
  // The metadata store's writes are durable once complete (opened O_DSYNC): a round is one
  // write per page (a FUA write on most disks) with no datasync after it.
  void set_writes_are_durable(bool durable) { writes_are_durable_ = durable; }
  // Mark ahead: when a write needs a new mark anyway, the other regions of the aligned
  // `bytes` around it are marked in the same page write (set by the replicator). A
  // random workload then stops waiting for marks after touching each chunk once instead of
  // each region, at the price of resyncing whole chunks after a crash. Region-sized by default.
  void set_mark_ahead_bytes(uint64_t bytes) {
    mark_ahead_regions_ = std::max<uint64_t>(1, bytes / region_bytes_);
  }
  // Asked at each new mark whether to mark ahead (the replicator: only in mode flush with the
  // peer in sync; see there). Unset: always.
  void set_mark_ahead_allowed(std::function<bool()> allowed) {
    mark_ahead_allowed_ = std::move(allowed);
  }
  uint64_t region_bytes() const { return region_bytes_; }
  uint64_t volume_bytes() const { return volume_bytes_; }

  // Client writes. Returns true if the write may start now (`ready` is then not called).
  // Otherwise `ready` runs once the marks are durable, or with EIO if they cannot be made so.
  bool Mark(uint64_t offset_bytes, uint64_t length_bytes, StoreDone ready);
  // The write that Mark()ed this range has finished, or failed (also when `ready` reported an
  // error): every Mark is paired with one Unmark.
  void Unmark(uint64_t offset_bytes, uint64_t length_bytes);

  // Marks a range without a write behind it (a peer's marked regions, a verify mismatch, the
  // whole volume for a full resync). Persist() makes it durable. The running clean cycle, if
  // any, keeps these regions marked, as if a write had touched them.
  void MarkRange(uint64_t offset_bytes, uint64_t length_bytes);
  void MarkAll();
  void Persist(StoreDone done);

  // Clean cycles (see above). A cycle is invalidated by a later BeginClean or AbortClean.
  uint64_t BeginClean();
  // Whether a client write was marked since the last BeginClean (false: the volume was idle).
  bool WrittenSinceBeginClean() const { return stats_.marks != marks_at_clean_begin_; }
  void AbortClean() { ++clean_cycle_; }
  // Returns the number of regions cleared.
  uint64_t FinishClean(uint64_t cycle);
  // Resync: the regions lying wholly inside the range were just copied to the peer while no
  // write was in flight there (the caller held the range lock until the peer confirmed).
  void NoteCopied(uint64_t offset_bytes, uint64_t length_bytes);
  // Clears the regions wholly inside the range that were NoteCopied and that no write has
  // touched since (none marked, none in flight), and forgets the copies. The caller has made
  // the copy durable on both sides since NoteCopied (a local datasync and a peer Flush that
  // both started after it). Returns the number of regions cleared.
  uint64_t ClearCopied(uint64_t offset_bytes, uint64_t length_bytes);
  // Clears every bit except pinned ones (the peer is now identical) and persists durably.
  void ClearAll(StoreDone done);
  // Keeps the range's regions marked through clean cycles and ClearAll until ClearCopied (a
  // resync block) clears them: a failed local write the peer may have applied.
  void Pin(uint64_t offset_bytes, uint64_t length_bytes);
  uint64_t pinned_regions() const { return pinned_regions_; }

  // The first run of marked regions starting at or after `from_bytes`, at most `max_bytes`
  // long, aligned to regions and clipped to the volume; nullopt if none.
  std::optional<ByteRange> NextMarked(uint64_t from_bytes, uint64_t max_bytes) const;
  // Every run of marked regions (for the handshake).
  std::vector<ByteRange> MarkedRuns() const;

  uint64_t marked_regions() const { return enabled_ ? marked_regions_ : region_count_; }
  uint64_t marked_bytes() const;
  bool failed() const { return !failure_.ok(); }
  const IntentLogStats& stats() const { return stats_; }

 private:
  bool Test(uint64_t region) const { return (bits_[region / 8] >> (region % 8)) & 1; }
  // Sets the bit; true if it was clear.
  bool Set(uint64_t region);
  void Clear(uint64_t region);
  void SchedulePage(uint64_t page);
  void StartRound();
  void OnRoundWritten(base::Status status);
  void OnRoundSynced(base::Status status);
  void Fail(base::Status status);
  std::pair<uint64_t, uint64_t> Regions(uint64_t offset_bytes, uint64_t length_bytes) const;
  // Only the regions lying wholly inside the range (one it merely overlaps may hold more).
  std::pair<uint64_t, uint64_t> WholeRegions(uint64_t offset_bytes, uint64_t length_bytes) const;

  asio::io_context& io_;
  LocalStore* meta_store_;
  const uint64_t volume_bytes_;
  const uint64_t region_bytes_;
  const uint64_t region_count_;
  const bool enabled_;
  bool writes_are_durable_ = false;
  uint64_t mark_ahead_regions_ = 1;
  std::function<bool()> mark_ahead_allowed_;
  std::vector<uint8_t> bits_;     // Page bit areas, concatenated.
  std::vector<uint8_t> touched_;  // Same shape: written since the current clean cycle began.
  std::vector<uint8_t> pinned_;   // Same shape: see Pin().
  std::vector<uint8_t> copied_;   // Same shape: NoteCopied and not written since.
  // Same shape, bits set but not yet durable: `unsynced_` for the next round, `in_round_` for
  // the running one. A write into a region whose bit is durable goes ahead at once, even while
  // other regions of its page wait for a round.
  std::vector<uint8_t> unsynced_;
  std::vector<uint8_t> in_round_;
  uint64_t pinned_regions_ = 0;
  uint64_t marked_regions_ = 0;
  // Region -> writes in flight. Its nodes come from a pool that keeps freed nodes for reuse:
  // once the map has held as many regions as the workload keeps in flight, Mark/Unmark do not
  // allocate (this is on every client write's path).
  std::pmr::unsynchronized_pool_resource in_flight_pool_;
  std::pmr::unordered_map<uint64_t, uint32_t> in_flight_{&in_flight_pool_};

  // Persistence in rounds: a round writes every scheduled page, then fdatasyncs. Round r's
  // waiters run when it completes.
  std::set<uint64_t> scheduled_pages_;             // For the next round.
  std::map<uint64_t, std::vector<StoreDone>> waiters_;  // By round.
  uint64_t rounds_started_ = 0;
  uint64_t durable_round_ = 0;
  bool round_running_ = false;
  size_t round_writes_left_ = 0;
  base::Status round_status_;
  struct FreeDeleter {
    void operator()(std::byte* p) const { std::free(p); }
  };
  // 4 KiB-aligned page images of the running round (O_DIRECT), kept until it completes.
  std::vector<std::unique_ptr<std::byte, FreeDeleter>> round_pages_;
  std::vector<uint64_t> round_page_indices_;  // The pages the running round writes.

  uint64_t clean_cycle_ = 0;
  uint64_t marks_at_clean_begin_ = 0;
  base::Status failure_;
  IntentLogStats stats_;
};

}  // namespace mirror
