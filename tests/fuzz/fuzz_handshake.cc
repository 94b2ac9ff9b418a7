// Fuzzes the handshake: arbitrary bytes from a client, cut into client flags and options the
// way the connection reads them. The Negotiator must never crash, never read out of bounds,
// and every reply it produces must be well-formed option replies (or the EXPORT_NAME answer).

#include <cstddef>
#include <cstdint>
#include <span>

#include "base/check.h"
#include "nbd-server/negotiator.h"
#include "nbd-server/protocol.h"

namespace {

void CheckReplies(const nbd::OptionReply& reply, uint32_t option) {
  if (option == nbd::kOptExportName) {
    return;  // Raw size + flags (+ padding), or nothing.
  }
  size_t pos = 0;
  const auto& b = reply.bytes;
  while (pos < b.size()) {
    CHECK(b.size() - pos >= 20);
    CHECK(nbd::LoadBe64(b.data() + pos) == nbd::kOptReplyMagic);
    CHECK(nbd::LoadBe32(b.data() + pos + 8) == option);
    const uint32_t length = nbd::LoadBe32(b.data() + pos + 16);
    CHECK(b.size() - pos - 20 >= length);
    pos += 20 + length;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  nbd::ExportInfo info;
  info.name = "fuzz";
  info.size_bytes = 1 << 20;
  nbd::Negotiator negotiator(info);
  if (in.size() < 4) {
    return 0;
  }
  if (!negotiator.AcceptClientFlags(in.first<4>()).ok()) {
    return 0;
  }
  in = in.subspan(4);
  while (in.size() >= nbd::kOptionHeaderBytes) {
    auto header = negotiator.ParseOptionHeader(in.first<nbd::kOptionHeaderBytes>());
    if (!header.ok()) {
      return 0;
    }
    in = in.subspan(nbd::kOptionHeaderBytes);
    const size_t length = std::min<size_t>(header.value().length_bytes, in.size());
    nbd::OptionReply reply = negotiator.HandleOption(header.value().option, in.first(length));
    CheckReplies(reply, header.value().option);
    in = in.subspan(length);
    if (reply.next != nbd::NextStep::kContinue) {
      return 0;
    }
  }
  return 0;
}
