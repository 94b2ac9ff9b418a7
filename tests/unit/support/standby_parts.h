#pragma once
// Test helper: the parts of a standby below its handshake. An in-memory superblock, a volume
// and a metadata store whose operations complete when the test says (FakeStore), the
// write-intent log on the metadata store, and the applier.

#include <cstdint>
#include <vector>

#include "base/asio.h"
#include "mirror/metadata.h"
#include "mirror/replica_applier.h"
#include "mirror/write_intent_log.h"
#include "tests/sim/memory_superblock.h"
#include "tests/unit/support/fake_store.h"

namespace testing_support {

struct StandbyParts {
  StandbyParts(asio::io_context& io, uint64_t volume_bytes, uint64_t region_bytes)
      : data(io, volume_bytes),
        meta(io, mirror::kBitmapOffsetBytes + mirror::kBitmapPageBytes),
        log(io, &meta, volume_bytes, region_bytes,
            std::vector<uint8_t>(mirror::kBitmapAreaBytes, 0)),
        applier(io, data, superblock, log) {
    md.size_bytes = volume_bytes;
  }

  FakeStore data;
  FakeStore meta;
  mirror::VolumeMetadata md;  // The test's to set up and inspect.
  sim::MemorySuperblock superblock{md};
  mirror::WriteIntentLog log;
  mirror::ReplicaApplier applier;
};

}  // namespace testing_support
