#include "core/runtime/process.h"

#include <gtest/gtest.h>

#include "core/runtime/environment.h"
#include "slurm/slurm_env.h"

#include <cstdlib>

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

TEST(Process, WatchStopsAChildOnRequest) {
  // The watch says "stop" on its third poll: SIGTERM ends `sleep`, reported as 128 + 15.
  int polls = 0;
  bool killed = false;
  Watch w;
  w.poll_s = 0.05;
  w.killed = &killed;
  w.should_kill = [&] { return ++polls == 3; };
  auto rc = run_inherit_watched({"sleep", "30"}, {}, w);
  ASSERT_TRUE(rc.is_ok()) << rc.status().message();
  EXPECT_EQ(*rc, 128 + 15);
  EXPECT_TRUE(killed);
  EXPECT_EQ(polls, 3);
}

TEST(Process, WatchEscalatesToSigkill) {
  // A child that ignores SIGTERM gets SIGKILL after kill_grace_s.
  bool killed = false;
  Watch w;
  w.poll_s = 0.05;
  w.kill_grace_s = 0.3;
  w.killed = &killed;
  w.should_kill = [] { return true; };
  auto rc = run_inherit_watched({"sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"}, {}, w);
  ASSERT_TRUE(rc.is_ok()) << rc.status().message();
  EXPECT_EQ(*rc, 128 + 9);
  EXPECT_TRUE(killed);
}

TEST(Process, WatchLeavesAFinishingChildAlone) {
  bool killed = true;
  Watch w;
  w.poll_s = 0.05;
  w.killed = &killed;
  w.should_kill = [] { return false; };
  auto rc = run_inherit_watched({"sh", "-c", "sleep 0.2; exit 4"}, {}, w);
  ASSERT_TRUE(rc.is_ok()) << rc.status().message();
  EXPECT_EQ(*rc, 4);
  EXPECT_FALSE(killed);
}

TEST(Process, JoinQuotes) {
  EXPECT_EQ(join_command({"a", "b c", "it's"}), "a 'b c' 'it'\\''s'");
  EXPECT_EQ(join_command({"--set", "job.workdir=/x/y", "a;b", "*", ""}), "--set job.workdir=/x/y 'a;b' '*' ''");
}

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

namespace mobula {
namespace {

// Het group from the environment of a task in `srun --het-group=0,1` (2 + 3 tasks).
TEST(SlurmEnv, HetGroupFromProcid) {
  for (const char* v : {"MOBULA_HET_GROUP", "SLURM_PACK_SIZE"}) unsetenv(v);
  setenv("SLURM_HET_SIZE", "2", 1);
  setenv("SLURM_NTASKS_HET_GROUP_0", "2", 1);
  setenv("SLURM_NTASKS_HET_GROUP_1", "3", 1);
  setenv("SLURM_STEP_NUM_TASKS", "5", 1);
  const int want[5] = {0, 0, 1, 1, 1};
  for (int p = 0; p < 5; ++p) {
    setenv("SLURM_PROCID", std::to_string(p).c_str(), 1);
    EXPECT_EQ(slurm_het_group(), want[p]) << "procid " << p;
  }
  // A step on component 0 only (plain srun inside a het allocation): unknown.
  setenv("SLURM_STEP_NUM_TASKS", "2", 1);
  setenv("SLURM_PROCID", "1", 1);
  EXPECT_EQ(slurm_het_group(), -1);
  setenv("MOBULA_HET_GROUP", "1", 1);
  EXPECT_EQ(slurm_het_group(), 1);
  for (const char* v : {"MOBULA_HET_GROUP", "SLURM_HET_SIZE", "SLURM_NTASKS_HET_GROUP_0", "SLURM_NTASKS_HET_GROUP_1",
                        "SLURM_STEP_NUM_TASKS", "SLURM_PROCID"})
    unsetenv(v);
  EXPECT_EQ(slurm_het_group(), -1);
}

}  // namespace
}  // namespace mobula

#include "slurm/jobs.h"

namespace mobula {
namespace {

TEST(SlurmJobs, ParsesScontrolLine) {
  auto j = slurm::parse_job_line(
      "JobId=12 JobName=x UserId=root(0) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 "
      "Restarts=2 BatchFlag=1 ExitCode=3:9 RunTime=00:00:01");
  ASSERT_TRUE(j.is_ok()) << j.status().message();
  EXPECT_EQ(j->id, "12");
  EXPECT_EQ(j->state, "FAILED");
  EXPECT_EQ(j->reason, "NonZeroExitCode");
  EXPECT_EQ(j->exit_code, 3);
  EXPECT_EQ(j->signal, 9);
  EXPECT_EQ(j->restarts, 2);
  EXPECT_TRUE(j->terminal());
  EXPECT_FALSE(slurm::parse_job_line("garbage").is_ok());
  EXPECT_FALSE(slurm::parse_job_line("JobId=1 JobState=RUNNING ExitCode=x:0").is_ok());
}

}  // namespace
}  // namespace mobula
