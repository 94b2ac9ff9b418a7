// Proves the metadata file round-trips its superblock and bitmap, that an update survives a torn
// write of the next superblock slot (the previous state is used), that a file with no valid
// superblock is refused rather than taken for a new volume, that a torn bitmap page reads as
// all set, and that two processes cannot hold the same metadata.

#include "mirror/metadata.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

namespace mirror {
namespace {

class MetadataTest : public ::testing::Test {
 protected:
  void TearDown() override { std::filesystem::remove(path_); }

  VolumeMetadata Sample() {
    VolumeMetadata md;
    md.volume_uuid = NewVolumeUuid();
    md.size_bytes = 100ull << 30;  // 1.6M regions: several bitmap pages.
    md.node_id = "a";
    md.disk = DiskState::kUpToDate;
    md.peer_disk = DiskState::kOutdated;
    md.clean = true;
    md.gens.current = 0x1111;
    md.gens.bitmap = 0x2222;
    md.gens.history = {0x3333, 0x4444};
    return md;
  }

  // Overwrites `length` bytes at `offset` with garbage, as a torn or corrupted write would.
  void Scribble(uint64_t offset, size_t length) {
    const int fd = ::open(path_.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    std::vector<char> junk(length, 'x');
    ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), static_cast<off_t>(offset)),
              static_cast<ssize_t>(length));
    ::close(fd);
  }

  std::string path_ = "/tmp/nbdmirror-meta-test-" + std::to_string(::getpid());
};

TEST_F(MetadataTest, MissingFileIsNotAnError) {
  auto opened = MetadataFile::Open(path_);
  ASSERT_TRUE(opened.ok());
  EXPECT_FALSE(opened.value().has_value());
}

TEST_F(MetadataTest, CreatedMetadataLoadsBackWithEveryField) {
  const VolumeMetadata md = Sample();
  {
    auto created = MetadataFile::Create(path_, md);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    EXPECT_GT(created.value()->page_count(), 1u);
  }
  auto opened = MetadataFile::Open(path_);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  ASSERT_TRUE(opened.value().has_value());
  const VolumeMetadata& got = (*opened.value())->get();
  EXPECT_EQ(got.volume_uuid, md.volume_uuid);
  EXPECT_EQ(got.size_bytes, md.size_bytes);
  EXPECT_EQ(got.node_id, "a");
  EXPECT_EQ(got.disk, DiskState::kUpToDate);
  EXPECT_EQ(got.peer_disk, DiskState::kOutdated);
  EXPECT_TRUE(got.clean);
  EXPECT_EQ(got.gens, md.gens);
  EXPECT_EQ(got.region_bytes, 64u * 1024);
  uint64_t torn = 99;
  auto bits = (*opened.value())->ReadBitmap(&torn);
  ASSERT_TRUE(bits.ok());
  EXPECT_EQ(torn, 0u);
  for (uint8_t byte : bits.value()) {
    ASSERT_EQ(byte, 0);
  }
}

TEST_F(MetadataTest, TornUpdateFallsBackToThePreviousSuperblock) {
  {
    auto file = MetadataFile::Create(path_, Sample());
    ASSERT_TRUE(file.ok());
    ASSERT_TRUE(file.value()->Update([](VolumeMetadata& md) { md.gens.current = 0x5555; }).ok());
    ASSERT_TRUE(file.value()->Update([](VolumeMetadata& md) { md.gens.current = 0x6666; }).ok());
  }
  // Three writes: seq 1 (slot 1), seq 2 (slot 0), seq 3 (slot 1). Tear the newest.
  Scribble(kSuperblockBytes + 100, 50);
  auto opened = MetadataFile::Open(path_);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ((*opened.value())->get().gens.current, 0x5555u);
  // The next update goes to the torn slot and wins from then on.
  ASSERT_TRUE((*opened.value())->Update([](VolumeMetadata& md) { md.gens.current = 0x7777; }).ok());
  opened.value()->reset();
  auto reopened = MetadataFile::Open(path_);
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ((*reopened.value())->get().gens.current, 0x7777u);
}

TEST_F(MetadataTest, NoValidSuperblockIsRefused) {
  {
    auto file = MetadataFile::Create(path_, Sample());
    ASSERT_TRUE(file.ok());
    ASSERT_TRUE(file.value()->Update([](VolumeMetadata& md) { md.clean = false; }).ok());
  }
  Scribble(200, 10);
  Scribble(kSuperblockBytes + 200, 10);
  auto opened = MetadataFile::Open(path_);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().errno_value(), EBADMSG);
}

TEST_F(MetadataTest, AlteredFieldFailsTheChecksum) {
  const std::string text = EncodeSuperblock(Sample(), 7);
  std::string altered = text;
  altered.replace(altered.find("disk=UpToDate"), 13, "disk=Outdated");
  std::vector<std::byte> slot(kSuperblockBytes);
  std::memcpy(slot.data(), text.data(), text.size());
  ASSERT_TRUE(DecodeSuperblock(slot).ok());
  std::memcpy(slot.data(), altered.data(), altered.size());
  EXPECT_EQ(DecodeSuperblock(slot).status().errno_value(), EBADMSG);
}

TEST_F(MetadataTest, BitmapRoundTripsAndATornPageReadsAsAllSet) {
  auto file = MetadataFile::Create(path_, Sample());
  ASSERT_TRUE(file.ok());
  MetadataFile& meta = *file.value();
  std::vector<uint8_t> bits(meta.page_count() * kBitmapAreaBytes, 0);
  bits[0] = 0x81;
  bits[kBitmapAreaBytes + 5] = 0x10;  // Page 1.
  ASSERT_TRUE(meta.WriteBitmap(bits).ok());
  uint64_t torn = 0;
  auto read = meta.ReadBitmap(&torn);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(torn, 0u);
  EXPECT_EQ(read.value(), bits);

  Scribble(kBitmapOffsetBytes + kBitmapPageBytes + 300, 3);  // Tear page 1.
  read = meta.ReadBitmap(&torn);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(torn, 1u);
  EXPECT_EQ(read.value()[0], 0x81);      // Page 0 intact.
  EXPECT_EQ(read.value()[1], 0x00);
  for (uint64_t i = kBitmapAreaBytes; i < 2 * kBitmapAreaBytes; ++i) {
    ASSERT_EQ(read.value()[i], 0xff) << i;  // Page 1: every region taken as changed.
  }
}

TEST_F(MetadataTest, PagesCannotBeSwapped) {
  std::vector<uint8_t> bits(kBitmapAreaBytes, 0x5a);
  std::vector<std::byte> page(kBitmapPageBytes);
  EncodeBitmapPage(3, bits, page);
  std::vector<uint8_t> out(kBitmapAreaBytes);
  EXPECT_TRUE(DecodeBitmapPage(3, page, out));
  EXPECT_FALSE(DecodeBitmapPage(4, page, out));
}

TEST_F(MetadataTest, SecondOpenWhileHeldIsRefused) {
  auto file = MetadataFile::Create(path_, Sample());
  ASSERT_TRUE(file.ok());
  auto again = MetadataFile::Open(path_);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().errno_value(), EBUSY);
}

}  // namespace
}  // namespace mirror
