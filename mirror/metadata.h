#pragma once
// VolumeMetadata: what a node remembers about its copy across restarts, in a small sidecar file
// beside the volume (`--metadata`, default VOLUME.nbdmirror-meta).
//
// The file is text ("key=value" lines) ending in a CRC32C line over everything before it. It
// is replaced atomically: written to a temporary file, fdatasynced, renamed over the old one,
// and the directory fsynced. A torn or corrupt file fails the CRC and is refused at start;
// it is never silently taken for a fresh volume.
//
// The crash rule for a primary with a peer: while it runs, the file says clean=false. Only a
// clean shutdown (every write drained and durable on both sides) writes clean=true with the
// peer's state. After a crash, clean=false means the copies may differ and the peer is fully
// resynchronised. (The write-intent bitmap will narrow this to the dirty regions.)

#include <cstdint>
#include <optional>
#include <string>

#include "base/status.h"

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
  bool clean = false;  // See the crash rule above.
};

std::string NewVolumeUuid();
std::string DefaultMetadataPath(const std::string& volume_path);

// Loads the file: nullopt if it does not exist, an error if it is unreadable or corrupt.
base::Result<std::optional<VolumeMetadata>> LoadMetadata(const std::string& path);
// Durably replaces the file.
base::Status SaveMetadata(const std::string& path, const VolumeMetadata& metadata);

}  // namespace mirror

namespace mirror {

// The metadata file of one running node: the current values plus durable updates.
class MetadataFile {
 public:
  MetadataFile(std::string path, VolumeMetadata initial)
      : path_(std::move(path)), current_(std::move(initial)) {}

  const VolumeMetadata& get() const { return current_; }
  // Applies `change` and saves durably (synchronous: a few small writes and two fsyncs, only
  // at state changes). On failure the in-memory state still changes, and the error is
  // returned so the caller can report a failed metadata disk.
  template <typename Change>
  base::Status Update(Change change) {
    VolumeMetadata next = current_;
    change(next);
    current_ = next;
    return SaveMetadata(path_, current_);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  VolumeMetadata current_;
};

}  // namespace mirror
