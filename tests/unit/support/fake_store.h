#pragma once
// FakeStore: an in-memory LocalStore whose operations complete only when the test says so.
//
// Writes land in `data()` when they complete. A datasync snapshots `data()` at submission (what
// it covers) and, when completed, publishes that snapshot as `durable()`: exactly the contract
// of a real fdatasync. A write-through lands in both `data()` and `durable()` when it completes
// (a datasync completing after it keeps it there). Tests hold operations back to create the
// orderings they want to check.

#include <cstring>
#include <deque>
#include <functional>
#include <utility>
#include <vector>

#include "base/asio.h"
#include "mirror/local_store.h"

namespace testing_support {

class FakeStore final : public mirror::LocalStore {
 public:
  enum class Kind { kRead, kWrite, kWriteThrough, kDatasync, kZero };
  struct Pending {
    Kind kind;
    uint64_t offset_bytes;
    uint64_t length_bytes;
    std::function<base::Status()> apply;  // Runs at completion; its Status is reported.
    mirror::StoreDone done;
  };

  FakeStore(asio::io_context& io, uint64_t size_bytes)
      : io_(io), data_(size_bytes), durable_(size_bytes) {}

  uint64_t size_bytes() const override { return data_.size(); }
  std::string Describe() const override { return "fake store"; }

  base::Status Read(uint64_t offset, std::span<std::byte> out, mirror::StoreDone done) override {
    Push(Kind::kRead, offset, out.size(), [this, offset, out] {
      std::memcpy(out.data(), data_.data() + offset, out.size());
      return base::Status::Ok();
    }, std::move(done));
    return base::Status::Ok();
  }
  base::Status Write(uint64_t offset, std::span<const std::byte> in,
                     mirror::StoreDone done) override {
    std::vector<std::byte> copy(in.begin(), in.end());
    Push(Kind::kWrite, offset, in.size(), [this, offset, copy] {
      std::memcpy(data_.data() + offset, copy.data(), copy.size());
      return base::Status::Ok();
    }, std::move(done));
    return base::Status::Ok();
  }
  base::Status WriteThrough(uint64_t offset, std::span<const std::byte> in,
                            mirror::StoreDone done) override {
    std::vector<std::byte> copy(in.begin(), in.end());
    Push(
        Kind::kWriteThrough, offset, in.size(),
        [this, offset, copy] {
          std::memcpy(data_.data() + offset, copy.data(), copy.size());
          if (fail_datasync_) {
            return base::Status::Error(EIO, "fake write-through failure (its flush)");
          }
          std::memcpy(durable_.data() + offset, copy.data(), copy.size());
          written_through_.push_back({offset, copy});
          return base::Status::Ok();
        },
        std::move(done));
    return base::Status::Ok();
  }
  base::Status Datasync(mirror::StoreDone done) override {
    ++datasyncs_submitted_;
    auto snapshot = data_;
    const size_t through_before = written_through_.size();
    Push(
        Kind::kDatasync, 0, 0,
        [this, snapshot, through_before] {
          if (fail_datasync_) {
            return base::Status::Error(EIO, "fake datasync failure");
          }
          durable_ = snapshot;
          // Write-throughs completed since the snapshot are durable already, and newer.
          for (size_t i = through_before; i < written_through_.size(); ++i) {
            const auto& [offset, bytes] = written_through_[i];
            std::memcpy(durable_.data() + offset, bytes.data(), bytes.size());
          }
          return base::Status::Ok();
        },
        std::move(done));
    return base::Status::Ok();
  }
  base::Status Discard(uint64_t offset, uint64_t length, mirror::StoreDone done) override {
    return ZeroRange(offset, length, {}, std::move(done));
  }
  base::Status ZeroRange(uint64_t offset, uint64_t length, nbd::ZeroOptions,
                         mirror::StoreDone done) override {
    Push(Kind::kZero, offset, length, [this, offset, length] {
      std::memset(data_.data() + offset, 0, length);
      return base::Status::Ok();
    }, std::move(done));
    return base::Status::Ok();
  }
  base::Status Prefetch(uint64_t, uint64_t, mirror::StoreDone done) override {
    asio::post(io_, [done = std::move(done)] { done(base::Status::Ok()); });
    return base::Status::Ok();
  }
  base::Result<std::vector<nbd::Extent>> Allocation(uint64_t, uint64_t length) override {
    return std::vector<nbd::Extent>{{length, false}};
  }
  // Like UringStore beside O_DIRECT once set_footprint_block(B): a request not aligned to 512
  // bytes rewrites the whole B-byte blocks around it.
  mirror::ByteRange Footprint(uint64_t offset, uint64_t length) const override {
    if (footprint_block_ == 0 || ((offset | length) & 511) == 0) {
      return {offset, length};
    }
    const uint64_t begin = offset / footprint_block_ * footprint_block_;
    const uint64_t end =
        (offset + length + footprint_block_ - 1) / footprint_block_ * footprint_block_;
    return {begin, end - begin};
  }
  void set_footprint_block(uint64_t bytes) { footprint_block_ = bytes; }

  // Completes the oldest pending operation of any kind (or of `kind`). False if none.
  bool CompleteOldest() { return CompleteAt(0); }
  bool CompleteOldestOf(Kind kind) {
    for (size_t i = 0; i < pending_.size(); ++i) {
      if (pending_[i].kind == kind) {
        return CompleteAt(i);
      }
    }
    return false;
  }
  void CompleteAll() {
    while (CompleteOldest()) {
    }
  }
  // Fails the oldest pending operation (of `kind`) with `errno_value` without applying it.
  bool FailOldest(int errno_value) { return FailAt(0, errno_value); }
  bool FailOldestOf(Kind kind, int errno_value) {
    for (size_t i = 0; i < pending_.size(); ++i) {
      if (pending_[i].kind == kind) {
        return FailAt(i, errno_value);
      }
    }
    return false;
  }

  size_t pending_count() const { return pending_.size(); }
  size_t pending_count(Kind kind) const {
    size_t n = 0;
    for (const auto& p : pending_) {
      n += p.kind == kind ? 1 : 0;
    }
    return n;
  }
  int datasyncs_submitted() const { return datasyncs_submitted_; }
  void set_fail_datasync(bool fail) { fail_datasync_ = fail; }
  const std::vector<std::byte>& data() const { return data_; }
  const std::vector<std::byte>& durable() const { return durable_; }

 private:
  void Push(Kind kind, uint64_t offset, uint64_t length, std::function<base::Status()> apply,
            mirror::StoreDone done) {
    pending_.push_back({kind, offset, length, std::move(apply), std::move(done)});
  }
  bool FailAt(size_t i, int errno_value) {
    if (i >= pending_.size()) {
      return false;
    }
    Pending p = std::move(pending_[i]);
    pending_.erase(pending_.begin() + static_cast<long>(i));
    p.done(base::Status::Error(errno_value, "fake failure"));
    return true;
  }
  bool CompleteAt(size_t i) {
    if (i >= pending_.size()) {
      return false;
    }
    Pending p = std::move(pending_[i]);
    pending_.erase(pending_.begin() + static_cast<long>(i));
    p.done(p.apply());
    return true;
  }

  asio::io_context& io_;
  std::vector<std::byte> data_;
  std::vector<std::byte> durable_;
  std::deque<Pending> pending_;
  int datasyncs_submitted_ = 0;
  bool fail_datasync_ = false;  // Datasyncs fail, and so do write-throughs (their flush).
  uint64_t footprint_block_ = 0;
  std::vector<std::pair<uint64_t, std::vector<std::byte>>> written_through_;
};

}  // namespace testing_support
