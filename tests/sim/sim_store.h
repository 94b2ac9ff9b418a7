#pragma once
// SimStore: an in-memory LocalStore with a volatile cache, for the deterministic simulation.
//
// Operations complete only when the simulation says so, in any order it picks
// (CompleteAt(random index)). A completed write is visible to later reads (`data()`) but sits in
// a volatile cache until a Datasync covers it: a Datasync covers exactly the writes that
// completed before it was submitted, and when it completes they reach `durable()`. Crash()
// models a power loss: every write not covered by a completed datasync, completed or still in
// flight, independently survives whole, survives torn (a random subset of its 512-byte
// sectors), or is lost; the cache is then reset to what survived and every pending operation
// vanishes without a callback (its owner died with the process).
//
// Fault injection: with `write_eio_per_mille` a completing Write/ZeroRange/Discard fails with
// EIO after a random subset of its sectors landed in the cache (what a failed write leaves is
// unknown). With `datasync_eio_per_mille` a completing Datasync fails with EIO and makes nothing
// durable: the writes it covered stay in the cache only, for a crash to take or keep (the
// owner's GroupCommit then fails that disk for good, until its process restarts).
//
// A WriteThrough that completes is durable at once, as RWF_DSYNC promises, and nothing else
// becomes durable with it: older cached writes it overlaps take its bytes there (a crash or a
// datasync can no longer bring back what it overwrote). It fails as a write does (some sectors
// landed, in the cache only) with `write_eio_per_mille`, or as its flush does (all of it in the
// cache only) with `datasync_eio_per_mille`.
//
// Allocation reports a range as a hole when it reads as zeroes, so Resync's Zero path runs.
//
// Nothing here touches the io_context: completions run when the simulation calls CompleteAt(),
// which is always from the sim loop and never from inside a submit call, as LocalStore requires.

#include <algorithm>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "base/check.h"
#include "mirror/local_store.h"

namespace sim {

// memcpy for counts that may be 0: a 0-byte operation's empty buffer has a null data(), and
// memcpy from null is undefined even for 0 bytes.
inline void CopyBytes(void* to, const void* from, size_t bytes) {
  if (bytes > 0) {
    std::memcpy(to, from, bytes);
  }
}

class SimStore final : public mirror::LocalStore {
 public:
  static constexpr uint64_t kSectorBytes = 512;
  enum class Kind { kRead, kWrite, kWriteThrough, kDatasync };

  SimStore(std::string name, uint64_t size_bytes)
      : name_(std::move(name)), data_(size_bytes), durable_(size_bytes) {}

  uint64_t size_bytes() const override { return data_.size(); }
  std::string Describe() const override { return name_; }

  base::Status Read(uint64_t offset, std::span<std::byte> out, mirror::StoreDone done) override {
    if (!InRange(offset, out.size())) {
      return base::Status::Error(EINVAL, name_ + ": read past the end");
    }
    Op op{Kind::kRead, offset, {}, std::move(done), 0};
    op.out = out;
    pending_.push_back(std::move(op));
    return base::Status::Ok();
  }
  base::Status Write(uint64_t offset, std::span<const std::byte> in,
                     mirror::StoreDone done) override {
    if (!InRange(offset, in.size())) {
      return base::Status::Error(EINVAL, name_ + ": write past the end");
    }
    pending_.push_back(
        {Kind::kWrite, offset, std::vector<std::byte>(in.begin(), in.end()), std::move(done), 0});
    return base::Status::Ok();
  }
  base::Status WriteThrough(uint64_t offset, std::span<const std::byte> in,
                            mirror::StoreDone done) override {
    if (!InRange(offset, in.size())) {
      return base::Status::Error(EINVAL, name_ + ": write-through past the end");
    }
    pending_.push_back({Kind::kWriteThrough, offset, std::vector<std::byte>(in.begin(), in.end()),
                        std::move(done), 0});
    return base::Status::Ok();
  }
  base::Status Datasync(mirror::StoreDone done) override {
    // Covers every write completed so far, i.e. the first `completed_writes_` of the cache log.
    pending_.push_back({Kind::kDatasync, 0, {}, std::move(done), completed_writes_});
    return base::Status::Ok();
  }
  base::Status Discard(uint64_t offset, uint64_t length, mirror::StoreDone done) override {
    return ZeroRange(offset, length, {}, std::move(done));
  }
  base::Status ZeroRange(uint64_t offset, uint64_t length, nbd::ZeroOptions,
                         mirror::StoreDone done) override {
    if (!InRange(offset, length)) {
      return base::Status::Error(EINVAL, name_ + ": zero past the end");
    }
    pending_.push_back({Kind::kWrite, offset, std::vector<std::byte>(length), std::move(done), 0});
    return base::Status::Ok();
  }
  base::Status Prefetch(uint64_t, uint64_t, mirror::StoreDone done) override {
    return base::Status::Error(EOPNOTSUPP, "the simulation does not prefetch");
  }
  // A range reads as a hole when it reads as zeroes: the content is the same either way, and
  // it sends Resync down its Zero path for trimmed and never-written ranges.
  base::Result<std::vector<nbd::Extent>> Allocation(uint64_t offset, uint64_t length) override {
    if (!InRange(offset, length)) {
      return base::Status::Error(EINVAL, name_ + ": allocation past the end");
    }
    const bool zero = std::all_of(data_.begin() + static_cast<long>(offset),
                                  data_.begin() + static_cast<long>(offset + length),
                                  [](std::byte b) { return b == std::byte{0}; });
    return std::vector<nbd::Extent>{{length, zero}};
  }

  size_t pending_count() const { return pending_.size(); }
  Kind pending_kind(size_t i) const { return pending_[i].kind; }
  void set_write_eio_per_mille(int per_mille) { write_eio_per_mille_ = per_mille; }
  void set_datasync_eio_per_mille(int per_mille) { datasync_eio_per_mille_ = per_mille; }
  // Whether a failed write may leave some of its sectors behind (default) or none.
  void set_eio_lands_sectors(bool lands) { eio_lands_sectors_ = lands; }

  // Completes pending operation `i` (its callback runs now). Returns a line for the trace.
  std::string CompleteAt(size_t i, std::mt19937_64& rng) {
    Op op = std::move(pending_[i]);
    pending_.erase(pending_.begin() + static_cast<long>(i));
    switch (op.kind) {
      case Kind::kRead:
        CopyBytes(op.out.data(), data_.data() + op.offset, op.out.size());
        op.done(base::Status::Ok());
        return name_ + " read " + Range(op.offset, op.out.size());
      case Kind::kWriteThrough:
        if (datasync_eio_per_mille_ > 0 &&
            static_cast<int>(rng() % 1000) < datasync_eio_per_mille_) {
          // The write landed; its flush failed.
          CopyBytes(data_.data() + op.offset, op.data.data(), op.data.size());
          log_.push_back({op.offset, op.data});
          ++completed_writes_;
          op.done(base::Status::Error(EIO, name_ + ": injected write-through flush EIO"));
          return name_ + " write-through " + Range(op.offset, op.data.size()) + " flush EIO";
        }
        [[fallthrough]];
      case Kind::kWrite: {
        const bool through = op.kind == Kind::kWriteThrough;
        const std::string what = through ? " write-through " : " write ";
        if (write_eio_per_mille_ > 0 && static_cast<int>(rng() % 1000) < write_eio_per_mille_) {
          // What a failed write leaves behind is unknown: some of its sectors may have landed
          // (in the cache, like any completed write, until a datasync or a crash).
          int landed = 0;
          for (uint64_t s = 0; eio_lands_sectors_ && s < op.data.size(); s += kSectorBytes) {
            if (rng() % 2 == 0) {
              const uint64_t n = std::min<uint64_t>(kSectorBytes, op.data.size() - s);
              std::vector<std::byte> sector(op.data.begin() + static_cast<long>(s),
                                            op.data.begin() + static_cast<long>(s + n));
              CopyBytes(data_.data() + op.offset + s, sector.data(), n);
              log_.push_back({op.offset + s, std::move(sector)});
              ++completed_writes_;
              ++landed;
            }
          }
          op.done(base::Status::Error(EIO, name_ + ": injected EIO"));
          return name_ + what + Range(op.offset, op.data.size()) + " EIO (" +
                 std::to_string(landed) + " sectors landed)";
        }
        CopyBytes(data_.data() + op.offset, op.data.data(), op.data.size());
        if (through) {
          CopyBytes(durable_.data() + op.offset, op.data.data(), op.data.size());
          OverwriteInLog(op.offset, op.data);
        } else {
          log_.push_back({op.offset, op.data});
          ++completed_writes_;
        }
        op.done(base::Status::Ok());
        return name_ + what + Range(op.offset, op.data.size());
      }
      case Kind::kDatasync: {
        if (datasync_eio_per_mille_ > 0 &&
            static_cast<int>(rng() % 1000) < datasync_eio_per_mille_) {
          op.done(base::Status::Error(EIO, name_ + ": injected datasync EIO"));
          return name_ + " datasync EIO";
        }
        // The covered writes are the oldest entries of the log still there.
        const uint64_t covered = op.covers - synced_writes_;
        if (op.covers > synced_writes_) {
          for (uint64_t k = 0; k < covered; ++k) {
            CopyBytes(durable_.data() + log_[k].offset, log_[k].data.data(), log_[k].data.size());
          }
          log_.erase(log_.begin(), log_.begin() + static_cast<long>(covered));
          synced_writes_ = op.covers;
        }
        op.done(base::Status::Ok());
        return name_ + " datasync";
      }
    }
    return "?";
  }

  // Power loss (see the file comment). Returns a line for the trace.
  std::string Crash(std::mt19937_64& rng) {
    int kept = 0;
    int torn = 0;
    auto survive = [&](uint64_t offset, const std::vector<std::byte>& bytes) {
      const uint64_t pick = rng() % 3;
      if (pick == 0) {
        return;
      }
      Apply(durable_, offset, bytes, rng, /*torn=*/pick == 2);
      (pick == 2 ? torn : kept) += 1;
    };
    for (const auto& w : log_) {
      survive(w.offset, w.data);
    }
    for (const auto& op : pending_) {
      if (op.kind == Kind::kWrite || op.kind == Kind::kWriteThrough) {
        survive(op.offset, op.data);
      }
    }
    pending_.clear();
    log_.clear();
    data_ = durable_;
    synced_writes_ = completed_writes_ = 0;
    return name_ + " crash (" + std::to_string(kept) + " unsynced writes kept, " +
           std::to_string(torn) + " torn)";
  }

  // Bit rot: the byte at `at` changes on the medium (and so in what reads return).
  void Rot(uint64_t at) {
    durable_[at] ^= std::byte{0x5a};
    data_[at] ^= std::byte{0x5a};
  }

  // The end of a schedule: operations never completed are dropped with their callbacks (which
  // may hold buffers of an engine about to go).
  void DropPending() { pending_.clear(); }

  const std::vector<std::byte>& data() const { return data_; }
  const std::vector<std::byte>& durable() const { return durable_; }
  // Sets both views (initial contents).
  void Initialize(const std::vector<std::byte>& bytes) {
    CHECK(bytes.size() == data_.size() && pending_.empty() && log_.empty());
    data_ = durable_ = bytes;
  }

 private:
  struct Op {
    Kind kind;
    uint64_t offset;
    std::vector<std::byte> data;  // Write payload (a copy: the caller's buffer is borrowed).
    mirror::StoreDone done;
    uint64_t covers;                // Datasync: completed writes it covers.
    std::span<std::byte> out = {};  // Read destination (borrowed until done).
  };
  struct Logged {
    uint64_t offset;
    std::vector<std::byte> data;
  };

  // The cached writes overlapping [offset, offset + bytes) take `bytes` there.
  void OverwriteInLog(uint64_t offset, const std::vector<std::byte>& bytes) {
    const uint64_t end = offset + bytes.size();
    for (auto& w : log_) {
      const uint64_t from = std::max(offset, w.offset);
      const uint64_t to = std::min(end, w.offset + w.data.size());
      if (from < to) {
        CopyBytes(w.data.data() + (from - w.offset), bytes.data() + (from - offset), to - from);
      }
    }
  }
  bool InRange(uint64_t offset, uint64_t length) const {
    return offset <= data_.size() && length <= data_.size() - offset;
  }
  static std::string Range(uint64_t offset, uint64_t length) {
    return std::to_string(offset) + "+" + std::to_string(length);
  }
  static void Apply(std::vector<std::byte>& image, uint64_t offset,
                    const std::vector<std::byte>& bytes, std::mt19937_64& rng, bool torn) {
    for (uint64_t s = 0; s < bytes.size(); s += kSectorBytes) {
      const uint64_t n = std::min<uint64_t>(kSectorBytes, bytes.size() - s);
      if (!torn || rng() % 2 == 0) {
        CopyBytes(image.data() + offset + s, bytes.data() + s, n);
      }
    }
  }

  std::string name_;
  std::vector<std::byte> data_;     // What reads see.
  std::vector<std::byte> durable_;  // What survives a crash for sure.
  std::vector<Logged> log_;         // Completed writes not yet covered by a datasync, in order.
  uint64_t completed_writes_ = 0;   // Since the last crash.
  uint64_t synced_writes_ = 0;      // The first this-many completed writes are in durable_.
  std::vector<Op> pending_;
  int write_eio_per_mille_ = 0;
  int datasync_eio_per_mille_ = 0;
  bool eio_lands_sectors_ = true;
};

}  // namespace sim
