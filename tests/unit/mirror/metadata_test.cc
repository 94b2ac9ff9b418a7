// Proves the metadata file round-trips, and that a torn or altered file is refused rather than
// taken for a new volume.

#include "mirror/metadata.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace mirror {
namespace {

class MetadataTest : public ::testing::Test {
 protected:
  void TearDown() override { std::filesystem::remove(path_); }
  std::string path_ = "/tmp/nbdmirror-meta-test-" + std::to_string(::getpid());
};

TEST_F(MetadataTest, MissingFileIsNotAnError) {
  auto loaded = LoadMetadata(path_);
  ASSERT_TRUE(loaded.ok());
  EXPECT_FALSE(loaded.value().has_value());
}

TEST_F(MetadataTest, SavedMetadataLoadsBack) {
  VolumeMetadata md;
  md.volume_uuid = NewVolumeUuid();
  md.size_bytes = 123456789;
  md.node_id = "a";
  md.disk = DiskState::kUpToDate;
  md.peer_disk = DiskState::kOutdated;
  md.clean = true;
  ASSERT_TRUE(SaveMetadata(path_, md).ok());
  auto loaded = LoadMetadata(path_);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded.value().has_value());
  const VolumeMetadata& got = *loaded.value();
  EXPECT_EQ(got.volume_uuid, md.volume_uuid);
  EXPECT_EQ(got.size_bytes, md.size_bytes);
  EXPECT_EQ(got.node_id, "a");
  EXPECT_EQ(got.disk, DiskState::kUpToDate);
  EXPECT_EQ(got.peer_disk, DiskState::kOutdated);
  EXPECT_TRUE(got.clean);
}

TEST_F(MetadataTest, TornOrAlteredFileIsRefused) {
  VolumeMetadata md;
  md.volume_uuid = NewVolumeUuid();
  md.size_bytes = 1 << 20;
  md.node_id = "b";
  ASSERT_TRUE(SaveMetadata(path_, md).ok());
  std::stringstream content;
  content << std::ifstream(path_).rdbuf();
  const std::string text = content.str();

  std::ofstream(path_, std::ios::trunc) << text.substr(0, text.size() / 2);
  EXPECT_EQ(LoadMetadata(path_).status().errno_value(), EBADMSG);

  std::string altered = text;
  altered.replace(altered.find("disk=Inconsistent"), 17, "disk=UpToDate    ");
  std::ofstream(path_, std::ios::trunc) << altered;
  EXPECT_EQ(LoadMetadata(path_).status().errno_value(), EBADMSG);
}

}  // namespace
}  // namespace mirror
