#include "mirror/fault_injecting_store.h"

#include <charconv>

namespace mirror {

using base::Status;

namespace {

bool ParseU64(const std::string& text, uint64_t& value) {
  const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), value);
  return err == std::errc() && end == text.data() + text.size() && !text.empty();
}

}  // namespace

base::Result<FaultRule> ParseFaultRule(const std::string& text) {
  FaultRule rule;
  if (text == "datasync") {
    rule.kind = FaultRule::Kind::kDatasync;
    return rule;
  }
  const size_t first = text.find(':');
  const size_t second = first == std::string::npos ? first : text.find(':', first + 1);
  if (second == std::string::npos) {
    return Status::Error(EINVAL, "fault rule '" + text +
                                     "' is not read:OFFSET:LENGTH, write:OFFSET:LENGTH or "
                                     "datasync");
  }
  const std::string kind = text.substr(0, first);
  if (kind == "read") {
    rule.kind = FaultRule::Kind::kRead;
  } else if (kind == "write") {
    rule.kind = FaultRule::Kind::kWrite;
  } else {
    return Status::Error(EINVAL, "fault rule kind '" + kind + "' is not read or write");
  }
  if (!ParseU64(text.substr(first + 1, second - first - 1), rule.offset_bytes) ||
      !ParseU64(text.substr(second + 1), rule.length_bytes) || rule.length_bytes == 0) {
    return Status::Error(EINVAL, "fault rule '" + text + "' needs a numeric offset and length");
  }
  return rule;
}

FaultInjectingStore::FaultInjectingStore(asio::io_context& io, LocalStore& inner,
                                         std::vector<FaultRule> rules)
    : io_(io), inner_(inner), rules_(std::move(rules)) {}

std::string FaultInjectingStore::Describe() const {
  return inner_.Describe() + " with " + std::to_string(rules_.size()) + " injected fault(s)";
}

bool FaultInjectingStore::Hits(FaultRule::Kind kind, uint64_t offset_bytes,
                               uint64_t length_bytes) const {
  for (const FaultRule& rule : rules_) {
    if (rule.kind != kind) {
      continue;
    }
    if (kind == FaultRule::Kind::kDatasync) {
      return true;
    }
    const uint64_t end = offset_bytes + std::max<uint64_t>(length_bytes, 1);
    if (offset_bytes < rule.offset_bytes + rule.length_bytes && rule.offset_bytes < end) {
      return true;
    }
  }
  return false;
}

Status FaultInjectingStore::Fail(const char* what, uint64_t offset_bytes, StoreDone done) {
  ++injected_count_;
  asio::post(io_, [done = std::move(done), what, offset_bytes] {
    done(Status::Error(EIO, std::string("injected fault: ") + what + " at " +
                                std::to_string(offset_bytes)));
  });
  return Status::Ok();
}

Status FaultInjectingStore::Read(uint64_t offset_bytes, std::span<std::byte> out,
                                 StoreDone done) {
  if (Hits(FaultRule::Kind::kRead, offset_bytes, out.size())) {
    return Fail("read", offset_bytes, std::move(done));
  }
  return inner_.Read(offset_bytes, out, std::move(done));
}

Status FaultInjectingStore::Write(uint64_t offset_bytes, std::span<const std::byte> data,
                                  StoreDone done) {
  if (Hits(FaultRule::Kind::kWrite, offset_bytes, data.size())) {
    return Fail("write", offset_bytes, std::move(done));
  }
  return inner_.Write(offset_bytes, data, std::move(done));
}

Status FaultInjectingStore::WriteThrough(uint64_t offset_bytes, std::span<const std::byte> data,
                                         StoreDone done) {
  // Fails where a write would, and wherever a datasync would: it flushes as one does.
  if (Hits(FaultRule::Kind::kWrite, offset_bytes, data.size())) {
    return Fail("write-through", offset_bytes, std::move(done));
  }
  if (Hits(FaultRule::Kind::kDatasync, 0, 0)) {
    return Fail("write-through (its flush)", offset_bytes, std::move(done));
  }
  return inner_.WriteThrough(offset_bytes, data, std::move(done));
}

Status FaultInjectingStore::Datasync(StoreDone done) {
  if (Hits(FaultRule::Kind::kDatasync, 0, 0)) {
    return Fail("datasync", 0, std::move(done));
  }
  return inner_.Datasync(std::move(done));
}

Status FaultInjectingStore::Discard(uint64_t offset_bytes, uint64_t length_bytes,
                                    StoreDone done) {
  if (Hits(FaultRule::Kind::kWrite, offset_bytes, length_bytes)) {
    return Fail("discard", offset_bytes, std::move(done));
  }
  return inner_.Discard(offset_bytes, length_bytes, std::move(done));
}

Status FaultInjectingStore::ZeroRange(uint64_t offset_bytes, uint64_t length_bytes,
                                      nbd::ZeroOptions options, StoreDone done) {
  if (Hits(FaultRule::Kind::kWrite, offset_bytes, length_bytes)) {
    return Fail("zero", offset_bytes, std::move(done));
  }
  return inner_.ZeroRange(offset_bytes, length_bytes, options, std::move(done));
}

Status FaultInjectingStore::Prefetch(uint64_t offset_bytes, uint64_t length_bytes,
                                     StoreDone done) {
  return inner_.Prefetch(offset_bytes, length_bytes, std::move(done));
}

base::Result<std::vector<nbd::Extent>> FaultInjectingStore::Allocation(uint64_t offset_bytes,
                                                                       uint64_t length_bytes) {
  return inner_.Allocation(offset_bytes, length_bytes);
}

}  // namespace mirror
