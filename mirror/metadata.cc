#include "mirror/metadata.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "base/check.h"
#include "base/crc32c.h"

namespace mirror {

using base::Status;

namespace {

std::span<const std::byte> AsBytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

std::string Hex(uint32_t value) {
  char buf[9];
  std::snprintf(buf, sizeof(buf), "%08x", value);
  return buf;
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

base::Result<std::optional<VolumeMetadata>> LoadMetadata(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!std::filesystem::exists(path)) {
      return std::optional<VolumeMetadata>();
    }
    return Status::FromErrno("open metadata " + path);
  }
  std::stringstream content;
  content << in.rdbuf();
  const std::string text = content.str();
  const size_t crc_at = text.rfind("crc32c=");
  if (crc_at == std::string::npos || (crc_at > 0 && text[crc_at - 1] != '\n')) {
    return Status::Error(EBADMSG, "metadata " + path + " has no checksum line (torn write?)");
  }
  const std::string body = text.substr(0, crc_at);
  std::string stored = text.substr(crc_at + 7);
  while (!stored.empty() && stored.back() == '\n') {
    stored.pop_back();
  }
  if (stored != Hex(base::Crc32c(0, AsBytes(body)))) {
    return Status::Error(EBADMSG, "metadata " + path + " fails its checksum; refusing to guess");
  }
  std::map<std::string, std::string> fields;
  std::istringstream lines(body);
  for (std::string line; std::getline(lines, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) {
      fields[line.substr(0, eq)] = line.substr(eq + 1);
    }
  }
  VolumeMetadata md;
  md.volume_uuid = fields["volume_uuid"];
  md.node_id = fields["node_id"];
  const std::string& size = fields["size_bytes"];
  auto [end, err] = std::from_chars(size.data(), size.data() + size.size(), md.size_bytes);
  auto disk = ParseDiskState(fields["disk"]);
  auto peer_disk = ParseDiskState(fields["peer_disk"]);
  if (err != std::errc() || !disk || !peer_disk || fields["version"] != "1") {
    return Status::Error(EBADMSG, "metadata " + path + " has missing or unknown fields");
  }
  md.disk = *disk;
  md.peer_disk = *peer_disk;
  md.clean = fields["clean"] == "true";
  return std::optional<VolumeMetadata>(md);
}

Status SaveMetadata(const std::string& path, const VolumeMetadata& md) {
  std::ostringstream body;
  body << "# nbdmirror volume metadata; do not edit (checksummed)\n"
       << "version=1\n"
       << "volume_uuid=" << md.volume_uuid << "\n"
       << "size_bytes=" << md.size_bytes << "\n"
       << "node_id=" << md.node_id << "\n"
       << "disk=" << DiskStateName(md.disk) << "\n"
       << "peer_disk=" << DiskStateName(md.peer_disk) << "\n"
       << "clean=" << (md.clean ? "true" : "false") << "\n";
  const std::string text = body.str() + "crc32c=" + Hex(base::Crc32c(0, AsBytes(body.str()))) +
                           "\n";
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return Status::FromErrno("create " + tmp);
  }
  const ssize_t written = ::write(fd, text.data(), text.size());
  int saved = errno;
  if (written != static_cast<ssize_t>(text.size())) {
    ::close(fd);
    return Status::Error(written < 0 ? saved : EIO, "write " + tmp);
  }
  if (::fdatasync(fd) != 0) {
    saved = errno;
    ::close(fd);
    return Status::Error(saved, "fdatasync " + tmp);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return Status::FromErrno("rename " + tmp);
  }
  return SyncDirectoryOf(path);
}

}  // namespace mirror
