// Proves the io_uring store against real files: aligned and unaligned I/O round-trip, zeroing
// and discard read back as zeroes, the allocation map sees holes, datasync completes, and
// out-of-range requests are refused. Runs on the build machine's disk (O_DIRECT) and on
// tmpfs (/dev/shm, which refuses O_DIRECT, so the buffered fallback is exercised).

#include "mirror/uring_store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>

#include "tests/unit/support/loop.h"

namespace mirror {
namespace {

constexpr uint64_t kSize = 8 << 20;

struct AlignedBuffer {
  explicit AlignedBuffer(size_t n)
      : data(static_cast<std::byte*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))),
        size(n) {}
  ~AlignedBuffer() { std::free(data); }
  std::span<std::byte> span() const { return {data, size}; }
  std::byte* data;
  size_t size;
};

class UringStoreTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    const std::string dir = GetParam();
    if (!std::filesystem::exists(dir)) {
      GTEST_SKIP() << dir << " does not exist";
    }
    path_ = dir + "/nbdmirror-store-test-" + std::to_string(::getpid()) + ".img";
    int fd = ::open(path_.c_str(), O_CREAT | O_TRUNC | O_RDWR, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, kSize), 0);
    ::close(fd);
    auto store = UringStore::Open(io_, path_, {});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = store.TakeValue();
  }
  void TearDown() override {
    store_.reset();
    if (!path_.empty()) {
      std::filesystem::remove(path_);
    }
  }
  base::Status Wait(const std::function<base::Status(StoreDone)>& submit) {
    bool done = false;
    base::Status result;
    base::Status submitted = submit([&](base::Status st) {
      result = std::move(st);
      done = true;
    });
    if (!submitted.ok()) {
      return submitted;
    }
    EXPECT_FALSE(done) << "callback ran inside the submit call";
    EXPECT_TRUE(testing_support::RunUntil(io_, [&] { return done; }));
    return result;
  }

  asio::io_context io_;
  std::string path_;
  std::unique_ptr<UringStore> store_;
};

void Fill(std::span<std::byte> s, unsigned seed) {
  std::mt19937 rng(seed);
  for (auto& b : s) {
    b = std::byte(rng() & 0xff);
  }
}

TEST_P(UringStoreTest, AlignedWriteReadsBack) {
  AlignedBuffer in(64 * 1024), out(64 * 1024);
  Fill(in.span(), 1);
  ASSERT_TRUE(Wait([&](StoreDone d) { return store_->Write(4096, in.span(), std::move(d)); }).ok());
  ASSERT_TRUE(Wait([&](StoreDone d) { return store_->Read(4096, out.span(), std::move(d)); }).ok());
  EXPECT_EQ(std::memcmp(in.data, out.data, in.size), 0);
  EXPECT_TRUE(Wait([&](StoreDone d) { return store_->Datasync(std::move(d)); }).ok());
}

TEST_P(UringStoreTest, UnalignedWriteReadsBackThroughTheBufferedPath) {
  AlignedBuffer in(10000), out(10000);
  Fill(in.span(), 2);
  // Odd offset, odd length, buffer offset by 3 bytes: nothing here suits O_DIRECT.
  auto src = in.span().subspan(3, 7001);
  ASSERT_TRUE(Wait([&](StoreDone d) { return store_->Write(12345, src, std::move(d)); }).ok());
  // An aligned read covering it sees the data (direct read after buffered write).
  AlignedBuffer whole(16384);
  ASSERT_TRUE(
      Wait([&](StoreDone d) { return store_->Read(8192, whole.span(), std::move(d)); }).ok());
  EXPECT_EQ(std::memcmp(whole.data + (12345 - 8192), src.data(), src.size()), 0);
  auto dst = out.span().subspan(1, 7001);
  ASSERT_TRUE(Wait([&](StoreDone d) { return store_->Read(12345, dst, std::move(d)); }).ok());
  EXPECT_EQ(std::memcmp(dst.data(), src.data(), src.size()), 0);
}

// A buffered write into part of a block rewrites the whole block later, so an unaligned write
// must keep other writes out of its blocks (64 KiB at least); aligned writes lock just their
// bytes. With no O_DIRECT (tmpfs) every write shares the page cache and nothing widens.
TEST_P(UringStoreTest, FootprintWidensOnlyUnalignedWritesBesideDirectIo) {
  auto same = [](ByteRange r, uint64_t begin, uint64_t end) {
    return r.offset_bytes == begin && r.offset_bytes + r.length_bytes == end;
  };
  EXPECT_TRUE(same(store_->Footprint(4096, 8192), 4096, 12288));
  if (!store_->direct_io()) {
    EXPECT_TRUE(same(store_->Footprint(100, 10), 100, 110));
    return;
  }
  const uint64_t block = store_->cache_block_bytes();
  EXPECT_GE(block, 64u * 1024);
  EXPECT_EQ(block % 4096, 0u);
  EXPECT_TRUE(same(store_->Footprint(512, 512), 512, 1024)) << "aligned: only its bytes";
  EXPECT_TRUE(same(store_->Footprint(0, 100), 0, block));
  EXPECT_TRUE(same(store_->Footprint(block + 512, 100), block, 2 * block));
  EXPECT_TRUE(same(store_->Footprint(block - 1, 2), 0, 2 * block)) << "straddles two blocks";
  EXPECT_TRUE(same(store_->Footprint(kSize - 10, 10), kSize - block, kSize))
      << "never past the end";
}

// RWF_DSYNC on both paths (O_DIRECT for aligned requests, the page cache for the others): the
// data reads back; that the kernel flushed it before completing is its promise, not testable
// here short of pulling the power.
TEST_P(UringStoreTest, WriteThroughReadsBackOnBothPaths) {
  AlignedBuffer in(64 * 1024), out(64 * 1024);
  Fill(in.span(), 5);
  ASSERT_TRUE(
      Wait([&](StoreDone d) { return store_->WriteThrough(8192, in.span(), std::move(d)); }).ok());
  ASSERT_TRUE(Wait([&](StoreDone d) { return store_->Read(8192, out.span(), std::move(d)); }).ok());
  EXPECT_EQ(std::memcmp(in.data, out.data, in.size), 0);
  auto src = in.span().subspan(5, 3001);
  ASSERT_TRUE(Wait([&](StoreDone d) { return store_->WriteThrough(777, src, std::move(d)); }).ok());
  auto dst = out.span().subspan(0, 3001);
  ASSERT_TRUE(Wait([&](StoreDone d) { return store_->Read(777, dst, std::move(d)); }).ok());
  EXPECT_EQ(std::memcmp(dst.data(), src.data(), src.size()), 0);
  bool called = false;
  base::Status st =
      store_->WriteThrough(kSize - 512, in.span(), [&](base::Status) { called = true; });
  EXPECT_EQ(st.errno_value(), EINVAL) << "past the end";
  testing_support::Drain(io_);
  EXPECT_FALSE(called);
}

TEST_P(UringStoreTest, ZeroRangeAndDiscardReadAsZeroes) {
  AlignedBuffer in(1 << 20), out(1 << 20);
  Fill(in.span(), 3);
  ASSERT_TRUE(Wait([&](StoreDone d) { return store_->Write(0, in.span(), std::move(d)); }).ok());
  nbd::ZeroOptions no_hole;
  no_hole.may_punch_hole = false;
  ASSERT_TRUE(Wait([&](StoreDone d) {
                return store_->ZeroRange(1000, 100000, no_hole, std::move(d));
              }).ok());
  ASSERT_TRUE(
      Wait([&](StoreDone d) { return store_->Discard(512 * 1024, 65536, std::move(d)); }).ok());
  ASSERT_TRUE(Wait([&](StoreDone d) { return store_->Read(0, out.span(), std::move(d)); }).ok());
  for (size_t i = 0; i < out.size; ++i) {
    const bool zeroed = (i >= 1000 && i < 101000) || (i >= 512 * 1024 && i < 512 * 1024 + 65536);
    ASSERT_EQ(out.data[i], zeroed ? std::byte{0} : in.data[i]) << "byte " << i;
  }
}

TEST_P(UringStoreTest, AllocationSeesHolesAndData) {
  AlignedBuffer in(1 << 20);
  Fill(in.span(), 4);
  ASSERT_TRUE(
      Wait([&](StoreDone d) { return store_->Write(2 << 20, in.span(), std::move(d)); }).ok());
  auto extents = store_->Allocation(0, kSize);
  ASSERT_TRUE(extents.ok());
  uint64_t pos = 0;
  bool saw_data_at_2m = false;
  bool saw_hole_at_0 = false;
  for (const auto& e : extents.value()) {
    if (pos == 0 && e.hole) {
      saw_hole_at_0 = true;
    }
    if (!e.hole && pos <= (2u << 20) && pos + e.length_bytes >= (3u << 20)) {
      saw_data_at_2m = true;
    }
    pos += e.length_bytes;
  }
  EXPECT_EQ(pos, kSize);
  EXPECT_TRUE(saw_hole_at_0);
  EXPECT_TRUE(saw_data_at_2m);
}

// Allocation remembers the last data run it found (SEEK_HOLE can cost as much as the run is
// long); a discard or a zeroing inside that run must still show up as the hole it made.
TEST_P(UringStoreTest, AllocationSeesAHolePunchedInsideAKnownDataRun) {
  AlignedBuffer in(4 << 20);
  Fill(in.span(), 5);
  ASSERT_TRUE(Wait([&](StoreDone d) { return store_->Write(0, in.span(), std::move(d)); }).ok());
  auto whole = store_->Allocation(0, 1 << 20);  // Learns the run [0, 4 MiB).
  ASSERT_TRUE(whole.ok());
  ASSERT_EQ(whole.value().size(), 1u);
  EXPECT_FALSE(whole.value()[0].hole);
  // Small windows walked through the run are answered from it, merged into one extent.
  auto window = store_->Allocation(3 << 20, 2 << 20);
  ASSERT_TRUE(window.ok());
  ASSERT_FALSE(window.value().empty());
  EXPECT_FALSE(window.value()[0].hole);
  EXPECT_EQ(window.value()[0].length_bytes, 1u << 20);

  ASSERT_TRUE(
      Wait([&](StoreDone d) { return store_->Discard(1 << 20, 1 << 20, std::move(d)); }).ok());
  auto after = store_->Allocation(1 << 20, 1 << 20);
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after.value().size(), 1u);
  EXPECT_TRUE(after.value()[0].hole) << "the punched MiB is still reported as data";

  nbd::ZeroOptions punch;
  punch.may_punch_hole = true;
  ASSERT_TRUE(store_->Allocation(2 << 20, 1 << 20).ok());  // Learns [2 MiB, 4 MiB).
  ASSERT_TRUE(Wait([&](StoreDone d) {
                return store_->ZeroRange(3 << 20, 1 << 20, punch, std::move(d));
              }).ok());
  auto zeroed = store_->Allocation(3 << 20, 1 << 20);
  ASSERT_TRUE(zeroed.ok());
  ASSERT_EQ(zeroed.value().size(), 1u);
  EXPECT_TRUE(zeroed.value()[0].hole);
}

TEST_P(UringStoreTest, FastZeroNeverWritesSlowly) {
  nbd::ZeroOptions fast;
  fast.may_punch_hole = false;
  fast.fast_only = true;
  base::Status st =
      Wait([&](StoreDone d) { return store_->ZeroRange(0, 1 << 20, fast, std::move(d)); });
  // Either the file system zeroes by metadata (ext4) or it says ENOTSUP (tmpfs).
  EXPECT_TRUE(st.ok() || st.errno_value() == ENOTSUP) << st.ToString();
}

TEST_P(UringStoreTest, OutOfRangeIsRefusedWithoutCallback) {
  AlignedBuffer b(4096);
  bool called = false;
  base::Status st = store_->Write(kSize - 512, b.span(), [&](base::Status) { called = true; });
  EXPECT_EQ(st.errno_value(), EINVAL);
  st = store_->Read(~0ull - 100, b.span(), [&](base::Status) { called = true; });
  EXPECT_EQ(st.errno_value(), EINVAL);
  testing_support::Drain(io_);
  EXPECT_FALSE(called);
}

TEST_P(UringStoreTest, ManyConcurrentWritesAllComplete) {
  // More operations than ring entries: the store must queue, not drop or crash.
  constexpr int kCount = 1000;
  AlignedBuffer b(4096);
  Fill(b.span(), 5);
  int completed = 0;
  for (int i = 0; i < kCount; ++i) {
    ASSERT_TRUE(store_->Write(static_cast<uint64_t>(i) * 4096 % kSize, b.span(),
                              [&](base::Status st) { completed += st.ok(); })
                    .ok());
  }
  EXPECT_TRUE(testing_support::RunUntil(io_, [&] { return completed == kCount; }));
}

INSTANTIATE_TEST_SUITE_P(FileSystems, UringStoreTest, ::testing::Values("/tmp", "/dev/shm"));

}  // namespace
}  // namespace mirror
