#pragma once
// Verifier: online comparison of the two copies (`nbdmirror verify`), while clients keep
// writing.
//
// It walks the volume in blocks (1 MiB, a few in flight). For each block it takes the volume's
// range lock, so no client write to the range is in flight on either side (a write is replied
// to only after the peer applied it); reads the block locally and hashes it (SHA-256); asks the
// peer for the digest of the same range (only the 32-byte digest crosses the wire); compares;
// and releases the lock. A block whose digests differ is marked in the write-intent log. When
// the walk ends the marks are persisted and `finished` runs; the caller then resynchronises the
// marked regions.
//
// Owned by shared_ptr. Loop thread only. Cancel() (or a lost link: the request answers other
// than kConfirmed) ends the walk early with `error` set.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/buffer_pool.h"
#include "mirror/peer_link.h"
#include "mirror/volume.h"
#include "mirror/write_intent_log.h"

namespace mirror {

struct VerifyProgress {
  bool running = false;
  bool finished = false;
  uint64_t total_bytes = 0;
  uint64_t done_bytes = 0;
  uint64_t differing_bytes = 0;
  std::vector<ByteRange> differing;  // The first kMaxReportedRanges, merged where adjacent.
  std::string error;                 // Why it stopped early; empty if it completed.
};

class Verifier : public std::enable_shared_from_this<Verifier> {
 public:
  static constexpr uint64_t kBlockBytes = 1 << 20;
  static constexpr int kMaxInFlight = 4;
  static constexpr size_t kMaxReportedRanges = 64;

  using DigestDone = std::function<void(PeerOutcome, const std::string& digest)>;
  using RequestDigest = std::function<void(uint64_t offset_bytes, uint64_t length_bytes,
                                           DigestDone done)>;
  using Finished = std::function<void(const VerifyProgress&)>;

  // `block_bytes`: kBlockBytes but in the simulation (at most transport::kMaxDigestRangeBytes).
  Verifier(Volume& volume, WriteIntentLog& intent_log, base::BufferPool& pool,
           RequestDigest request_digest, uint64_t block_bytes = kBlockBytes);

  void Start(Finished finished);
  void Cancel(const std::string& why);
  const VerifyProgress& progress() const { return progress_; }

 private:
  void Pump();
  void ResumeAfterBuffer();
  void CheckBlock(uint64_t offset_bytes, uint64_t length_bytes, InflightRanges::Ticket ticket);
  void OnBlockDone(InflightRanges::Ticket ticket, uint64_t offset_bytes, uint64_t length_bytes,
                   bool differs, const std::string& error);
  void RecordDifference(uint64_t offset_bytes, uint64_t length_bytes);
  void MaybeFinish();

  Volume& volume_;
  WriteIntentLog& intent_log_;
  base::BufferPool& pool_;
  RequestDigest request_digest_;
  const uint64_t block_bytes_;
  Finished finished_;
  VerifyProgress progress_;
  uint64_t next_offset_ = 0;
  int in_flight_ = 0;
  bool waiting_for_buffer_ = false;
  bool persisting_ = false;
};

}  // namespace mirror
