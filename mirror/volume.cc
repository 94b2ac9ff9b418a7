#include "mirror/volume.h"

#include <string>

namespace mirror {

using base::Status;

Volume::Volume(asio::io_context& io, LocalStore& store)
    : io_(io), store_(store), group_commit_(io, store) {}

Status Volume::CheckRange(uint64_t offset_bytes, uint64_t length_bytes,
                          int past_end_errno) const {
  const uint64_t size = store_.size_bytes();
  if (offset_bytes > size || length_bytes > size - offset_bytes) {
    return Status::Error(past_end_errno, "range " + std::to_string(offset_bytes) + "+" +
                                             std::to_string(length_bytes) +
                                             " is past the end of the volume");
  }
  return Status::Ok();
}

Status Volume::Read(uint64_t offset_bytes, std::span<std::byte> out, nbd::DoneCallback done) {
  if (Status st = CheckRange(offset_bytes, out.size(), EINVAL); !st.ok()) {
    return st;
  }
  ++stats_.reads;
  stats_.read_bytes += out.size();
  return store_.Read(offset_bytes, out, [this, done = std::move(done)](Status st) {
    stats_.errors += st.ok() ? 0 : 1;
    done(std::move(st));
  });
}

Status Volume::Write(uint64_t offset_bytes, std::span<const std::byte> data, bool fua,
                     nbd::DoneCallback done) {
  ++stats_.writes;
  stats_.written_bytes += data.size();
  return Modify(
      offset_bytes, data.size(), fua,
      [this, offset_bytes, data](StoreDone store_done) {
        return store_.Write(offset_bytes, data, std::move(store_done));
      },
      std::move(done));
}

Status Volume::Trim(uint64_t offset_bytes, uint64_t length_bytes, bool fua,
                    nbd::DoneCallback done) {
  ++stats_.trims;
  return Modify(
      offset_bytes, length_bytes, fua,
      [this, offset_bytes, length_bytes](StoreDone store_done) {
        return store_.Discard(offset_bytes, length_bytes, std::move(store_done));
      },
      std::move(done));
}

Status Volume::WriteZeroes(uint64_t offset_bytes, uint64_t length_bytes,
                           nbd::ZeroOptions options, bool fua, nbd::DoneCallback done) {
  ++stats_.zeroes;
  return Modify(
      offset_bytes, length_bytes, fua,
      [this, offset_bytes, length_bytes, options](StoreDone store_done) {
        return store_.ZeroRange(offset_bytes, length_bytes, options, std::move(store_done));
      },
      std::move(done));
}

Status Volume::Modify(uint64_t offset_bytes, uint64_t length_bytes, bool fua, StoreCall call,
                      nbd::DoneCallback done) {
  if (Status st = CheckRange(offset_bytes, length_bytes, ENOSPC); !st.ok()) {
    return st;
  }
  ++stats_.writes_in_flight;
  InflightRanges::Ticket ticket = 0;
  // If the range is busy, the grant runs later from another write's completion, so it owns
  // copies of everything and learns its ticket through the shared cell.
  auto deferred = std::make_shared<InflightRanges::Ticket>(0);
  const bool granted = ranges_.Acquire(
      offset_bytes, length_bytes,
      [this, deferred, fua, call, done]() mutable { StartModify(*deferred, fua, call, done); },
      ticket);
  *deferred = ticket;
  if (!granted) {
    ++stats_.range_waits;
    return Status::Ok();
  }
  Status st = call([this, ticket, fua, done](Status result) mutable {
    OnModifyDone(ticket, fua, std::move(result), std::move(done));
  });
  if (!st.ok()) {
    ranges_.Release(ticket);
    --stats_.writes_in_flight;
  }
  return st;
}

void Volume::StartModify(InflightRanges::Ticket ticket, bool fua, const StoreCall& call,
                         nbd::DoneCallback done) {
  Status st = call([this, ticket, fua, done](Status result) mutable {
    OnModifyDone(ticket, fua, std::move(result), std::move(done));
  });
  if (!st.ok()) {
    // Already past the submit call that returned OK: report through the callback, later.
    asio::post(io_, [this, ticket, fua, st, done = std::move(done)]() mutable {
      OnModifyDone(ticket, fua, st, std::move(done));
    });
  }
}

void Volume::OnModifyDone(InflightRanges::Ticket ticket, bool fua, Status status,
                          nbd::DoneCallback done) {
  if (status.ok()) {
    group_commit_.NoteWriteCompleted();
  } else {
    ++stats_.errors;
  }
  ranges_.Release(ticket);
  --stats_.writes_in_flight;
  if (!status.ok() || !fua) {
    done(std::move(status));
    return;
  }
  group_commit_.RequestDurable(std::move(done));
}

Status Volume::Flush(nbd::DoneCallback done) {
  ++stats_.flushes;
  group_commit_.RequestDurable(std::move(done));
  return Status::Ok();
}

Status Volume::Cache(uint64_t offset_bytes, uint64_t length_bytes, nbd::DoneCallback done) {
  if (Status st = CheckRange(offset_bytes, length_bytes, EINVAL); !st.ok()) {
    return st;
  }
  return store_.Prefetch(offset_bytes, length_bytes, std::move(done));
}

Status Volume::BlockStatus(uint64_t offset_bytes, uint64_t length_bytes,
                           nbd::ExtentsCallback done) {
  if (Status st = CheckRange(offset_bytes, length_bytes, EINVAL); !st.ok()) {
    return st;
  }
  auto extents = store_.Allocation(offset_bytes, length_bytes);
  asio::post(io_, [done = std::move(done), extents = std::move(extents)]() mutable {
    done(std::move(extents));
  });
  return Status::Ok();
}

}  // namespace mirror
