// The --cpu-affinity list: what it accepts, what it refuses with a message naming the fault,
// and that applying it restricts the calling thread and the threads it starts afterwards.

#include "base/cpu_affinity.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <set>
#include <string>
#include <thread>

namespace base {
namespace {

std::set<int> Parsed(const std::string& text) {
  Result<std::set<int>> cpus = ParseCpuList(text, 64);
  EXPECT_TRUE(cpus.ok()) << text << ": " << cpus.status().ToString();
  return cpus.ok() ? cpus.value() : std::set<int>{};
}

std::string Refusal(const std::string& text) {
  Result<std::set<int>> cpus = ParseCpuList(text, 64);
  EXPECT_FALSE(cpus.ok()) << "'" << text << "' was accepted";
  return cpus.ok() ? "" : cpus.status().message();
}

std::set<int> ThreadCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(::sched_getaffinity(0, sizeof(set), &set), 0);
  std::set<int> cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) {
      cpus.insert(cpu);
    }
  }
  return cpus;
}

TEST(CpuAffinityTest, ParsesNumbersRangesAndLists) {
  EXPECT_EQ(Parsed("3"), (std::set<int>{3}));
  EXPECT_EQ(Parsed("0-3"), (std::set<int>{0, 1, 2, 3}));
  EXPECT_EQ(Parsed("0,2-3,6"), (std::set<int>{0, 2, 3, 6}));
  EXPECT_EQ(Parsed("5-5,1,1"), (std::set<int>{1, 5}));
  EXPECT_EQ(Parsed("63"), (std::set<int>{63}));
}

TEST(CpuAffinityTest, RefusesMalformedListsNamingTheFault) {
  EXPECT_NE(Refusal("").find("expected a CPU number at position 1"), std::string::npos);
  EXPECT_NE(Refusal("1,").find("position 3"), std::string::npos);
  EXPECT_NE(Refusal(",1").find("position 1"), std::string::npos);
  EXPECT_NE(Refusal("3-1").find("runs backwards"), std::string::npos);
  EXPECT_NE(Refusal("1 ").find("unexpected ' '"), std::string::npos);
  EXPECT_NE(Refusal("-1").find("position 1"), std::string::npos);
  EXPECT_NE(Refusal("0x1").find("unexpected 'x'"), std::string::npos);
  EXPECT_NE(Refusal("64").find("stop at 63"), std::string::npos);
  EXPECT_NE(Refusal("99999999999999999999").find("stop at 63"), std::string::npos);
  EXPECT_NE(Refusal("1-").find("position 3"), std::string::npos);
}

TEST(CpuAffinityTest, FormatsRunsAsRanges) {
  EXPECT_EQ(FormatCpuList({0, 2, 3, 6}), "0,2-3,6");
  EXPECT_EQ(FormatCpuList({1}), "1");
  EXPECT_EQ(FormatCpuList({0, 1, 2, 3}), "0-3");
  EXPECT_EQ(FormatCpuList({}), "");
}

TEST(CpuAffinityTest, RestrictsTheThreadAndTheThreadsItStarts) {
  const std::set<int> before = ThreadCpus();
  ASSERT_FALSE(before.empty());
  // Run in a thread of its own so the test process keeps its CPUs.
  std::thread([&] {
    const int one = *before.rbegin();
    ASSERT_TRUE(ApplyCpuAffinity({one}).ok());
    EXPECT_EQ(ThreadCpus(), std::set<int>{one});
    std::set<int> child;
    std::thread([&] { child = ThreadCpus(); }).join();
    EXPECT_EQ(child, std::set<int>{one});
  }).join();
  EXPECT_EQ(ThreadCpus(), before);
}

TEST(CpuAffinityTest, RefusesACpuTheProcessMayNotUse) {
  const std::set<int> before = ThreadCpus();
  const int missing = *before.rbegin() + 1;
  ASSERT_LT(missing, CPU_SETSIZE);
  std::thread([&] {
    Status st = ApplyCpuAffinity({*before.begin(), missing});
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message().find("CPU " + std::to_string(missing) + " is not available"),
              std::string::npos)
        << st.message();
    EXPECT_NE(st.message().find("may use " + FormatCpuList(before)), std::string::npos)
        << st.message();
    // Nothing changed.
    EXPECT_EQ(ThreadCpus(), before);
  }).join();
}

}  // namespace
}  // namespace base
