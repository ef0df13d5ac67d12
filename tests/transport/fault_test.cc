// SIGKILL in the middle of a transfer: runs `mpiexec -np 4 fault_worker MODE BACKEND` itself (one
// process here) and checks that every survivor reports the failure and the job ends in bounded
// time. Open MPI's default on a dead rank is to kill the whole job at once (survivors never get to
// report): that is checked too. With --enable-recovery the survivors keep running and must notice
// by themselves: the MPI backend through its timeouts, UCX through peer error handling.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "core/runtime/process.h"

namespace mobula {
namespace {

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

std::vector<std::string> cmd(const std::string& mode, const std::string& backend, bool recovery) {
  std::vector<std::string> c = {MOBULA_MPIEXEC, "-np",  "4",     "--oversubscribe",
                                "--bind-to",    "none", "--mca", "btl_vader_single_copy_mechanism",
                                "none"};
  if (recovery) c.push_back("--enable-recovery");
  c.insert(c.end(), {FAULT_WORKER, mode, backend});
  return c;
}

class FaultTest : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(FaultTest, SurvivorsReportTheKilledRankInBoundedTime) {
  const auto& [mode, backend] = GetParam();
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run_capture(cmd(mode, backend, true), 90);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(r) << "the job hung: " << r.status().message();
  const std::string all = r->out + r->err;
  ASSERT_EQ(count(all, "KILLING rank"), 1u) << all;
  EXPECT_EQ(count(all, "nobody died"), 0u) << all;
  EXPECT_EQ(count(all, "SURVIVOR rank"), 3u) << "every survivor must report the failure:\n" << all;
  // Each report names the failed operation and says what to do.
  EXPECT_EQ(count(all, "abort the job"), 3u) << all;
  EXPECT_LT(secs, 30.0) << all;
}

INSTANTIATE_TEST_SUITE_P(Modes, FaultTest,
                         ::testing::Combine(::testing::Values("sync", "get"), ::testing::Values("mpi", "ucx")),
                         [](const auto& p) { return std::get<0>(p.param) + "_" + std::get<1>(p.param); });

TEST(FaultDefault, OpenMpiKillsTheWholeJobWhenARankDies) {
  auto r = run_capture(cmd("sync", "mpi", false), 90);
  ASSERT_TRUE(r) << "the job hung: " << r.status().message();
  const std::string all = r->out + r->err;
  EXPECT_NE(r->exit_code, 0) << all;
  EXPECT_NE(all.find("exited on signal 9"), std::string::npos) << all;
  // Survivors usually die before their 3 s timeouts fire (teardown takes ~1.5 s here); not
  // asserted, a loaded machine may be slower.
}

}  // namespace
}  // namespace mobula
