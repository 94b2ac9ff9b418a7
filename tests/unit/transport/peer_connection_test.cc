// PeerConnection over a real loopback TCP connection: a frame sent with SendAlone while the
// writer is idle leaves at once (no trip round the loop), and one the socket cannot take whole
// is finished by the writer before any frame sent after it, every byte intact and in order.
// On the receiving side, frames that arrive together (taken from the read-ahead without a
// coroutine) or in pieces are delivered whole and in order, a frame with no buffer for its
// payload waits for one, and a damaged frame in a burst ends the link after the good ones
// before it.

#include "transport/peer_connection.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <utility>
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

// The sending end is a plain socket the test writes by hand, so that it decides which frames
// arrive together and where a burst is cut.
class PeerReceiveTest : public ::testing::Test {
 protected:
  void Start(size_t pool_bytes) {
    pool_ = std::make_unique<base::BufferPool>(pool_bytes);
    asio::ip::tcp::acceptor acceptor(io_, {asio::ip::make_address("127.0.0.1"), 0});
    asio::ip::tcp::socket accepted(io_);
    raw_.connect(acceptor.local_endpoint());
    acceptor.accept(accepted);
    receiver_ = std::make_shared<PeerConnection>(
        std::make_unique<PeerStream>(std::move(accepted), nullptr), *pool_, LinkTiming{});
    receiver_->StartStreaming(&received_);
  }
  void TearDown() override {
    if (receiver_) {
      receiver_->Close(base::Status::Ok());
    }
    received_.frames.clear();
    testing_support::Drain(io_);
  }

  // Frame `seq`: a Write whose payload is `length` bytes of a pattern of its own.
  static std::vector<std::byte> WriteFrame(uint64_t seq, size_t length) {
    std::vector<std::byte> payload(length);
    for (size_t i = 0; i < length; ++i) {
      payload[i] = static_cast<std::byte>(seq * 31 + i * 7);
    }
    const std::string message = WriteMessage(seq, length).SerializeAsString();
    const auto message_bytes = std::as_bytes(std::span(message));
    const auto header = BuildFrameHeader(FrameType::kWrite, message_bytes, payload);
    // (memcpy: GCC 12 warns falsely about vector::insert from these.)
    std::vector<std::byte> frame(header.size() + message_bytes.size() + length);
    std::memcpy(frame.data(), header.data(), header.size());
    std::memcpy(frame.data() + header.size(), message_bytes.data(), message_bytes.size());
    if (length > 0) {
      std::memcpy(frame.data() + header.size() + message_bytes.size(), payload.data(), length);
    }
    return frame;
  }
  void SendRaw(std::span<const std::byte> bytes) {
    asio::write(raw_, asio::buffer(bytes.data(), bytes.size()));
  }
  // The frame received at `index` is Write `seq` with its whole payload intact.
  void ExpectWrite(size_t index, uint64_t seq, size_t length) {
    ASSERT_LT(index, received_.frames.size());
    const Frame& frame = received_.frames[index];
    pb::Write write;
    ASSERT_TRUE(frame.Parse(write));
    EXPECT_EQ(write.seq(), seq) << "frame " << index << " out of order";
    const std::vector<std::byte> sent = WriteFrame(seq, length);
    ASSERT_EQ(frame.payload.size(), length) << "frame " << index;
    if (length == 0) {
      return;  // (memcmp of a null buffer is undefined, even for 0 bytes.)
    }
    EXPECT_EQ(std::memcmp(frame.payload.data(), sent.data() + sent.size() - length, length), 0)
        << "frame " << index << ": payload damaged";
  }

  asio::io_context io_;
  asio::ip::tcp::socket raw_{io_};
  std::unique_ptr<base::BufferPool> pool_;
  Collector received_;
  std::shared_ptr<PeerConnection> receiver_;
};

TEST_F(PeerReceiveTest, FramesThatArriveTogetherOrInPiecesAreDeliveredWholeAndInOrder) {
  Start(128u << 20);
  // Frame 4's payload is large enough to be read straight into its buffer once the read-ahead
  // runs dry; the burst is cut in the middle of it, and again inside frame 6's header.
  const std::vector<std::pair<uint64_t, size_t>> frames = {
      {1, 0}, {2, 4096}, {3, 512}, {4, 40 * 1024}, {5, 4096}, {6, 1}, {7, 4096}};
  std::vector<std::byte> stream;
  size_t cut_in_4 = 0, cut_in_6 = 0;
  for (const auto& [seq, length] : frames) {
    if (seq == 4) {
      cut_in_4 = stream.size() + kFrameHeaderBytes + 20 + 10000;
    }
    if (seq == 6) {
      cut_in_6 = stream.size() + 7;
    }
    const auto frame = WriteFrame(seq, length);
    stream.insert(stream.end(), frame.begin(), frame.end());
  }
  const std::span<const std::byte> all(stream);
  SendRaw(all.first(cut_in_4));
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return received_.frames.size() == 3; }));
  testing_support::Drain(io_);
  EXPECT_EQ(received_.frames.size(), 3u) << "a frame was delivered before all of it arrived";
  SendRaw(all.subspan(cut_in_4, cut_in_6 - cut_in_4));
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return received_.frames.size() == 5; }));
  SendRaw(all.subspan(cut_in_6));
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return received_.frames.size() == 7; }));
  for (size_t i = 0; i < frames.size(); ++i) {
    ExpectWrite(i, frames[i].first, frames[i].second);
  }
  EXPECT_TRUE(received_.closed.ok()) << received_.closed.ToString();
  EXPECT_EQ(receiver_->received_frames(), frames.size());
}

TEST_F(PeerReceiveTest, AFrameWithNoBufferForItsPayloadWaitsForOne) {
  Start(8 * 1024);  // Room for two 4 KiB payloads.
  std::vector<std::byte> stream;
  for (uint64_t seq = 1; seq <= 4; ++seq) {
    const auto frame = WriteFrame(seq, 4096);
    stream.insert(stream.end(), frame.begin(), frame.end());
  }
  SendRaw(stream);  // All four arrive together; only two can have buffers.
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return received_.frames.size() == 2; }));
  testing_support::Drain(io_);
  ASSERT_EQ(received_.frames.size(), 2u) << "a frame was delivered without a buffer to hold it";
  ExpectWrite(0, 1, 4096);
  ExpectWrite(1, 2, 4096);
  received_.frames.clear();  // Their buffers go back to the pool.
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return received_.frames.size() == 2; }));
  ExpectWrite(0, 3, 4096);
  ExpectWrite(1, 4, 4096);
  EXPECT_TRUE(received_.closed.ok()) << received_.closed.ToString();
}

TEST_F(PeerReceiveTest, ADamagedFrameInABurstEndsTheLinkAfterTheGoodOnesBeforeIt) {
  Start(128u << 20);
  std::vector<std::byte> stream;
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    auto frame = WriteFrame(seq, 4096);
    if (seq == 2) {
      frame.back() ^= std::byte{1};
    }
    stream.insert(stream.end(), frame.begin(), frame.end());
  }
  SendRaw(stream);
  ASSERT_TRUE(testing_support::RunUntil(io_, [&] { return receiver_->closed(); }));
  testing_support::Drain(io_);
  ASSERT_EQ(received_.frames.size(), 1u) << "frames at or after the damaged one were delivered";
  ExpectWrite(0, 1, 4096);
  EXPECT_EQ(received_.closed.errno_value(), EBADMSG) << received_.closed.ToString();
}

}  // namespace
}  // namespace transport
