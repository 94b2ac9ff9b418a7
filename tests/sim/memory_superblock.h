#pragma once
// MemorySuperblock: a host's superblock in memory for the simulation, the peer fuzzer and unit
// tests. Durable as soon as it is updated, as MetadataFile::Update is a synchronous write and
// fdatasync of a double-buffered slot. The metadata it updates belongs to the caller and outlives
// it (the simulation keeps a host's metadata across restarts of its daemon). It can be made to
// fail like a failed metadata disk: the change stays in memory and Update returns EIO, as the
// Superblock contract says.

#include <cerrno>
#include <functional>

#include "base/status.h"
#include "mirror/metadata.h"

namespace sim {

class MemorySuperblock final : public mirror::Superblock {
 public:
  explicit MemorySuperblock(mirror::VolumeMetadata& md) : md_(md) {}
  const mirror::VolumeMetadata& get() const override { return md_; }
  base::Status Update(const std::function<void(mirror::VolumeMetadata&)>& change) override {
    change(md_);
    if (updates_left_ == 0) {
      return base::Status::Error(EIO, "injected superblock EIO");
    }
    if (updates_left_ > 0) {
      --updates_left_;
    }
    return base::Status::Ok();
  }
  // Every update from the one after `updates` more fails; -1: none does (the default).
  void FailAfter(int updates) { updates_left_ = updates; }

 private:
  mirror::VolumeMetadata& md_;
  int updates_left_ = -1;
};

}  // namespace sim
