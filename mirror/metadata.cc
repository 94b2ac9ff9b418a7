#include "mirror/metadata.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>

#include <spdlog/spdlog.h>

#include "base/check.h"
#include "base/crc32c.h"

namespace mirror {

using base::Status;

namespace {

std::span<const std::byte> AsBytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

std::string Hex32(uint32_t value) {
  char buf[9];
  std::snprintf(buf, sizeof(buf), "%08x", value);
  return buf;
}

bool ParseU64(const std::string& text, uint64_t& out, int base = 10) {
  auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), out, base);
  return err == std::errc() && end == text.data() + text.size() && !text.empty();
}

Status SyncDirectoryOf(const std::string& path) {
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return Status::FromErrno("open directory of " + path);
  }
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  if (rc != 0) {
    return Status::Error(saved, "fsync directory of " + path);
  }
  return Status::Ok();
}

Status PwriteAll(int fd, std::span<const std::byte> data, uint64_t offset, const std::string& what) {
  while (!data.empty()) {
    const ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return Status::FromErrno("write " + what);
    }
    data = data.subspan(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

// Reads up to `out.size()` bytes; returns how many (short at end of file).
base::Result<size_t> PreadAll(int fd, std::span<std::byte> out, uint64_t offset,
                              const std::string& what) {
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::pread(fd, out.data() + done, out.size() - done,
                              static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return Status::FromErrno("read " + what);
    }
    if (n == 0) {
      break;
    }
    done += static_cast<size_t>(n);
  }
  return done;
}

std::string GenList(const std::vector<uint64_t>& gens) {
  std::string out;
  for (uint64_t gen : gens) {
    out += (out.empty() ? "" : ",") + GenerationText(gen);
  }
  return out;
}

bool ParseGenList(const std::string& text, std::vector<uint64_t>& out) {
  out.clear();
  std::istringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    uint64_t gen = 0;
    if (!ParseU64(item, gen, 16)) {
      return false;
    }
    out.push_back(gen);
  }
  return out.size() <= Generations::kHistoryLength;
}

Status LockExclusive(int fd, const std::string& path) {
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return Status::Error(EBUSY, "metadata " + path +
                                      " is in use by another nbdmirror process on this volume");
    }
    return Status::FromErrno("lock " + path);
  }
  return Status::Ok();
}

}  // namespace

const char* DiskStateName(DiskState state) {
  switch (state) {
    case DiskState::kUpToDate:
      return "UpToDate";
    case DiskState::kOutdated:
      return "Outdated";
    case DiskState::kInconsistent:
      return "Inconsistent";
    case DiskState::kFailed:
      return "Failed";
  }
  return "?";
}

const char* RoleName(Role role) { return role == Role::kPrimary ? "primary" : "secondary"; }

std::optional<DiskState> ParseDiskState(const std::string& name) {
  for (DiskState s : {DiskState::kUpToDate, DiskState::kOutdated, DiskState::kInconsistent,
                      DiskState::kFailed}) {
    if (name == DiskStateName(s)) {
      return s;
    }
  }
  return std::nullopt;
}

void FollowPrimaryGeneration(VolumeMetadata& md, uint64_t gen, DiskState disk) {
  if (md.gens.current != gen) {
    RememberGeneration(md.gens, md.gens.current);
  }
  md.gens.current = gen;
  md.gens.bitmap = gen;
  md.gens.current_shared = true;
  md.disk = disk;
}

std::string NewVolumeUuid() {
  unsigned char raw[16];
  CHECK(RAND_bytes(raw, sizeof(raw)) == 1);
  std::string out;
  for (unsigned char c : raw) {
    char buf[3];
    std::snprintf(buf, sizeof(buf), "%02x", c);
    out += buf;
  }
  return out;
}

std::string DefaultMetadataPath(const std::string& volume_path) {
  return volume_path + ".nbdmirror-meta";
}

uint64_t RegionCount(uint64_t size_bytes, uint64_t region_bytes) {
  return region_bytes == 0 ? 0 : (size_bytes + region_bytes - 1) / region_bytes;
}

uint64_t BitmapPageCount(uint64_t region_count) {
  return std::max<uint64_t>(1, (region_count + kBitsPerPage - 1) / kBitsPerPage);
}

void EncodeBitmapPage(uint32_t index, std::span<const uint8_t> bits, std::span<std::byte> page) {
  CHECK(bits.size() == kBitmapAreaBytes && page.size() == kBitmapPageBytes);
  for (int i = 0; i < 4; ++i) {
    page[4 + i] = static_cast<std::byte>((index >> (8 * i)) & 0xff);
  }
  std::memcpy(page.data() + kBitmapPageHeaderBytes, bits.data(), bits.size());
  const uint32_t crc = base::Crc32c(0, page.subspan(4));
  for (int i = 0; i < 4; ++i) {
    page[i] = static_cast<std::byte>((crc >> (8 * i)) & 0xff);
  }
}

bool DecodeBitmapPage(uint32_t index, std::span<const std::byte> page, std::span<uint8_t> bits) {
  CHECK(bits.size() == kBitmapAreaBytes && page.size() == kBitmapPageBytes);
  auto u32 = [&page](size_t at) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      v |= static_cast<uint32_t>(page[at + i]) << (8 * i);
    }
    return v;
  };
  if (u32(0) != base::Crc32c(0, page.subspan(4)) || u32(4) != index) {
    return false;
  }
  std::memcpy(bits.data(), page.data() + kBitmapPageHeaderBytes, bits.size());
  return true;
}

std::string EncodeSuperblock(const VolumeMetadata& md, uint64_t seq) {
  std::ostringstream body;
  body << "nbdmirror superblock; do not edit (checksummed)\n"
       << "version=2\n"
       << "seq=" << seq << "\n"
       << "volume_uuid=" << md.volume_uuid << "\n"
       << "size_bytes=" << md.size_bytes << "\n"
       << "node_id=" << md.node_id << "\n"
       << "disk=" << DiskStateName(md.disk) << "\n"
       << "peer_disk=" << DiskStateName(md.peer_disk) << "\n"
       << "clean=" << (md.clean ? "true" : "false") << "\n"
       << "current_gen=" << GenerationText(md.gens.current) << "\n"
       << "bitmap_gen=" << GenerationText(md.gens.bitmap) << "\n"
       << "history_gens=" << GenList(md.gens.history) << "\n"
       << "current_shared=" << (md.gens.current_shared ? "true" : "false") << "\n"
       << "region_bytes=" << md.region_bytes << "\n";
  const std::string text = body.str();
  return text + "crc32c=" + Hex32(base::Crc32c(0, AsBytes(text))) + "\n";
}

base::Result<std::pair<VolumeMetadata, uint64_t>> DecodeSuperblock(
    std::span<const std::byte> slot) {
  const char* chars = reinterpret_cast<const char*>(slot.data());
  const std::string text(chars, strnlen(chars, slot.size()));
  const size_t crc_at = text.rfind("crc32c=");
  if (crc_at == std::string::npos || (crc_at > 0 && text[crc_at - 1] != '\n')) {
    return Status::Error(EBADMSG, "no checksum line (never written, or torn)");
  }
  const std::string body = text.substr(0, crc_at);
  std::string stored = text.substr(crc_at + 7);
  while (!stored.empty() && stored.back() == '\n') {
    stored.pop_back();
  }
  if (stored != Hex32(base::Crc32c(0, AsBytes(body)))) {
    return Status::Error(EBADMSG, "checksum mismatch (torn or altered)");
  }
  std::map<std::string, std::string> f;
  std::istringstream lines(body);
  for (std::string line; std::getline(lines, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) {
      f[line.substr(0, eq)] = line.substr(eq + 1);
    }
  }
  if (f["version"] != "2") {
    return Status::Error(EBADMSG, "unknown superblock version '" + f["version"] + "'");
  }
  VolumeMetadata md;
  uint64_t seq = 0;
  md.volume_uuid = f["volume_uuid"];
  md.node_id = f["node_id"];
  auto disk = ParseDiskState(f["disk"]);
  auto peer_disk = ParseDiskState(f["peer_disk"]);
  if (!ParseU64(f["seq"], seq) || !ParseU64(f["size_bytes"], md.size_bytes) || !disk ||
      !peer_disk || !ParseU64(f["current_gen"], md.gens.current, 16) ||
      !ParseU64(f["bitmap_gen"], md.gens.bitmap, 16) ||
      !ParseGenList(f["history_gens"], md.gens.history) ||
      !ParseU64(f["region_bytes"], md.region_bytes) || md.region_bytes < 4096 ||
      (md.region_bytes & (md.region_bytes - 1)) != 0) {
    return Status::Error(EBADMSG, "missing or invalid fields");
  }
  md.disk = *disk;
  md.peer_disk = *peer_disk;
  md.clean = f["clean"] == "true";
  md.gens.current_shared = f["current_shared"] == "true";
  return std::make_pair(md, seq);
}

MetadataFile::MetadataFile(std::string path, int fd, VolumeMetadata md, uint64_t seq)
    : path_(std::move(path)), fd_(fd), current_(std::move(md)), seq_(seq) {}

MetadataFile::~MetadataFile() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

base::Result<std::optional<std::unique_ptr<MetadataFile>>> MetadataFile::Open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      return std::optional<std::unique_ptr<MetadataFile>>();
    }
    return Status::FromErrno("open metadata " + path);
  }
  auto fail = [fd](Status st) {
    ::close(fd);
    return st;
  };
  if (Status st = LockExclusive(fd, path); !st.ok()) {
    return fail(st);
  }
  std::vector<std::byte> slots(2 * kSuperblockBytes);
  auto got = PreadAll(fd, slots, 0, path);
  if (!got.ok()) {
    return fail(got.status());
  }
  std::optional<std::pair<VolumeMetadata, uint64_t>> best;
  std::string problems;
  for (int slot = 0; slot < 2; ++slot) {
    // A short file reads as zeroes past its end: such a slot fails to decode.
    auto decoded = DecodeSuperblock(
        std::span<const std::byte>(slots).subspan(slot * kSuperblockBytes, kSuperblockBytes));
    if (!decoded.ok()) {
      problems += std::string(problems.empty() ? "" : ";") + " slot " + std::to_string(slot) +
                  ": " + decoded.status().message();
      continue;
    }
    if (!best || decoded.value().second > best->second) {
      best = decoded.value();
    }
  }
  if (!best) {
    return fail(Status::Error(EBADMSG, "metadata " + path +
                                           " has no valid superblock; refusing to guess:" +
                                           problems));
  }
  if (!problems.empty() && best->second > 1) {
    // Expected once after a crash during an update (the torn slot is the newer one, which
    // never completed) or when only one slot was ever written.
    spdlog::warn("metadata {}: using superblock seq {}; the other slot is invalid:{}", path,
                 best->second, problems);
  }
  return std::optional<std::unique_ptr<MetadataFile>>(
      std::unique_ptr<MetadataFile>(new MetadataFile(path, fd, best->first, best->second)));
}

base::Result<std::unique_ptr<MetadataFile>> MetadataFile::Create(const std::string& path,
                                                                 const VolumeMetadata& initial) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    return Status::FromErrno("create metadata " + path);
  }
  if (Status st = LockExclusive(fd, path); !st.ok()) {
    ::close(fd);
    return st;
  }
  std::unique_ptr<MetadataFile> file(new MetadataFile(path, fd, initial, 0));
  std::vector<uint8_t> empty(file->page_count() * kBitmapAreaBytes, 0);
  if (Status st = file->WriteBitmap(empty); !st.ok()) {
    return st;
  }
  if (Status st = file->WriteSuperblock(); !st.ok()) {
    return st;
  }
  if (Status st = SyncDirectoryOf(path); !st.ok()) {
    return st;
  }
  return file;
}

Status MetadataFile::WriteSuperblock() {
  const uint64_t seq = seq_ + 1;
  const std::string text = EncodeSuperblock(current_, seq);
  CHECK(text.size() < kSuperblockBytes);
  std::vector<std::byte> slot(kSuperblockBytes);
  std::memcpy(slot.data(), text.data(), text.size());
  if (Status st = PwriteAll(fd_, slot, (seq % 2) * kSuperblockBytes, path_); !st.ok()) {
    return st;
  }
  if (::fdatasync(fd_) != 0) {
    return Status::FromErrno("fdatasync " + path_);
  }
  seq_ = seq;
  return Status::Ok();
}

base::Result<std::vector<uint8_t>> MetadataFile::ReadBitmap(uint64_t* torn_pages) {
  const uint64_t pages = page_count();
  std::vector<uint8_t> bits(pages * kBitmapAreaBytes, 0);
  std::vector<std::byte> page(kBitmapPageBytes);
  uint64_t torn = 0;
  for (uint64_t p = 0; p < pages; ++p) {
    auto got = PreadAll(fd_, page, kBitmapOffsetBytes + p * kBitmapPageBytes, path_);
    if (!got.ok()) {
      return got.status();
    }
    std::span<uint8_t> area(bits.data() + p * kBitmapAreaBytes, kBitmapAreaBytes);
    if (got.value() != kBitmapPageBytes ||
        !DecodeBitmapPage(static_cast<uint32_t>(p), page, area)) {
      std::memset(area.data(), 0xff, area.size());
      ++torn;
    }
  }
  // Bits past the last region mean nothing; keep them clear so counts stay exact.
  const uint64_t regions = region_count();
  for (uint64_t r = regions; r < pages * kBitsPerPage; ++r) {
    bits[r / 8] &= static_cast<uint8_t>(~(1u << (r % 8)));
  }
  if (torn_pages != nullptr) {
    *torn_pages = torn;
  }
  return bits;
}

Status MetadataFile::WriteBitmap(std::span<const uint8_t> bits) {
  CHECK(bits.size() == page_count() * kBitmapAreaBytes);
  std::vector<std::byte> pages(page_count() * kBitmapPageBytes);
  for (uint64_t p = 0; p < page_count(); ++p) {
    EncodeBitmapPage(static_cast<uint32_t>(p), bits.subspan(p * kBitmapAreaBytes, kBitmapAreaBytes),
                     std::span<std::byte>(pages).subspan(p * kBitmapPageBytes, kBitmapPageBytes));
  }
  if (Status st = PwriteAll(fd_, pages, kBitmapOffsetBytes, path_); !st.ok()) {
    return st;
  }
  if (::fdatasync(fd_) != 0) {
    return Status::FromErrno("fdatasync " + path_);
  }
  return Status::Ok();
}

}  // namespace mirror
