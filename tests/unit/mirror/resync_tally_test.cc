// The resynced-bytes counter: a new resync starting while a cancelled one still drains must not
// make it dip, bytes the cancelled one copies afterwards still count, and each resync's bytes
// count once.

#include "mirror/resync_tally.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace mirror {
namespace {

TEST(ResyncTallyTest, NeverDipsWhenANewResyncStartsWhileTheCancelledOneDrains) {
  ResyncTally tally;
  uint64_t a = 0, b = 0;
  const int ida = 1, idb = 2;
  tally.Started(&ida, [&] { return a; });
  a = 500;
  EXPECT_EQ(tally.total(), 500u);
  // The link drops (a is cancelled but still draining), a new link starts b from zero.
  tally.Started(&idb, [&] { return b; });
  EXPECT_EQ(tally.total(), 500u) << "dipped when the next resync started";
  a = 600;  // a's last blocks come back after its cancellation.
  b = 100;
  EXPECT_EQ(tally.total(), 700u);
  tally.Finished(&ida);
  EXPECT_EQ(tally.total(), 700u) << "settling a resync changed the total";
  b = 1000;
  tally.Finished(&idb);
  EXPECT_EQ(tally.total(), 1600u);
  tally.Finished(&idb);  // Twice: counted once.
  EXPECT_EQ(tally.total(), 1600u);
}

TEST(ResyncTallyTest, AResyncThatIsGoneKeepsWhatItCounted) {
  ResyncTally tally;
  uint64_t a = 300;
  bool gone = false;
  const int ida = 1;
  tally.Started(&ida, [&] { return gone ? uint64_t{0} : a; });
  EXPECT_EQ(tally.total(), 300u);
  gone = true;
  EXPECT_EQ(tally.total(), 300u);
  tally.Finished(&ida);
  EXPECT_EQ(tally.total(), 300u);
}

}  // namespace
}  // namespace mirror
