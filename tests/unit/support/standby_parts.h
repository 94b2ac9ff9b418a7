#pragma once
// Test helper: the parts of a standby below its handshake. An in-memory superblock, a volume
// and a metadata store whose operations complete when the test says (FakeStore), the
// write-intent log on the metadata store, and the applier.

#include <cstdint>
#include <functional>
#include <vector>

#include "base/asio.h"
#include "mirror/metadata.h"
#include "mirror/replica_applier.h"
#include "mirror/write_intent_log.h"
#include "tests/unit/support/fake_store.h"

namespace testing_support {

// Durable as soon as it is updated; `md` is the test's to set up and inspect.
class MemorySuperblock final : public mirror::Superblock {
 public:
  const mirror::VolumeMetadata& get() const override { return md; }
  base::Status Update(const std::function<void(mirror::VolumeMetadata&)>& change) override {
    change(md);
    return base::Status::Ok();
  }
  mirror::VolumeMetadata md;
};

struct StandbyParts {
  StandbyParts(asio::io_context& io, uint64_t volume_bytes, uint64_t region_bytes)
      : data(io, volume_bytes),
        meta(io, mirror::kBitmapOffsetBytes + mirror::kBitmapPageBytes),
        log(io, &meta, volume_bytes, region_bytes,
            std::vector<uint8_t>(mirror::kBitmapAreaBytes, 0)),
        applier(io, data, superblock, log) {
    superblock.md.size_bytes = volume_bytes;
  }

  FakeStore data;
  FakeStore meta;
  MemorySuperblock superblock;
  mirror::WriteIntentLog log;
  mirror::ReplicaApplier applier;
};

}  // namespace testing_support
