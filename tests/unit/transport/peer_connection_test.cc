// PeerConnection over a real loopback TCP connection: a frame sent with SendAlone while the
// writer is idle leaves at once (no trip round the loop), and one the socket cannot take whole
// is finished by the writer before any frame sent after it, every byte intact and in order.

#include "transport/peer_connection.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "tests/unit/support/loop.h"
#include "transport/peer.pb.h"

namespace transport {
namespace {

namespace pb = nbdmirror::peer;

pb::Write WriteMessage(uint64_t seq, size_t length) {
  pb::Write write;
  write.set_seq(seq);
  write.set_length_bytes(static_cast<uint32_t>(length));
  return write;
}

class Collector final : public FrameHandler {
 public:
  void OnFrame(Frame frame) override { frames.push_back(std::move(frame)); }
  void OnClosed(const base::Status& why) override { closed = why; }
  std::vector<Frame> frames;
  base::Status closed = base::Status::Ok();
};

class PeerConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    asio::ip::tcp::acceptor acceptor(io_, {asio::ip::make_address("127.0.0.1"), 0});
    asio::ip::tcp::socket dialed(io_), accepted(io_);
    dialed.connect(acceptor.local_endpoint());
    acceptor.accept(accepted);
    sender_ = std::make_shared<PeerConnection>(
        std::make_unique<PeerStream>(std::move(dialed), nullptr), pool_, LinkTiming{});
    receiver_ = std::make_shared<PeerConnection>(
        std::make_unique<PeerStream>(std::move(accepted), nullptr), pool_, LinkTiming{});
    sender_->StartStreaming(&sender_frames_);
    receiver_->StartStreaming(&received_);
  }

  void TearDown() override {
    sender_->Close(base::Status::Ok());
    receiver_->Close(base::Status::Ok());
    testing_support::Drain(io_);
  }

  asio::io_context io_;
  base::BufferPool pool_{128u << 20};
  Collector sender_frames_;
  Collector received_;
  std::shared_ptr<PeerConnection> sender_;
  std::shared_ptr<PeerConnection> receiver_;
};

TEST_F(PeerConnectionTest, ALoneFrameLeavesWithoutATripRoundTheLoop) {
  std::vector<std::byte> payload(4096, std::byte{0x5a});
  sender_->SendAlone(FrameType::kWrite, WriteMessage(1, payload.size()), payload);
  EXPECT_EQ(sender_->sent_frames(), 1u) << "the frame waited for the writer";
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return received_.frames.size() == 1; }));
  pb::Write write;
  ASSERT_TRUE(received_.frames[0].Parse(write));
  EXPECT_EQ(write.seq(), 1u);
  ASSERT_EQ(received_.frames[0].payload.size(), payload.size());
  EXPECT_EQ(std::memcmp(received_.frames[0].payload.data(), payload.data(), payload.size()), 0);
}

// The receiving end is a plain socket the test reads by hand, so that it can make room in the
// socket while the rest of a cut-short frame still waits for the writer.
TEST(PeerConnectionRawTest, AFrameCutShortIsFinishedBeforeTheFramesSentAfterIt) {
  asio::io_context io;
  base::BufferPool pool{128u << 20};
  asio::ip::tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  asio::ip::tcp::socket dialed(io), raw(io);
  dialed.connect(acceptor.local_endpoint());
  acceptor.accept(raw);
  auto sender = std::make_shared<PeerConnection>(
      std::make_unique<PeerStream>(std::move(dialed), nullptr), pool, LinkTiming{});
  Collector ignored;
  sender->StartStreaming(&ignored);

  // Far more than a loopback socket takes in one send: SendAlone puts part of it on the wire
  // and leaves the rest to the writer.
  std::vector<std::byte> big(kMaxPayloadBytes);
  for (size_t i = 0; i < big.size(); ++i) {
    big[i] = static_cast<std::byte>(i * 7 + i / 4096);
  }
  std::vector<std::byte> small(4096, std::byte{0xa5});
  const pb::Write first = WriteMessage(1, big.size()), second = WriteMessage(2, small.size());
  sender->SendAlone(FrameType::kWrite, first, big);
  EXPECT_EQ(sender->sent_frames(), 0u) << "a 32 MiB frame went out whole in one send";
  // Room in the socket again before the writer has run: the next frame must still wait its turn.
  std::vector<std::byte> stream(1 << 20);
  stream.resize(raw.read_some(asio::buffer(stream)));
  sender->SendAlone(FrameType::kWrite, second, small);

  const size_t expected = 2 * kFrameHeaderBytes + first.ByteSizeLong() + big.size() +
                          second.ByteSizeLong() + small.size();
  raw.non_blocking(true);
  ASSERT_TRUE(testing_support::RunUntil(io, [&] {
    std::vector<std::byte> chunk(1 << 20);
    boost::system::error_code ec;
    const size_t n = raw.read_some(asio::buffer(chunk), ec);
    stream.insert(stream.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
    return stream.size() >= expected;
  }));
  ASSERT_EQ(stream.size(), expected);
  size_t at = 0;
  for (uint64_t seq = 1; seq <= 2; ++seq) {
    auto header = ParseFrameHeader(
        std::span<const std::byte, kFrameHeaderBytes>(stream.data() + at, kFrameHeaderBytes));
    ASSERT_TRUE(header.ok()) << "frame " << seq << ": " << header.status().ToString();
    at += kFrameHeaderBytes;
    const std::span<const std::byte> message(stream.data() + at, header.value().message_bytes);
    at += message.size();
    const std::span<const std::byte> payload(stream.data() + at, header.value().payload_bytes);
    at += payload.size();
    EXPECT_TRUE(FrameCrcMatches(header.value(), message, payload)) << "frame " << seq << " damaged";
    pb::Write write;
    ASSERT_TRUE(write.ParseFromArray(message.data(), static_cast<int>(message.size())));
    EXPECT_EQ(write.seq(), seq) << "frames on the wire out of order";
    const std::vector<std::byte>& sent = seq == 1 ? big : small;
    ASSERT_EQ(payload.size(), sent.size());
    EXPECT_EQ(std::memcmp(payload.data(), sent.data(), sent.size()), 0);
  }
  sender->Close(base::Status::Ok());
  testing_support::Drain(io);
}

}  // namespace
}  // namespace transport
