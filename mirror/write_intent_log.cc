#include "mirror/write_intent_log.h"

#include <spdlog/spdlog.h>

#include <bit>
#include <cstring>

#include "base/check.h"
#include "mirror/metadata.h"

namespace mirror {

using base::Status;

WriteIntentLog::WriteIntentLog(asio::io_context& io, LocalStore* meta_store,
                               uint64_t volume_bytes, uint64_t region_bytes,
                               std::vector<uint8_t> bits, bool enabled)
    : io_(io),
      meta_store_(meta_store),
      volume_bytes_(volume_bytes),
      region_bytes_(region_bytes),
      region_count_(RegionCount(volume_bytes, region_bytes)),
      enabled_(enabled),
      bits_(std::move(bits)) {
  CHECK(region_bytes_ > 0);
  CHECK(bits_.size() == BitmapPageCount(region_count_) * kBitmapAreaBytes);
  touched_.assign(bits_.size(), 0);
  pinned_.assign(bits_.size(), 0);
  copied_.assign(bits_.size(), 0);
  unsynced_.assign(bits_.size(), 0);
  in_round_.assign(bits_.size(), 0);
  for (uint8_t byte : bits_) {
    marked_regions_ += std::popcount(byte);
  }
}

std::pair<uint64_t, uint64_t> WriteIntentLog::Regions(uint64_t offset_bytes,
                                                      uint64_t length_bytes) const {
  if (length_bytes == 0) {
    return {0, 0};
  }
  const uint64_t first = offset_bytes / region_bytes_;
  const uint64_t last = (offset_bytes + length_bytes - 1) / region_bytes_;
  return {first, std::min(last + 1, region_count_)};
}

std::pair<uint64_t, uint64_t> WriteIntentLog::WholeRegions(uint64_t offset_bytes,
                                                           uint64_t length_bytes) const {
  const uint64_t first = (offset_bytes + region_bytes_ - 1) / region_bytes_;
  uint64_t end = (offset_bytes + length_bytes) / region_bytes_;
  if (offset_bytes + length_bytes == volume_bytes_) {
    end = region_count_;  // The last region may be short.
  }
  return {first, std::max(first, end)};
}

bool WriteIntentLog::Set(uint64_t region) {
  uint8_t& byte = bits_[region / 8];
  const uint8_t mask = static_cast<uint8_t>(1u << (region % 8));
  if (byte & mask) {
    return false;
  }
  byte |= mask;
  unsynced_[region / 8] |= mask;
  ++marked_regions_;
  return true;
}

void WriteIntentLog::Clear(uint64_t region) {
  uint8_t& byte = bits_[region / 8];
  const uint8_t mask = static_cast<uint8_t>(1u << (region % 8));
  if (pinned_[region / 8] & mask) {
    pinned_[region / 8] &= static_cast<uint8_t>(~mask);
    --pinned_regions_;
  }
  if (byte & mask) {
    byte &= static_cast<uint8_t>(~mask);
    unsynced_[region / 8] &= static_cast<uint8_t>(~mask);
    in_round_[region / 8] &= static_cast<uint8_t>(~mask);
    --marked_regions_;
    ++stats_.cleared_regions;
    SchedulePage(region / kBitsPerPage);
  }
}

void WriteIntentLog::SchedulePage(uint64_t page) { scheduled_pages_.insert(page); }

uint64_t WriteIntentLog::marked_bytes() const {
  const uint64_t regions = marked_regions();
  if (regions == 0) {
    return 0;
  }
  uint64_t bytes = regions * region_bytes_;
  // The last region may be short.
  if ((!enabled_ || Test(region_count_ - 1)) && volume_bytes_ % region_bytes_ != 0) {
    bytes -= region_bytes_ - volume_bytes_ % region_bytes_;
  }
  return bytes;
}

bool WriteIntentLog::Mark(uint64_t offset_bytes, uint64_t length_bytes, StoreDone ready) {
  if (!enabled_) {
    return true;
  }
  ++stats_.marks;
  auto [first, end] = Regions(offset_bytes, length_bytes);
  uint64_t needs_round = 0;
  bool marked_new = false;
  for (uint64_t r = first; r < end; ++r) {
    ++in_flight_[r];
    touched_[r / 8] |= static_cast<uint8_t>(1u << (r % 8));
    copied_[r / 8] &= static_cast<uint8_t>(~(1u << (r % 8)));
    if (Set(r)) {
      SchedulePage(r / kBitsPerPage);
      marked_new = true;
    }
    // A bit already durable needs nothing, whatever else of its page is being written.
    if ((unsynced_[r / 8] >> (r % 8)) & 1) {
      needs_round = std::max(needs_round, rounds_started_ + 1);
    } else if ((in_round_[r / 8] >> (r % 8)) & 1) {
      needs_round = std::max(needs_round, rounds_started_);
    }
  }
  if (marked_new && mark_ahead_regions_ > 1 && (!mark_ahead_allowed_ || mark_ahead_allowed_())) {
    // Same round as the write's own marks: nothing waits longer for them.
    const uint64_t ahead_first = first / mark_ahead_regions_ * mark_ahead_regions_;
    const uint64_t ahead_end = std::min(
        (end + mark_ahead_regions_ - 1) / mark_ahead_regions_ * mark_ahead_regions_, region_count_);
    for (uint64_t r = ahead_first; r < ahead_end; ++r) {
      if (Set(r)) {
        SchedulePage(r / kBitsPerPage);
      }
    }
  }
  if (!failure_.ok()) {
    asio::post(io_, [ready = std::move(ready), st = failure_] { ready(st); });
    return false;
  }
  if (needs_round <= durable_round_) {
    return true;
  }
  ++stats_.marks_waited;
  waiters_[needs_round].push_back(std::move(ready));
  if (!round_running_) {
    StartRound();
  }
  return false;
}

void WriteIntentLog::Unmark(uint64_t offset_bytes, uint64_t length_bytes) {
  if (!enabled_) {
    return;
  }
  auto [first, end] = Regions(offset_bytes, length_bytes);
  for (uint64_t r = first; r < end; ++r) {
    auto it = in_flight_.find(r);
    CHECK(it != in_flight_.end());
    if (--it->second == 0) {
      in_flight_.erase(it);
    }
  }
}

void WriteIntentLog::MarkRange(uint64_t offset_bytes, uint64_t length_bytes) {
  if (!enabled_) {
    return;
  }
  auto [first, end] = Regions(offset_bytes, length_bytes);
  for (uint64_t r = first; r < end; ++r) {
    // Touched: a clean cycle that began before this mark must not clear it. Its flushes say
    // nothing about a region found to differ (a verify mismatch) after they were asked for.
    touched_[r / 8] |= static_cast<uint8_t>(1u << (r % 8));
    copied_[r / 8] &= static_cast<uint8_t>(~(1u << (r % 8)));
    if (Set(r)) {
      SchedulePage(r / kBitsPerPage);
    }
  }
}

void WriteIntentLog::MarkAll() { MarkRange(0, volume_bytes_); }

void WriteIntentLog::Persist(StoreDone done) {
  if (!enabled_) {
    asio::post(io_, [done = std::move(done)] { done(Status::Ok()); });
    return;
  }
  if (!failure_.ok()) {
    asio::post(io_, [done = std::move(done), st = failure_] { done(st); });
    return;
  }
  // Whatever is scheduled now goes in the next round; if nothing is, the running round (if
  // any) is the last that could hold changes made so far.
  const uint64_t round = scheduled_pages_.empty() && !round_running_ ? durable_round_
                         : scheduled_pages_.empty()                  ? rounds_started_
                                                                     : rounds_started_ + 1;
  if (round <= durable_round_) {
    asio::post(io_, [done = std::move(done)] { done(Status::Ok()); });
    return;
  }
  waiters_[round].push_back(std::move(done));
  if (!round_running_) {
    StartRound();
  }
}

void WriteIntentLog::StartRound() {
  CHECK(!round_running_);
  if (scheduled_pages_.empty()) {
    return;
  }
  round_running_ = true;
  ++rounds_started_;
  round_status_ = Status::Ok();
  round_pages_.clear();
  round_page_indices_.assign(scheduled_pages_.begin(), scheduled_pages_.end());
  scheduled_pages_.clear();
  round_writes_left_ = round_page_indices_.size();
  for (uint64_t page : round_page_indices_) {
    // The bits set so far are in this round's image of the page.
    const auto area = static_cast<std::ptrdiff_t>(page * kBitmapAreaBytes);
    std::copy_n(unsynced_.begin() + area, kBitmapAreaBytes, in_round_.begin() + area);
    std::fill_n(unsynced_.begin() + area, kBitmapAreaBytes, 0);
    auto* raw = static_cast<std::byte*>(std::aligned_alloc(kBitmapPageBytes, kBitmapPageBytes));
    CHECK(raw != nullptr);
    round_pages_.emplace_back(raw);
    std::span<std::byte> image(raw, kBitmapPageBytes);
    EncodeBitmapPage(static_cast<uint32_t>(page),
                     std::span<const uint8_t>(bits_).subspan(page * kBitmapAreaBytes,
                                                             kBitmapAreaBytes),
                     image);
    ++stats_.page_writes;
    Status st = meta_store_->Write(kBitmapOffsetBytes + page * kBitmapPageBytes, image,
                                   [this](Status written) { OnRoundWritten(std::move(written)); });
    if (!st.ok()) {
      asio::post(io_, [this, st] { OnRoundWritten(st); });
    }
  }
}

void WriteIntentLog::OnRoundWritten(Status status) {
  if (!status.ok() && round_status_.ok()) {
    round_status_ = std::move(status);
  }
  if (--round_writes_left_ > 0) {
    return;
  }
  if (!round_status_.ok() || writes_are_durable_) {
    OnRoundSynced(round_status_);
    return;
  }
  ++stats_.datasyncs;
  Status st = meta_store_->Datasync([this](Status synced) { OnRoundSynced(std::move(synced)); });
  if (!st.ok()) {
    asio::post(io_, [this, st] { OnRoundSynced(st); });
  }
}

void WriteIntentLog::OnRoundSynced(Status status) {
  round_running_ = false;
  round_pages_.clear();
  if (!status.ok()) {
    Fail(Status::Error(EIO, "write-intent bitmap: " + status.ToString()));
    return;
  }
  durable_round_ = rounds_started_;
  for (uint64_t page : round_page_indices_) {
    std::fill_n(in_round_.begin() + static_cast<std::ptrdiff_t>(page * kBitmapAreaBytes),
                kBitmapAreaBytes, 0);
  }
  // Waiters for this round and earlier ones.
  std::vector<StoreDone> ready;
  while (!waiters_.empty() && waiters_.begin()->first <= durable_round_) {
    for (StoreDone& done : waiters_.begin()->second) {
      ready.push_back(std::move(done));
    }
    waiters_.erase(waiters_.begin());
  }
  if (!scheduled_pages_.empty()) {
    StartRound();
  }
  for (StoreDone& done : ready) {
    done(Status::Ok());
  }
}

void WriteIntentLog::Fail(Status status) {
  if (failure_.ok()) {
    spdlog::critical("{}; writes into unmarked regions now fail", status.ToString());
    failure_ = status;
  }
  auto waiters = std::move(waiters_);
  waiters_.clear();
  for (auto& [round, list] : waiters) {
    for (StoreDone& done : list) {
      done(failure_);
    }
  }
}

uint64_t WriteIntentLog::BeginClean() {
  ++clean_cycle_;
  marks_at_clean_begin_ = stats_.marks;
  std::fill(touched_.begin(), touched_.end(), 0);
  for (const auto& [region, count] : in_flight_) {
    touched_[region / 8] |= static_cast<uint8_t>(1u << (region % 8));
  }
  return clean_cycle_;
}

uint64_t WriteIntentLog::FinishClean(uint64_t cycle) {
  if (!enabled_ || cycle != clean_cycle_ || !failure_.ok()) {
    return 0;
  }
  ++clean_cycle_;
  uint64_t cleared = 0;
  for (size_t i = 0; i < bits_.size(); ++i) {
    const uint8_t clearable = bits_[i] & static_cast<uint8_t>(~(touched_[i] | pinned_[i]));
    if (clearable == 0) {
      continue;
    }
    for (int b = 0; b < 8; ++b) {
      if (clearable & (1u << b)) {
        Clear(i * 8 + b);
        ++cleared;
      }
    }
  }
  if (cleared > 0 && !round_running_) {
    StartRound();
  }
  return cleared;
}

void WriteIntentLog::NoteCopied(uint64_t offset_bytes, uint64_t length_bytes) {
  if (!enabled_) {
    return;
  }
  auto [first, end] = WholeRegions(offset_bytes, length_bytes);
  for (uint64_t r = first; r < end; ++r) {
    copied_[r / 8] |= static_cast<uint8_t>(1u << (r % 8));
  }
}

uint64_t WriteIntentLog::ClearCopied(uint64_t offset_bytes, uint64_t length_bytes) {
  if (!enabled_) {
    return 0;
  }
  auto [first, end] = WholeRegions(offset_bytes, length_bytes);
  uint64_t cleared = 0;
  for (uint64_t r = first; r < end; ++r) {
    const uint8_t mask = static_cast<uint8_t>(1u << (r % 8));
    const bool copied = copied_[r / 8] & mask;
    copied_[r / 8] &= static_cast<uint8_t>(~mask);
    if (copied && failure_.ok() && !in_flight_.contains(r) && Test(r)) {
      Clear(r);
      ++cleared;
    }
  }
  if (cleared > 0 && !round_running_) {
    StartRound();
  }
  return cleared;
}

void WriteIntentLog::ClearAll(StoreDone done) {
  if (enabled_ && failure_.ok()) {
    for (uint64_t r = 0; r < region_count_; ++r) {
      if (!in_flight_.contains(r) && !((pinned_[r / 8] >> (r % 8)) & 1)) {
        Clear(r);
      }
    }
  }
  Persist(std::move(done));
}

void WriteIntentLog::Pin(uint64_t offset_bytes, uint64_t length_bytes) {
  if (!enabled_) {
    return;
  }
  MarkRange(offset_bytes, length_bytes);
  auto [first, end] = Regions(offset_bytes, length_bytes);
  for (uint64_t r = first; r < end; ++r) {
    uint8_t& byte = pinned_[r / 8];
    const uint8_t mask = static_cast<uint8_t>(1u << (r % 8));
    if (!(byte & mask)) {
      byte |= mask;
      ++pinned_regions_;
    }
  }
}

std::optional<ByteRange> WriteIntentLog::NextMarked(uint64_t from_bytes,
                                                    uint64_t max_bytes) const {
  uint64_t r = from_bytes / region_bytes_;
  if (from_bytes % region_bytes_ != 0) {
    ++r;
  }
  if (enabled_) {
    // Skip clear bytes quickly.
    while (r < region_count_ && !Test(r)) {
      if (r % 8 == 0 && bits_[r / 8] == 0) {
        r += 8;
      } else {
        ++r;
      }
    }
  }
  if (r >= region_count_) {
    return std::nullopt;
  }
  const uint64_t max_regions = std::max<uint64_t>(1, max_bytes / region_bytes_);
  uint64_t end = r + 1;
  while (end < region_count_ && end - r < max_regions && (!enabled_ || Test(end))) {
    ++end;
  }
  const uint64_t offset = r * region_bytes_;
  return ByteRange{offset, std::min(end * region_bytes_, volume_bytes_) - offset};
}

std::vector<ByteRange> WriteIntentLog::MarkedRuns() const {
  std::vector<ByteRange> runs;
  uint64_t from = 0;
  while (auto run = NextMarked(from, volume_bytes_)) {
    runs.push_back(*run);
    from = run->offset_bytes + run->length_bytes;
  }
  return runs;
}

}  // namespace mirror
