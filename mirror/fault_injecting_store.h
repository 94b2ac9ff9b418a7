#pragma once
// FaultInjectingStore: a LocalStore wrapper that fails chosen operations with EIO, as a dying
// disk would. Used by tests (in-process, and through `nbdmirror run --fault ...`) to prove that
// a disk error reaches the client as EIO while other requests and connections carry on.
//
// A rule is "read:OFFSET:LENGTH", "write:OFFSET:LENGTH" (any operation of that kind touching
// the byte range fails; WRITE also covers zeroing and discard) or "datasync" (every datasync
// fails, and so does every write-through, which flushes as a datasync does). Failures are
// reported through the callback, later, like a real I/O error.

#include <memory>
#include <string>
#include <vector>

#include "base/asio.h"
#include "base/status.h"
#include "mirror/local_store.h"

namespace mirror {

struct FaultRule {
  enum class Kind { kRead, kWrite, kDatasync } kind = Kind::kRead;
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
};

base::Result<FaultRule> ParseFaultRule(const std::string& text);

class FaultInjectingStore final : public LocalStore {
 public:
  // `inner` is borrowed and must outlive this wrapper.
  FaultInjectingStore(asio::io_context& io, LocalStore& inner, std::vector<FaultRule> rules);

  uint64_t size_bytes() const override { return inner_.size_bytes(); }
  std::string Describe() const override;
  base::Status Read(uint64_t offset_bytes, std::span<std::byte> out, StoreDone done) override;
  base::Status Write(uint64_t offset_bytes, std::span<const std::byte> data,
                     StoreDone done) override;
  base::Status WriteThrough(uint64_t offset_bytes, std::span<const std::byte> data,
                            StoreDone done) override;
  base::Status Datasync(StoreDone done) override;
  base::Status Discard(uint64_t offset_bytes, uint64_t length_bytes, StoreDone done) override;
  base::Status ZeroRange(uint64_t offset_bytes, uint64_t length_bytes, nbd::ZeroOptions options,
                         StoreDone done) override;
  base::Status Prefetch(uint64_t offset_bytes, uint64_t length_bytes, StoreDone done) override;
  base::Result<std::vector<nbd::Extent>> Allocation(uint64_t offset_bytes,
                                                    uint64_t length_bytes) override;
  ByteRange Footprint(uint64_t offset_bytes, uint64_t length_bytes) const override {
    return inner_.Footprint(offset_bytes, length_bytes);
  }

  uint64_t injected_count() const { return injected_count_; }

 private:
  bool Hits(FaultRule::Kind kind, uint64_t offset_bytes, uint64_t length_bytes) const;
  base::Status Fail(const char* what, uint64_t offset_bytes, StoreDone done);

  asio::io_context& io_;
  LocalStore& inner_;
  std::vector<FaultRule> rules_;
  uint64_t injected_count_ = 0;
};

}  // namespace mirror
