#include "nbd-server/negotiator.h"

#include <algorithm>

#include "nbd-server/protocol.h"

namespace nbd {
namespace {

using base::Status;

std::span<const std::byte> AsBytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

// An error reply carries a message for the user; nbdinfo and qemu print it.
OptionReply ErrorReply(uint32_t option, uint32_t type, const std::string& why) {
  OptionReply reply;
  AppendOptionReply(reply.bytes, option, type, AsBytes(why));
  reply.log = why;
  return reply;
}

void AppendAck(std::vector<std::byte>& out, uint32_t option) {
  AppendOptionReply(out, option, kRepAck, {});
}

// A cursor over option data that never reads past the end.
class Cursor {
 public:
  explicit Cursor(std::span<const std::byte> data) : data_(data) {}
  bool U16(uint16_t& v) {
    if (left() < 2) {
      return false;
    }
    v = LoadBe16(data_.data() + pos_);
    pos_ += 2;
    return true;
  }
  bool U32(uint32_t& v) {
    if (left() < 4) {
      return false;
    }
    v = LoadBe32(data_.data() + pos_);
    pos_ += 4;
    return true;
  }
  bool Take(size_t n, std::span<const std::byte>& out) {
    if (left() < n) {
      return false;
    }
    out = data_.subspan(pos_, n);
    pos_ += n;
    return true;
  }
  size_t left() const { return data_.size() - pos_; }

 private:
  std::span<const std::byte> data_;
  size_t pos_ = 0;
};

}  // namespace

void AppendOptionReply(std::vector<std::byte>& out, uint32_t option, uint32_t type,
                       std::span<const std::byte> payload) {
  WireWriter w(out);
  w.U64(kOptReplyMagic);
  w.U32(option);
  w.U32(type);
  w.U32(static_cast<uint32_t>(payload.size()));
  w.Bytes(payload);
}

Negotiator::Negotiator(const ExportInfo& info) : info_(info) {}

std::vector<std::byte> Negotiator::Greeting() const {
  std::vector<std::byte> out;
  WireWriter w(out);
  w.U64(kNbdMagic);
  w.U64(kIHaveOpt);
  w.U16(kFlagFixedNewstyle | kFlagNoZeroes);
  return out;
}

Status Negotiator::AcceptClientFlags(std::span<const std::byte, 4> bytes) {
  const uint32_t flags = LoadBe32(bytes.data());
  // The spec obliges us to drop a client that sets a bit we do not know or did not offer.
  if ((flags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes)) != 0) {
    return Status::Error(EPROTO, "client set unknown handshake flags " + std::to_string(flags));
  }
  negotiated_.no_zeroes = (flags & kClientFlagNoZeroes) != 0;
  return Status::Ok();
}

base::Result<OptionHeader> Negotiator::ParseOptionHeader(
    std::span<const std::byte, kOptionHeaderBytes> bytes) const {
  if (LoadBe64(bytes.data()) != kIHaveOpt) {
    return Status::Error(EPROTO, "option without IHAVEOPT magic");
  }
  OptionHeader header{LoadBe32(bytes.data() + 8), LoadBe32(bytes.data() + 12)};
  if (header.length_bytes > kMaxOptionBytes) {
    return Status::Error(EPROTO, "option " + std::to_string(header.option) + " claims " +
                                     std::to_string(header.length_bytes) + " bytes of data");
  }
  return header;
}

uint16_t Negotiator::TransmissionFlags() const {
  uint16_t flags = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendTrim | kTxSendWriteZeroes |
                   kTxCanMultiConn | kTxSendCache | kTxSendFastZero;
  // Our READ replies are always one chunk, so DF holds trivially once chunks are in use.
  if (negotiated_.structured_replies) {
    flags |= kTxSendDf;
  }
  if (info_.read_only) {
    flags |= kTxReadOnly;
  }
  return flags;
}

bool Negotiator::IsOurName(std::span<const std::byte> name) const {
  const auto ours = AsBytes(info_.name);
  return name.empty() || std::equal(name.begin(), name.end(), ours.begin(), ours.end());
}

OptionReply Negotiator::HandleOption(uint32_t option, std::span<const std::byte> data) {
  switch (option) {
    case kOptExportName:
      return HandleExportName(data);
    case kOptAbort: {
      OptionReply reply;
      AppendAck(reply.bytes, option);
      reply.next = NextStep::kClose;
      return reply;
    }
    case kOptList:
      return HandleList(data);
    case kOptInfo:
    case kOptGo:
      return HandleInfoOrGo(option, data);
    case kOptStructuredReply: {
      if (!data.empty()) {
        return ErrorReply(option, kRepErrInvalid, "STRUCTURED_REPLY takes no data");
      }
      OptionReply reply;
      negotiated_.structured_replies = true;
      AppendAck(reply.bytes, option);
      return reply;
    }
    case kOptListMetaContext:
    case kOptSetMetaContext:
      return HandleMetaContext(option, data);
    default:
      // STARTTLS, EXTENDED_HEADERS and anything newer: not offered, negotiation goes on.
      return ErrorReply(option, kRepErrUnsup, "option " + std::to_string(option) +
                                                  " is not supported by nbdmirror");
  }
}

OptionReply Negotiator::HandleExportName(std::span<const std::byte> data) {
  OptionReply reply;
  if (data.size() > kMaxNameBytes || !IsOurName(data)) {
    // EXPORT_NAME has no error reply: the spec's only answer is to close.
    reply.next = NextStep::kDrop;
    reply.log = "EXPORT_NAME for an export we do not serve";
    return reply;
  }
  WireWriter w(reply.bytes);
  w.U64(info_.size_bytes);
  w.U16(TransmissionFlags());
  if (!negotiated_.no_zeroes) {
    w.Zeroes(124);
  }
  reply.next = NextStep::kTransmission;
  return reply;
}

OptionReply Negotiator::HandleList(std::span<const std::byte> data) {
  if (!data.empty()) {
    return ErrorReply(kOptList, kRepErrInvalid, "LIST takes no data");
  }
  OptionReply reply;
  std::vector<std::byte> payload;
  WireWriter w(payload);
  w.U32(static_cast<uint32_t>(info_.name.size()));
  w.Text(info_.name);
  AppendOptionReply(reply.bytes, kOptList, kRepServer, payload);
  AppendAck(reply.bytes, kOptList);
  return reply;
}

OptionReply Negotiator::HandleInfoOrGo(uint32_t option, std::span<const std::byte> data) {
  Cursor c(data);
  uint32_t name_bytes = 0;
  std::span<const std::byte> name;
  uint16_t request_count = 0;
  if (!c.U32(name_bytes) || name_bytes > kMaxNameBytes || !c.Take(name_bytes, name) ||
      !c.U16(request_count) || c.left() != size_t{request_count} * 2) {
    return ErrorReply(option, kRepErrInvalid, "malformed INFO/GO request");
  }
  if (!IsOurName(name)) {
    return ErrorReply(option, kRepErrUnknown, "no such export");
  }
  bool want_name = false;
  bool want_description = false;
  bool want_block_size = false;
  for (uint16_t i = 0; i < request_count; ++i) {
    uint16_t type = 0;
    CHECK(c.U16(type));
    want_name |= type == kInfoName;
    want_description |= type == kInfoDescription;
    want_block_size |= type == kInfoBlockSize;
  }

  OptionReply reply;
  std::vector<std::byte> payload;
  WireWriter w(payload);
  w.U16(kInfoExport);
  w.U64(info_.size_bytes);
  w.U16(TransmissionFlags());
  AppendOptionReply(reply.bytes, option, kRepInfo, payload);
  if (want_name) {
    payload.clear();
    w.U16(kInfoName);
    w.Text(info_.name);
    AppendOptionReply(reply.bytes, option, kRepInfo, payload);
  }
  if (want_description && !info_.description.empty()) {
    payload.clear();
    w.U16(kInfoDescription);
    w.Text(info_.description);
    AppendOptionReply(reply.bytes, option, kRepInfo, payload);
  }
  if (want_block_size) {
    payload.clear();
    w.U16(kInfoBlockSize);
    w.U32(info_.min_block_bytes);
    w.U32(info_.preferred_block_bytes);
    w.U32(info_.max_payload_bytes);
    AppendOptionReply(reply.bytes, option, kRepInfo, payload);
  }
  AppendAck(reply.bytes, option);
  if (option == kOptGo) {
    reply.next = NextStep::kTransmission;
  }
  return reply;
}

OptionReply Negotiator::HandleMetaContext(uint32_t option, std::span<const std::byte> data) {
  if (option == kOptSetMetaContext) {
    // "replaces all previously-set metadata contexts (including when this command fails)".
    negotiated_.base_allocation = false;
  }
  if (!negotiated_.structured_replies) {
    return ErrorReply(option, kRepErrInvalid, "meta contexts need structured replies first");
  }
  Cursor c(data);
  uint32_t name_bytes = 0;
  std::span<const std::byte> name;
  uint32_t query_count = 0;
  if (!c.U32(name_bytes) || name_bytes > kMaxNameBytes || !c.Take(name_bytes, name) ||
      !c.U32(query_count)) {
    return ErrorReply(option, kRepErrInvalid, "malformed meta context request");
  }
  bool select = false;
  const bool listing = option == kOptListMetaContext;
  for (uint32_t i = 0; i < query_count; ++i) {
    uint32_t query_bytes = 0;
    std::span<const std::byte> query;
    if (!c.U32(query_bytes) || query_bytes > kMaxNameBytes || !c.Take(query_bytes, query)) {
      return ErrorReply(option, kRepErrInvalid, "malformed meta context query");
    }
    const std::string text(reinterpret_cast<const char*>(query.data()), query.size());
    // Unknown namespaces are ignored, as the spec requires; "base:" lists the base contexts.
    if (text == kBaseAllocation || (listing && text == "base:")) {
      select = true;
    }
  }
  if (c.left() != 0) {
    return ErrorReply(option, kRepErrInvalid, "trailing bytes in meta context request");
  }
  if (!IsOurName(name)) {
    return ErrorReply(option, kRepErrUnknown, "no such export");
  }
  // LIST with no queries lists everything; SET with no queries selects nothing.
  if (listing && query_count == 0) {
    select = true;
  }
  OptionReply reply;
  if (select) {
    std::vector<std::byte> payload;
    WireWriter w(payload);
    w.U32(listing ? 0 : kBaseAllocationContextId);
    w.Text(kBaseAllocation);
    AppendOptionReply(reply.bytes, option, kRepMetaContext, payload);
  }
  if (!listing) {
    negotiated_.base_allocation = select;
  }
  AppendAck(reply.bytes, option);
  return reply;
}

}  // namespace nbd
