// Proves request framing and validation: bad magic is fatal, everything else a well-framed
// client can send is answered with the right NBD error, including ranges that wrap 2^64.

#include "nbd-server/request.h"
#include "nbd-server/nbd_errors.h"

#include <cerrno>

#include <gtest/gtest.h>

#include <limits>

namespace nbd {
namespace {

std::array<std::byte, kRequestHeaderBytes> Header(uint32_t magic, uint16_t flags, uint16_t type,
                                                  uint64_t cookie, uint64_t offset,
                                                  uint32_t length) {
  std::array<std::byte, kRequestHeaderBytes> raw{};
  StoreBe32(raw.data(), magic);
  StoreBe16(raw.data() + 4, flags);
  StoreBe16(raw.data() + 6, type);
  StoreBe64(raw.data() + 8, cookie);
  StoreBe64(raw.data() + 16, offset);
  StoreBe32(raw.data() + 24, length);
  return raw;
}

Request Make(Command c, uint64_t offset, uint32_t length, uint16_t flags = 0) {
  Request r;
  r.type = static_cast<uint16_t>(c);
  r.offset_bytes = offset;
  r.length_bytes = length;
  r.flags = flags;
  return r;
}

class RequestTest : public ::testing::Test {
 protected:
  RequestTest() { info_.size_bytes = 1 << 20; }
  ExportInfo info_;
  Negotiated plain_;
};

TEST_F(RequestTest, ParsesFieldsBigEndian) {
  auto raw = Header(kRequestMagic, 1, 1, 0x0102030405060708ULL, 4096, 512);
  auto r = ParseRequestHeader(raw);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.value().flags, 1);
  EXPECT_EQ(r.value().type, 1);
  EXPECT_EQ(r.value().cookie, 0x0102030405060708ULL);
  EXPECT_EQ(r.value().offset_bytes, 4096u);
  EXPECT_EQ(r.value().length_bytes, 512u);
  EXPECT_TRUE(r.value().HasPayload());
}

TEST_F(RequestTest, BadMagicIsFatal) {
  EXPECT_FALSE(ParseRequestHeader(Header(kSimpleReplyMagic, 0, 0, 0, 0, 0)).ok());
}

TEST_F(RequestTest, InRangeRequestsPass) {
  EXPECT_TRUE(ValidateRequest(Make(Command::kRead, 0, 4096), info_, plain_).ok());
  EXPECT_TRUE(ValidateRequest(Make(Command::kWrite, (1 << 20) - 512, 512), info_, plain_).ok());
  EXPECT_TRUE(ValidateRequest(Make(Command::kFlush, 0, 0), info_, plain_).ok());
  EXPECT_TRUE(ValidateRequest(Make(Command::kRead, 0, 0), info_, plain_).ok());
}

TEST_F(RequestTest, PastTheEndIsEinvalForReadsAndEnospcForWrites) {
  EXPECT_EQ(ValidateRequest(Make(Command::kRead, 1 << 20, 1), info_, plain_).nbd_error,
            kErrInvalid);
  EXPECT_EQ(ValidateRequest(Make(Command::kWrite, (1 << 20) - 1, 2), info_, plain_).nbd_error,
            kErrNoSpace);
  EXPECT_EQ(ValidateRequest(Make(Command::kWriteZeroes, 1 << 21, 0), info_, plain_).nbd_error,
            kErrNoSpace);
  EXPECT_EQ(ValidateRequest(Make(Command::kTrim, 0, (1 << 20) + 1), info_, plain_).nbd_error,
            kErrInvalid);
}

TEST_F(RequestTest, OffsetPlusLengthWrappingIsRejected) {
  const uint64_t huge = std::numeric_limits<uint64_t>::max() - 10;
  EXPECT_FALSE(ValidateRequest(Make(Command::kRead, huge, 4096), info_, plain_).ok());
  EXPECT_FALSE(ValidateRequest(Make(Command::kWrite, huge, 4096), info_, plain_).ok());
}

TEST_F(RequestTest, UnknownCommandsAndFlagsAreEinval) {
  Request unknown = Make(Command::kRead, 0, 0);
  unknown.type = 42;
  EXPECT_EQ(ValidateRequest(unknown, info_, plain_).nbd_error, kErrInvalid);
  EXPECT_EQ(ValidateRequest(Make(Command::kWrite, 0, 512, kCmdFlagNoHole), info_, plain_)
                .nbd_error,
            kErrInvalid);
  EXPECT_EQ(ValidateRequest(Make(Command::kRead, 0, 512, 0x100), info_, plain_).nbd_error,
            kErrInvalid);
  EXPECT_EQ(ValidateRequest(Make(Command::kRead, 0, 512, kCmdFlagDf), info_, plain_).nbd_error,
            kErrInvalid)
      << "DF is only valid with structured replies";
}

TEST_F(RequestTest, FuaIsAcceptedOnEveryCommand) {
  for (Command c : {Command::kRead, Command::kWrite, Command::kFlush, Command::kTrim,
                    Command::kCache, Command::kWriteZeroes}) {
    EXPECT_TRUE(ValidateRequest(Make(c, 0, 512, kCmdFlagFua), info_, plain_).ok())
        << CommandName(static_cast<uint16_t>(c));
  }
  EXPECT_TRUE(ValidateRequest(Make(Command::kWriteZeroes, 0, 512,
                                   kCmdFlagFua | kCmdFlagNoHole | kCmdFlagFastZero),
                              info_, plain_)
                  .ok());
}

TEST_F(RequestTest, OversizedPayloadIsRejectedButHugeTrimIsNot) {
  info_.size_bytes = 1ull << 40;
  EXPECT_EQ(ValidateRequest(Make(Command::kWrite, 0, (32u << 20) + 1), info_, plain_).nbd_error,
            kErrInvalid);
  EXPECT_EQ(ValidateRequest(Make(Command::kRead, 0, 64u << 20), info_, plain_).nbd_error,
            kErrInvalid);
  EXPECT_TRUE(ValidateRequest(Make(Command::kTrim, 0, 0xffffffffu), info_, plain_).ok());
  EXPECT_TRUE(ValidateRequest(Make(Command::kWriteZeroes, 0, 0xffffffffu), info_, plain_).ok());
}

TEST_F(RequestTest, BlockStatusNeedsTheMetaContext) {
  EXPECT_EQ(ValidateRequest(Make(Command::kBlockStatus, 0, 512), info_, plain_).nbd_error,
            kErrInvalid);
  Negotiated with;
  with.structured_replies = true;
  with.base_allocation = true;
  EXPECT_TRUE(
      ValidateRequest(Make(Command::kBlockStatus, 0, 512, kCmdFlagReqOne), info_, with).ok());
  EXPECT_FALSE(ValidateRequest(Make(Command::kBlockStatus, 0, 0), info_, with).ok());
}

TEST_F(RequestTest, ReadOnlyExportRefusesWritesWithEperm) {
  info_.read_only = true;
  EXPECT_EQ(ValidateRequest(Make(Command::kWrite, 0, 512), info_, plain_).nbd_error, kErrPerm);
  EXPECT_TRUE(ValidateRequest(Make(Command::kRead, 0, 512), info_, plain_).ok());
}

// NBD_ENOTSUP and NBD_EOVERFLOW are each reserved for one case; a device failing with those
// errnos elsewhere is an I/O error to the client.
TEST(NbdErrorsTest, NotSupAndOverflowOnlyWhereTheSpecAllowsThem) {
  const base::Status notsup = base::Status::Error(ENOTSUP, "no");
  const base::Status overflow = base::Status::Error(EOVERFLOW, "too big");
  const auto zeroes = static_cast<uint16_t>(Command::kWriteZeroes);
  const auto read = static_cast<uint16_t>(Command::kRead);
  const auto trim = static_cast<uint16_t>(Command::kTrim);
  EXPECT_EQ(ToNbdError(notsup, zeroes, kCmdFlagFastZero), kErrNotSup);
  EXPECT_EQ(ToNbdError(notsup, zeroes, 0), kErrIo);
  EXPECT_EQ(ToNbdError(notsup, trim, 0), kErrIo);
  EXPECT_EQ(ToNbdError(overflow, read, kCmdFlagDf), kErrOverflow);
  EXPECT_EQ(ToNbdError(overflow, read, 0), kErrIo);
  EXPECT_EQ(ToNbdError(base::Status::Error(ENOSPC, "full"), zeroes, 0), kErrNoSpace);
  EXPECT_EQ(ToNbdError(base::Status::Ok(), read, 0), 0u);
}

}  // namespace
}  // namespace nbd
