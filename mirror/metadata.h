#pragma once
// Volume metadata: what a node remembers about its copy across restarts and crashes, in a
// sidecar file beside the volume (`--metadata`, default VOLUME.nbdmirror-meta).
//
// Layout of the file (bytes):
//   [0, 4096)      superblock slot 0
//   [4096, 8192)   superblock slot 1
//   [8192, ...)    the write-intent bitmap, in 4 KiB pages
//
// Superblock: "key=value" text lines (readable with `strings`), NUL-padded to 4 KiB, the last
// line a CRC32C over everything before it. An update writes the slot the newest one is not in,
// with seq+1, and fdatasyncs; the other slot stays intact until the new one is durable, so a
// torn update leaves the previous state readable. At start the valid slot with the highest seq
// wins; an invalid slot is reported in the log; with no valid slot the node refuses to start.
//
// Bitmap page: bytes 0-3 a CRC32C (little-endian) over bytes 4-4095, bytes 4-7 the page index,
// then kBitsPerPage bits, one per region of `region_bytes` of the volume (bit i of byte j is
// region 8*j+i of the page). A page that fails its checksum (a bitmap write torn by a power
// loss) is reported and taken as all set: its regions are resynchronised rather than trusted.
//
// Only one process may have the file open: Open and Create take an exclusive flock, held until
// the MetadataFile is destroyed.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "mirror/generations.h"

namespace mirror {

enum class DiskState { kUpToDate, kOutdated, kInconsistent, kFailed };
enum class Role { kPrimary, kSecondary };

const char* DiskStateName(DiskState state);
const char* RoleName(Role role);
std::optional<DiskState> ParseDiskState(const std::string& name);

struct VolumeMetadata {
  std::string volume_uuid;  // 32 hex digits; empty until the volume is first paired or created.
  uint64_t size_bytes = 0;
  std::string node_id;
  DiskState disk = DiskState::kInconsistent;
  DiskState peer_disk = DiskState::kInconsistent;  // Last known state of the peer's copy.
  // A primary records clean=true only at a shutdown with everything drained and the peer in
  // sync; status uses it to tell "peer last seen in sync" from "we crashed".
  bool clean = false;
  Generations gens;
  uint64_t region_bytes = 64 * 1024;  // Write-intent bitmap granularity, fixed at creation.
};

// A secondary's record that its copy follows the primary's generation `gen` and is in state
// `disk` (at a sync plan: Inconsistent until a resync ends, UpToDate if none is needed; at the
// end of a resync: UpToDate). What it held before goes to the history; the copies are shared at
// `gen` and the bitmap is relative to it.
void FollowPrimaryGeneration(VolumeMetadata& md, uint64_t gen, DiskState disk);

std::string NewVolumeUuid();
std::string DefaultMetadataPath(const std::string& volume_path);

inline constexpr uint64_t kSuperblockBytes = 4096;
inline constexpr uint64_t kBitmapOffsetBytes = 2 * kSuperblockBytes;
inline constexpr uint64_t kBitmapPageBytes = 4096;
inline constexpr uint64_t kBitmapPageHeaderBytes = 8;
inline constexpr uint64_t kBitmapAreaBytes = kBitmapPageBytes - kBitmapPageHeaderBytes;
inline constexpr uint64_t kBitsPerPage = kBitmapAreaBytes * 8;

// Regions and pages for a volume.
uint64_t RegionCount(uint64_t size_bytes, uint64_t region_bytes);
uint64_t BitmapPageCount(uint64_t region_count);

// Fills `page` (kBitmapPageBytes) from `bits` (kBitmapAreaBytes) with header and checksum.
void EncodeBitmapPage(uint32_t index, std::span<const uint8_t> bits, std::span<std::byte> page);
// Extracts the bits; false if the checksum or the index does not match.
bool DecodeBitmapPage(uint32_t index, std::span<const std::byte> page, std::span<uint8_t> bits);

// The superblock as the state machines (replicator, applier, listener) read and change it.
// MetadataFile keeps it in the sidecar file; the mirror simulation keeps it in memory.
class Superblock {
 public:
  virtual ~Superblock() = default;
  virtual const VolumeMetadata& get() const = 0;
  // Applies `change` and makes the result durable before returning (synchronous: state changes
  // are rare). On failure the in-memory state still changes and the error is returned so the
  // caller can report a failed metadata disk.
  virtual base::Status Update(const std::function<void(VolumeMetadata&)>& change) = 0;
};

class MetadataFile final : public Superblock {
 public:
  ~MetadataFile() override;
  MetadataFile(const MetadataFile&) = delete;
  MetadataFile& operator=(const MetadataFile&) = delete;

  // Opens an existing file: nullopt if there is none; an error if it is in use, unreadable,
  // truncated, or has no valid superblock.
  static base::Result<std::optional<std::unique_ptr<MetadataFile>>> Open(const std::string& path);
  // Creates a new file (an existing one is an error) with `initial` and an empty bitmap, durably.
  static base::Result<std::unique_ptr<MetadataFile>> Create(const std::string& path,
                                                           const VolumeMetadata& initial);

  const VolumeMetadata& get() const override { return current_; }
  const std::string& path() const { return path_; }
  uint64_t region_count() const { return RegionCount(current_.size_bytes, current_.region_bytes); }
  uint64_t page_count() const { return BitmapPageCount(region_count()); }

  // Writes the next superblock slot: one 4 KiB write and an fdatasync.
  base::Status Update(const std::function<void(VolumeMetadata&)>& change) override {
    VolumeMetadata next = current_;
    change(next);
    current_ = next;
    return WriteSuperblock();
  }

  // The bitmap as loaded: page_count() * kBitmapAreaBytes bytes, pages that failed their
  // checksum all set (`torn_pages` counts them). Read once at start.
  base::Result<std::vector<uint8_t>> ReadBitmap(uint64_t* torn_pages);
  // Writes every bitmap page from `bits` and fdatasyncs (offline tools and tests; the running
  // daemon writes pages through its WriteIntentLog).
  base::Status WriteBitmap(std::span<const uint8_t> bits);

 private:
  MetadataFile(std::string path, int fd, VolumeMetadata md, uint64_t seq);
  base::Status WriteSuperblock();

  std::string path_;
  int fd_ = -1;
  VolumeMetadata current_;
  uint64_t seq_ = 0;  // Of the newest valid superblock.
};

// For tests and tools: the superblock text of `md` with sequence `seq` (checksummed, unpadded).
std::string EncodeSuperblock(const VolumeMetadata& md, uint64_t seq);
// Parses one slot; an error if it is not a valid superblock.
base::Result<std::pair<VolumeMetadata, uint64_t>> DecodeSuperblock(std::span<const std::byte> slot);

}  // namespace mirror
