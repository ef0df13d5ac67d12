#include "core/runtime/process.h"

#include <gtest/gtest.h>

#include "slurm/slurm_env.h"

namespace mobula {
namespace {

TEST(Process, CapturesOutputAndExitCode) {
  auto r = run_capture({"sh", "-c", "echo out; echo err >&2; exit 3"});
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
}

TEST(Process, MissingProgramIsAnError) {
  auto r = run_capture({"/nonexistent/program"});
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("cannot start '/nonexistent/program'"), std::string::npos);
}

TEST(Process, TimeoutKills) {
  auto r = run_capture({"sleep", "30"}, 0.3);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Status::Code::kTimeout);
}

TEST(Process, SignalIsReportedAs128PlusSignal) {
  auto r = run_capture({"sh", "-c", "kill -TERM $$"});
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->exit_code, 128 + 15);
}

TEST(Process, InheritPassesEnvironment) {
  auto r = run_inherit({"sh", "-c", "test \"$MOBULA_X\" = 42"}, {"MOBULA_X=42"});
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(*r, 0);
  auto r2 = run_inherit({"sh", "-c", "exit 7"});
  ASSERT_TRUE(r2.is_ok());
  EXPECT_EQ(*r2, 7);
}

TEST(Process, JoinQuotes) { EXPECT_EQ(join_command({"a", "b c", "it's"}), "a 'b c' 'it'\\''s'"); }

TEST(SlurmEnv, TasksPerNode) {
  auto r = slurm::parse_tasks_per_node("2(x3),1");
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(*r, (std::vector<int>{2, 2, 2, 1}));
  EXPECT_FALSE(slurm::parse_tasks_per_node("2(x").is_ok());
  EXPECT_FALSE(slurm::parse_tasks_per_node("").is_ok());
  EXPECT_FALSE(slurm::parse_tasks_per_node("a").is_ok());
}

}  // namespace
}  // namespace mobula
