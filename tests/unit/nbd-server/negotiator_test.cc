// Proves the handshake state machine answers every option the way the NBD spec requires, by
// feeding it option bytes directly and decoding the replies it produces.

#include "nbd-server/negotiator.h"

#include <gtest/gtest.h>

#include "nbd-server/protocol.h"

namespace nbd {
namespace {

struct DecodedReply {
  uint32_t option;
  uint32_t type;
  std::vector<std::byte> payload;
};

std::vector<DecodedReply> Decode(const std::vector<std::byte>& bytes) {
  std::vector<DecodedReply> out;
  size_t pos = 0;
  while (pos < bytes.size()) {
    EXPECT_GE(bytes.size() - pos, 20u);
    EXPECT_EQ(LoadBe64(bytes.data() + pos), kOptReplyMagic);
    DecodedReply r{LoadBe32(bytes.data() + pos + 8), LoadBe32(bytes.data() + pos + 12), {}};
    const uint32_t len = LoadBe32(bytes.data() + pos + 16);
    r.payload.assign(bytes.begin() + static_cast<long>(pos + 20),
                     bytes.begin() + static_cast<long>(pos + 20 + len));
    out.push_back(std::move(r));
    pos += 20 + len;
  }
  return out;
}

std::vector<std::byte> GoPayload(const std::string& name, std::vector<uint16_t> infos) {
  std::vector<std::byte> out;
  WireWriter w(out);
  w.U32(static_cast<uint32_t>(name.size()));
  w.Text(name);
  w.U16(static_cast<uint16_t>(infos.size()));
  for (uint16_t i : infos) {
    w.U16(i);
  }
  return out;
}

std::vector<std::byte> MetaPayload(const std::string& name, std::vector<std::string> queries) {
  std::vector<std::byte> out;
  WireWriter w(out);
  w.U32(static_cast<uint32_t>(name.size()));
  w.Text(name);
  w.U32(static_cast<uint32_t>(queries.size()));
  for (const auto& q : queries) {
    w.U32(static_cast<uint32_t>(q.size()));
    w.Text(q);
  }
  return out;
}

class NegotiatorTest : public ::testing::Test {
 protected:
  NegotiatorTest() {
    info_.name = "pg";
    info_.size_bytes = 1 << 30;
  }
  ExportInfo info_;
};

TEST_F(NegotiatorTest, GreetingIsFixedNewstyleWithNoZeroes) {
  Negotiator n(info_);
  auto g = n.Greeting();
  ASSERT_EQ(g.size(), kGreetingBytes);
  EXPECT_EQ(LoadBe64(g.data()), kNbdMagic);
  EXPECT_EQ(LoadBe64(g.data() + 8), kIHaveOpt);
  EXPECT_EQ(LoadBe16(g.data() + 16), kFlagFixedNewstyle | kFlagNoZeroes);
}

TEST_F(NegotiatorTest, UnknownClientFlagBitsAreRefused) {
  Negotiator n(info_);
  std::array<std::byte, 4> flags{std::byte{0}, std::byte{0}, std::byte{0}, std::byte{4}};
  EXPECT_FALSE(n.AcceptClientFlags(flags).ok());
  std::array<std::byte, 4> good{std::byte{0}, std::byte{0}, std::byte{0}, std::byte{3}};
  EXPECT_TRUE(n.AcceptClientFlags(good).ok());
  EXPECT_TRUE(n.negotiated().no_zeroes);
}

TEST_F(NegotiatorTest, OptionHeaderWithBadMagicOrHugeLengthIsRefused) {
  Negotiator n(info_);
  std::vector<std::byte> raw;
  WireWriter w(raw);
  w.U64(kIHaveOpt);
  w.U32(kOptGo);
  w.U32(kMaxOptionBytes + 1);
  EXPECT_FALSE(n.ParseOptionHeader(std::span<const std::byte, 16>(raw.data(), 16)).ok());
  raw[0] = std::byte{0};
  EXPECT_FALSE(n.ParseOptionHeader(std::span<const std::byte, 16>(raw.data(), 16)).ok());
}

TEST_F(NegotiatorTest, GoWithNoInfoRequestsSendsExportInfoThenAck) {
  Negotiator n(info_);
  OptionReply reply = n.HandleOption(kOptGo, GoPayload("", {}));
  EXPECT_EQ(reply.next, NextStep::kTransmission);
  auto replies = Decode(reply.bytes);
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(replies[0].type, kRepInfo);
  ASSERT_EQ(replies[0].payload.size(), 12u);
  EXPECT_EQ(LoadBe16(replies[0].payload.data()), kInfoExport);
  EXPECT_EQ(LoadBe64(replies[0].payload.data() + 2), info_.size_bytes);
  const uint16_t flags = LoadBe16(replies[0].payload.data() + 10);
  EXPECT_TRUE(flags & kTxHasFlags);
  EXPECT_TRUE(flags & kTxSendFlush);
  EXPECT_TRUE(flags & kTxSendFua);
  EXPECT_TRUE(flags & kTxCanMultiConn);
  EXPECT_FALSE(flags & kTxSendDf) << "DF needs structured replies";
  EXPECT_EQ(replies[1].type, kRepAck);
}

TEST_F(NegotiatorTest, InfoAndGoGiveTheSameAnswer) {
  Negotiator n(info_);
  auto info = n.HandleOption(kOptInfo, GoPayload("pg", {kInfoBlockSize, kInfoName}));
  EXPECT_EQ(info.next, NextStep::kContinue);
  auto go = n.HandleOption(kOptGo, GoPayload("pg", {kInfoBlockSize, kInfoName}));
  auto a = Decode(info.bytes);
  auto b = Decode(go.bytes);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].type, b[i].type);
    EXPECT_EQ(a[i].payload, b[i].payload);
  }
  bool saw_block_size = false;
  for (const auto& r : a) {
    if (r.type == kRepInfo && LoadBe16(r.payload.data()) == kInfoBlockSize) {
      saw_block_size = true;
      EXPECT_EQ(LoadBe32(r.payload.data() + 2), info_.min_block_bytes);
      EXPECT_EQ(LoadBe32(r.payload.data() + 6), info_.preferred_block_bytes);
      EXPECT_EQ(LoadBe32(r.payload.data() + 10), info_.max_payload_bytes);
    }
  }
  EXPECT_TRUE(saw_block_size);
}

TEST_F(NegotiatorTest, UnknownExportIsErrUnknownAndNegotiationGoesOn) {
  Negotiator n(info_);
  auto reply = n.HandleOption(kOptGo, GoPayload("other", {}));
  EXPECT_EQ(reply.next, NextStep::kContinue);
  auto r = Decode(reply.bytes);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrUnknown);
}

TEST_F(NegotiatorTest, MalformedGoIsErrInvalid) {
  Negotiator n(info_);
  auto payload = GoPayload("pg", {kInfoBlockSize});
  payload.pop_back();
  auto r = Decode(n.HandleOption(kOptGo, payload).bytes);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  // A name length pointing past the data.
  std::vector<std::byte> lying;
  WireWriter w(lying);
  w.U32(1000);
  w.U16(0);
  r = Decode(n.HandleOption(kOptGo, lying).bytes);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
}

TEST_F(NegotiatorTest, UnknownOptionsGetErrUnsup) {
  Negotiator n(info_);
  for (uint32_t opt : {kOptStartTls, 11u, 0x12345678u}) {
    auto reply = n.HandleOption(opt, {});
    EXPECT_EQ(reply.next, NextStep::kContinue);
    auto r = Decode(reply.bytes);
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].option, opt);
    EXPECT_EQ(r[0].type, kRepErrUnsup);
  }
}

TEST_F(NegotiatorTest, ExportNameSendsPaddingUnlessNoZeroes) {
  std::string name = "pg";
  auto bytes = std::as_bytes(std::span<const char>(name.data(), name.size()));
  Negotiator padded(info_);
  std::array<std::byte, 4> fixed_only{std::byte{0}, std::byte{0}, std::byte{0}, std::byte{1}};
  ASSERT_TRUE(padded.AcceptClientFlags(fixed_only).ok());
  auto reply = padded.HandleOption(kOptExportName, bytes);
  EXPECT_EQ(reply.next, NextStep::kTransmission);
  EXPECT_EQ(reply.bytes.size(), 8u + 2u + 124u);
  EXPECT_EQ(LoadBe64(reply.bytes.data()), info_.size_bytes);

  Negotiator bare(info_);
  std::array<std::byte, 4> no_zeroes{std::byte{0}, std::byte{0}, std::byte{0}, std::byte{3}};
  ASSERT_TRUE(bare.AcceptClientFlags(no_zeroes).ok());
  EXPECT_EQ(bare.HandleOption(kOptExportName, bytes).bytes.size(), 10u);
}

TEST_F(NegotiatorTest, ExportNameForUnknownExportDropsTheConnection) {
  Negotiator n(info_);
  std::string name = "nope";
  auto reply = n.HandleOption(kOptExportName,
                              std::as_bytes(std::span<const char>(name.data(), name.size())));
  EXPECT_EQ(reply.next, NextStep::kDrop);
  EXPECT_TRUE(reply.bytes.empty());
}

TEST_F(NegotiatorTest, ListNamesTheExportAndRejectsData) {
  Negotiator n(info_);
  auto r = Decode(n.HandleOption(kOptList, {}).bytes);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].type, kRepServer);
  EXPECT_EQ(LoadBe32(r[0].payload.data()), 2u);
  EXPECT_EQ(r[1].type, kRepAck);
  std::vector<std::byte> junk(3);
  EXPECT_EQ(Decode(n.HandleOption(kOptList, junk).bytes)[0].type, kRepErrInvalid);
}

TEST_F(NegotiatorTest, AbortIsAckedThenClosed) {
  Negotiator n(info_);
  auto reply = n.HandleOption(kOptAbort, {});
  EXPECT_EQ(reply.next, NextStep::kClose);
  EXPECT_EQ(Decode(reply.bytes)[0].type, kRepAck);
}

TEST_F(NegotiatorTest, MetaContextNeedsStructuredRepliesFirst) {
  Negotiator n(info_);
  auto r = Decode(n.HandleOption(kOptSetMetaContext, MetaPayload("", {kBaseAllocation})).bytes);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  EXPECT_FALSE(n.negotiated().base_allocation);
}

TEST_F(NegotiatorTest, SetBaseAllocationSelectsItAndIgnoresUnknownContexts) {
  Negotiator n(info_);
  EXPECT_EQ(Decode(n.HandleOption(kOptStructuredReply, {}).bytes)[0].type, kRepAck);
  auto r = Decode(n.HandleOption(kOptSetMetaContext,
                                 MetaPayload("pg", {"qemu:dirty-bitmap:x", kBaseAllocation}))
                      .bytes);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].type, kRepMetaContext);
  EXPECT_EQ(LoadBe32(r[0].payload.data()), kBaseAllocationContextId);
  EXPECT_EQ(r[1].type, kRepAck);
  EXPECT_TRUE(n.negotiated().base_allocation);
  EXPECT_TRUE(n.TransmissionFlags() & kTxSendDf);
  // Selecting nothing clears it again.
  r = Decode(n.HandleOption(kOptSetMetaContext, MetaPayload("pg", {})).bytes);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepAck);
  EXPECT_FALSE(n.negotiated().base_allocation);
}

// The spec: a SET_META_CONTEXT "replaces all previously-set metadata contexts (including when
// this command fails)", so a failed one leaves nothing selected.
TEST_F(NegotiatorTest, FailedSetMetaContextClearsTheSelection) {
  Negotiator n(info_);
  (void)n.HandleOption(kOptStructuredReply, {});
  (void)n.HandleOption(kOptSetMetaContext, MetaPayload("", {kBaseAllocation}));
  ASSERT_TRUE(n.negotiated().base_allocation);
  auto r = Decode(
      n.HandleOption(kOptSetMetaContext, MetaPayload("no-such-export", {kBaseAllocation})).bytes);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrUnknown);
  EXPECT_FALSE(n.negotiated().base_allocation) << "a failed SET kept the earlier selection";
}

TEST_F(NegotiatorTest, ListMetaContextWithNoQueriesListsBaseAllocation) {
  Negotiator n(info_);
  (void)n.HandleOption(kOptStructuredReply, {});
  auto r = Decode(n.HandleOption(kOptListMetaContext, MetaPayload("", {})).bytes);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].type, kRepMetaContext);
  EXPECT_FALSE(n.negotiated().base_allocation) << "listing must not select";
}

}  // namespace
}  // namespace nbd
