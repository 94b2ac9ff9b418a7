// Fuzzes the transmission-phase parser: a stream of request headers (with WRITE payloads
// skipped the way the connection skips them), validated under every negotiated state. Beyond
// not crashing, it checks the validation rule that matters most: no request that reaches the
// device may touch a byte past the end of the export, whatever its offset and length.

#include <cstddef>
#include <cstdint>
#include <span>

#include "base/check.h"
#include "nbd-server/request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  if (in.empty()) {
    return 0;
  }
  const uint8_t mode = static_cast<uint8_t>(in[0]);
  in = in.subspan(1);
  nbd::ExportInfo info;
  info.size_bytes = (mode & 0x80) ? (1ull << 40) + 513 : (1 << 20);
  info.read_only = (mode & 0x40) != 0;
  nbd::Negotiated negotiated;
  negotiated.structured_replies = (mode & 1) != 0;
  negotiated.base_allocation = (mode & 3) == 3;
  while (in.size() >= nbd::kRequestHeaderBytes) {
    auto parsed = nbd::ParseRequestHeader(in.first<nbd::kRequestHeaderBytes>());
    in = in.subspan(nbd::kRequestHeaderBytes);
    if (!parsed.ok()) {
      return 0;
    }
    const nbd::Request& r = parsed.value();
    const nbd::Verdict verdict = nbd::ValidateRequest(r, info, negotiated);
    if (verdict.ok()) {
      const bool ranged = r.type != static_cast<uint16_t>(nbd::Command::kFlush) &&
                          r.type != static_cast<uint16_t>(nbd::Command::kDisconnect);
      if (ranged) {
        CHECK(r.offset_bytes <= info.size_bytes);
        CHECK(r.length_bytes <= info.size_bytes - r.offset_bytes);
      }
      CHECK(r.type <= static_cast<uint16_t>(nbd::Command::kBlockStatus));
      if (r.HasPayload()) {
        CHECK(r.length_bytes <= info.max_payload_bytes);
      }
    } else {
      CHECK(!verdict.why.empty());
    }
    if (r.HasPayload()) {
      in = in.subspan(std::min<size_t>(r.length_bytes, in.size()));
    }
  }
  return 0;
}
