// Checkpoint/restart of the GRPO job through `mobula run`: kill a rank, run again, compare weights
// bit for bit with a run that never failed; corrupt checkpoints are reported and skipped.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>
#include <vector>

#include "core/runtime/process.h"
#include "tests/support/files.h"

namespace mobula {
namespace {

namespace fs = std::filesystem;
const std::string kExe = MOBULA_EXE;
const std::string kSrc = MOBULA_TEST_SOURCE_DIR;

using test::slurp;

// "name=xxh64,..." of every dataset of a checkpoint, read back with the HDF5 tools.
std::string dataset_checksums(const fs::path& file) {
  auto dump = run_capture({"h5dump", "-A", file.string()}, 30);
  EXPECT_TRUE(dump.is_ok() && dump->exit_code == 0) << file;
  if (!dump.is_ok()) return "";
  std::string out;
  const std::string& d = dump->out;
  for (size_t p = d.find("ATTRIBUTE \"xxh64:"); p != std::string::npos; p = d.find("ATTRIBUTE \"xxh64:", p + 1)) {
    const size_t name0 = p + 17, name1 = d.find('"', name0);
    const size_t v0 = d.find("(0): \"", name1) + 6, v1 = d.find('"', v0);
    out += d.substr(name0, name1 - name0) + "=" + d.substr(v0, v1 - v0) + ",";
  }
  EXPECT_FALSE(out.empty()) << d;
  return out;
}

// "event@attempt" of every line of DIR/events.jsonl, in order; every line must be one JSON object.
std::vector<std::string> events_of(const fs::path& dir) {
  std::vector<std::string> out;
  std::istringstream in(slurp(dir / "events.jsonl"));
  for (std::string line; std::getline(in, line);) {
    EXPECT_EQ(line.rfind("{\"time\": \"", 0), 0u) << line;
    EXPECT_EQ(line.back(), '}') << line;
    const auto e = line.find("\"event\": \"") + 10, a = line.find("\"attempt\": ") + 11;
    out.push_back(line.substr(e, line.find('"', e) - e) + "@" + line.substr(a, line.find(',', a) - a));
  }
  return out;
}

// Whether `want` occurs in `got` in this order (other events may come between).
bool in_order(const std::vector<std::string>& got, const std::vector<std::string>& want) {
  size_t i = 0;
  for (const auto& g : got)
    if (i < want.size() && g == want[i]) ++i;
  return i == want.size();
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x + " ";
  return s;
}

class Restart : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("mobula_restart_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
             std::to_string(getpid()));
    fs::remove_all(root_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(root_);
  }
  // A short GRPO job (2 trainers, 1 rollout) in root_/name, saving every 2 steps; returns
  // (exit code, stdout + stderr).
  std::pair<int, std::string> run(const std::string& name, const std::string& kill_after = "",
                                  const std::string& kill_rank = "0", std::vector<std::string> sets = {},
                                  const std::string& kill_attempt = "0",
                                  const std::vector<std::pair<std::string, std::string>>& env = {}) {
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    if (!env.empty()) setenv("MOBULA_FAULT_KILL_ATTEMPT", kill_attempt.c_str(), 1);
    if (kill_after.empty()) {
      unsetenv("MOBULA_FAULT_KILL_AFTER_STEP");
    } else {
      setenv("MOBULA_FAULT_KILL_AFTER_STEP", kill_after.c_str(), 1);
      setenv("MOBULA_FAULT_KILL_RANK", kill_rank.c_str(), 1);
      setenv("MOBULA_FAULT_KILL_ATTEMPT", kill_attempt.c_str(), 1);
    }
    std::vector<std::string> argv = {kExe,
                                     "run",
                                     kSrc + "/examples/grpo-addition.toml",
                                     "--set",
                                     "job.steps=9",
                                     "--set",
                                     "rl.warm_start_steps=30",
                                     "--set",
                                     "rl.eval_problems=8",
                                     "--set",
                                     "checkpoint.every=2",
                                     "--set",
                                     "checkpoint.keep=2",
                                     "--set",
                                     "fault.restart_delay_s=0",
                                     "--set",
                                     "job.workdir=" + (root_ / name).string()};
    for (const auto& x : sets) argv.insert(argv.end(), {"--set", x});
    auto r = run_capture(argv, 200);
    unsetenv("MOBULA_FAULT_KILL_AFTER_STEP");
    for (const auto& [k, v] : env) unsetenv(k.c_str());
    EXPECT_TRUE(r.is_ok()) << r.status().message();
    if (!r) return {-1, ""};
    return {r->exit_code, r->out + r->err};
  }
  fs::path root_;
};

TEST_F(Restart, KilledRankIsRelaunchedAndEndsBitwiseIdentical) {
  const auto [rc0, out0] = run("clean");
  ASSERT_EQ(rc0, 0) << out0;
  const std::string want = slurp(root_ / "clean" / "policy.safetensors");
  ASSERT_GT(want.size(), 1000u);

  // A trainer (world rank 1), then a rollout rank (2) dies after step 4: `mobula run`
  // relaunches, the job resumes from the checkpoint of 4 steps and ends as if nothing happened.
  for (const auto& [rank, step, resumed] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"1", "4", "ckpt-00000004.h5"}, {"2", "4", "ckpt-00000004.h5"}}) {
    const std::string name = "killed-rank" + rank;
    const auto [rc, out] = run(name, step, rank);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("fault injection: SIGKILL after step " + step), std::string::npos) << out;
    EXPECT_NE(out.find("mobula run: the job failed with exit code"), std::string::npos) << out;
    EXPECT_NE(out.find("relaunching in 0 s (restart 1 of 2)"), std::string::npos) << out;
    EXPECT_NE(out.find("resumed from " + (root_ / name / "checkpoints" / resumed).string()), std::string::npos) << out;
    EXPECT_EQ(slurp(root_ / name / "policy.safetensors"), want) << name << ": weights differ from the clean run";
  }
  // The event journal tells the story (docs/observability.md).
  const auto ev = events_of(root_ / "killed-rank1");
  EXPECT_TRUE(in_order(ev, {"attempt_start@0", "job_start@0", "checkpoint_staged@0", "checkpoint_durable@0",
                            "fault_injected@0", "attempt_end@0", "attempt_start@1", "job_start@1",
                            "checkpoint_loaded@1", "checkpoint_durable@1", "attempt_end@1", "job_end@1"}))
      << joined(ev);
  // metrics.jsonl spans both attempts. Step 4 ran twice: the rank died after it, before the next
  // checkpoint, and the relaunch resumed from the checkpoint of 4 steps; both runs of it have the
  // same rewards, loss and KL (everything before the timings).
  {
    const std::string m = slurp(root_ / "killed-rank1" / "metrics.jsonl");
    auto step4 = [&](const std::string& attempt) {
      const auto p = m.find("\"attempt\": " + attempt + ", \"step\": 4,");  // after the line's "time"
      EXPECT_NE(p, std::string::npos) << m;
      if (p == std::string::npos) return std::string();
      const auto q = m.find(", \"completion_tokens\"", p);
      return m.substr(m.find("\"step\"", p), q - m.find("\"step\"", p));
    };
    const std::string first = step4("0");
    EXPECT_FALSE(first.empty());
    EXPECT_EQ(first, step4("1"));
  }
  // Every rank keeps its own log per attempt; `mobula logs DIR --rank R [--attempt A]` reads them.
  {
    auto killed = run_capture({kExe, "logs", (root_ / "killed-rank1").string(), "--rank", "1", "--attempt", "0"}, 30);
    ASSERT_TRUE(killed.is_ok() && killed->exit_code == 0) << (killed ? killed->err : killed.status().message());
    EXPECT_NE(killed->out.find("fault injection: SIGKILL after step 4"), std::string::npos) << killed->out;
    EXPECT_EQ(killed->out.find("resumed from"), std::string::npos) << killed->out;
    auto newest = run_capture({kExe, "logs", (root_ / "killed-rank1").string(), "--rank", "0"}, 30);
    ASSERT_TRUE(newest.is_ok() && newest->exit_code == 0);
    EXPECT_NE(newest->out.find("resumed from"), std::string::npos) << newest->out;
  }
  // The final checkpoint (parameters and both Adam moments) matches the clean run's, dataset by dataset.
  const std::string sums = dataset_checksums(root_ / "clean" / "checkpoints" / "ckpt-00000008.h5");
  EXPECT_NE(sums.find("adam_v="), std::string::npos) << sums;
  for (const char* name : {"killed-rank1", "killed-rank2"})
    EXPECT_EQ(dataset_checksums(root_ / name / "checkpoints" / "ckpt-00000008.h5"), sums) << name;
  // Retention keeps the newest 2; no temporary files remain.
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(root_ / "killed-rank1" / "checkpoints"))
    files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"ckpt-00000006.h5", "ckpt-00000008.h5", "fence", "latest"}));
  EXPECT_EQ(slurp(root_ / "killed-rank1" / "checkpoints" / "latest"), "ckpt-00000008.h5\n");
  EXPECT_EQ(slurp(root_ / "killed-rank1" / "checkpoints" / "fence"), "1\n");  // the relaunch fenced launch 0

  // The same with synchronous saves (every trainer waits for the durable file).
  const auto [rcs, outs] = run("killed-sync", "4", "1", {"checkpoint.async=false"});
  ASSERT_EQ(rcs, 0) << outs;
  EXPECT_NE(outs.find("checkpoint after step 3 published"), std::string::npos) << outs;
  EXPECT_EQ(slurp(root_ / "killed-sync" / "policy.safetensors"), want) << "sync saves: weights differ";

  // Trainer 0 dies inside the (asynchronous) save of step 6, the file written but not published:
  // the relaunch resumes from step 4, removes the leftover, and still ends bitwise identical.
  const auto [rck, outk] = run("killed-in-save", "", "0", {}, "0", {{"MOBULA_FAULT_KILL_IN_SAVE_AT_STEP", "6"}});
  ASSERT_EQ(rck, 0) << outk;
  EXPECT_NE(outk.find("fault injection: SIGKILL while saving"), std::string::npos) << outk;
  EXPECT_NE(outk.find("resumed from " + (root_ / "killed-in-save" / "checkpoints" / "ckpt-00000004.h5").string()),
            std::string::npos)
      << outk;
  EXPECT_EQ(slurp(root_ / "killed-in-save" / "policy.safetensors"), want) << "kill in save: weights differ";
  for (const auto& e : fs::directory_iterator(root_ / "killed-in-save" / "checkpoints"))
    EXPECT_NE(e.path().filename().string().rfind(".ckpt-", 0), 0u) << "leftover " << e.path();
}

// A stop signal (Slurm's pre-timeout USR1, a scheduler's TERM) reaches one rank after step 4: the
// ranks' signals are combined at one boundary and learnt at the next (boundary 6), the trainers
// publish the checkpoint of 6 steps,
// the job exits 3 ("preempted"), `mobula run` relaunches it and it ends bitwise identical.
TEST_F(Restart, StopSignalCheckpointsExitsThreeAndResumes) {
  const auto [rc0, out0] = run("clean");
  ASSERT_EQ(rc0, 0) << out0;
  const std::string want = slurp(root_ / "clean" / "policy.safetensors");
  const auto [rc, out] =
      run("signalled", "", "0", {}, "0", {{"MOBULA_FAULT_SIGNAL_AFTER_STEP", "4"}, {"MOBULA_FAULT_KILL_RANK", "2"}});
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("fault injection: SIGUSR1 after step 4"), std::string::npos) << out;
  EXPECT_NE(out.find("preempted by signal 10 at the boundary of step 6; the checkpoint of 6 steps is durable"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("the job was preempted (exit code 3); relaunching"), std::string::npos) << out;
  EXPECT_NE(out.find("resumed from " + (root_ / "signalled" / "checkpoints" / "ckpt-00000006.h5").string()),
            std::string::npos)
      << out;
  EXPECT_EQ(slurp(root_ / "signalled" / "policy.safetensors"), want) << "signal: weights differ";
  const auto ev = events_of(root_ / "signalled");
  EXPECT_TRUE(in_order(ev, {"fault_injected@0", "checkpoint_durable@0", "preempted@0", "attempt_end@0",
                            "attempt_start@1", "checkpoint_loaded@1", "job_end@1"}))
      << joined(ev);
  EXPECT_NE(slurp(root_ / "signalled" / "events.jsonl").find("\"outcome\": \"preempted\""), std::string::npos);
}

// A rank stops (SIGSTOP) after step 4: the others block waiting for it, their watchdogs fire after
// fault.hang_timeout_s, the job ends with exit 4, is relaunched from the checkpoint of 4 steps and
// ends bitwise identical.
TEST_F(Restart, StoppedRankIsCaughtByTheWatchdog) {
  const auto [rc0, out0] = run("clean");
  ASSERT_EQ(rc0, 0) << out0;
  const std::string want = slurp(root_ / "clean" / "policy.safetensors");
  const auto [rc, out] = run("stopped", "", "0", {"fault.hang_timeout_s=3"}, "0",
                             {{"MOBULA_FAULT_HANG_AFTER_STEP", "4"}, {"MOBULA_FAULT_KILL_RANK", "1"}});
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("fault injection: SIGSTOP after step 4"), std::string::npos) << out;
  EXPECT_NE(out.find("made no progress for 3 s (fault.hang_timeout_s = 3); stuck in"), std::string::npos) << out;
  EXPECT_NE(out.find("had a stuck rank (exit code 4, watchdog); relaunching"), std::string::npos) << out;
  EXPECT_NE(out.find("resumed from " + (root_ / "stopped" / "checkpoints" / "ckpt-00000004.h5").string()),
            std::string::npos)
      << out;
  EXPECT_EQ(slurp(root_ / "stopped" / "policy.safetensors"), want) << "hang: weights differ";
  const auto ev = events_of(root_ / "stopped");
  EXPECT_TRUE(in_order(
      ev, {"fault_injected@0", "watchdog@0", "attempt_end@0", "attempt_start@1", "checkpoint_loaded@1", "job_end@1"}))
      << joined(ev);
  EXPECT_NE(slurp(root_ / "stopped" / "events.jsonl").find("\"outcome\": \"stuck rank\""), std::string::npos);
}

// One-step-off asynchronous GRPO: its checkpoint also holds v_(k-1), the weights batch k is
// sampled with, so a killed trainer, a killed rollout and a stop signal all end bitwise identical
// to an uninterrupted asynchronous run.
TEST_F(Restart, AsyncGrpoResumesBitwiseIdentical) {
  const std::vector<std::string> async = {"rl.max_staleness=1", "fault.hang_timeout_s=20"};
  const auto [rc0, out0] = run("clean-async", "", "0", async);
  ASSERT_EQ(rc0, 0) << out0;
  const std::string want = slurp(root_ / "clean-async" / "policy.safetensors");
  for (const auto& [name, kill_after, rank] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"async-trainer", "4", "1"}, {"async-rollout", "5", "2"}}) {
    const auto [rc, out] = run(name, kill_after, rank, async);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("resumed from " + (root_ / name / "checkpoints" / "ckpt-00000004.h5").string()),
              std::string::npos)
        << out;
    EXPECT_EQ(slurp(root_ / name / "policy.safetensors"), want) << name << ": weights differ";
    EXPECT_EQ(dataset_checksums(root_ / name / "checkpoints" / "ckpt-00000008.h5"),
              dataset_checksums(root_ / "clean-async" / "checkpoints" / "ckpt-00000008.h5"))
        << name;
  }
  const auto [rc, out] = run("async-signal", "", "0", async, "0",
                             {{"MOBULA_FAULT_SIGNAL_AFTER_STEP", "3"}, {"MOBULA_FAULT_KILL_RANK", "0"}});
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("the job was preempted (exit code 3)"), std::string::npos) << out;
  EXPECT_EQ(slurp(root_ / "async-signal" / "policy.safetensors"), want) << "async signal: weights differ";
}

// A save that fails (injected ENOSPC) is reported, `latest` keeps naming the previous checkpoint,
// training goes on, and the job ends as if nothing happened; async and sync saves alike.
TEST_F(Restart, FailedSaveIsReportedAndTrainingGoesOn) {
  const auto [rc0, out0] = run("clean");
  ASSERT_EQ(rc0, 0) << out0;
  const std::string want = slurp(root_ / "clean" / "policy.safetensors");
  for (const std::string mode : {"true", "false"}) {
    const std::string name = "enospc-" + mode;
    const auto [rc, out] = run(name, "", "0", {"checkpoint.async=" + mode, "checkpoint.keep=10"}, "0",
                               {{"MOBULA_FAULT_SAVE_ERROR_AT_STEP", "4"}});
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("No space left on device (injected"), std::string::npos) << out;
    EXPECT_EQ(out.find("relaunching"), std::string::npos) << out;
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(root_ / name / "checkpoints"))
      files.push_back(e.path().filename().string());
    std::sort(files.begin(), files.end());
    EXPECT_EQ(files,
              (std::vector<std::string>{"ckpt-00000002.h5", "ckpt-00000006.h5", "ckpt-00000008.h5", "fence", "latest"}))
        << mode;
    EXPECT_EQ(slurp(root_ / name / "policy.safetensors"), want) << mode;
  }
}

// Resharding (docs/formats/checkpoint.md): a checkpoint written by 2 trainers and 1 rollout resumes
// on 1 trainer + 2 rollouts and on 3 trainers + 1 rollout; the optimizer state and the data position
// carry over, and since every step sums its gradients over the job.shards shards in one fixed tree,
// the resumed jobs end with the very weights of the uninterrupted 2 + 1 run. Synchronous and
// one-step-off (whose checkpoint also holds the previous policy).
TEST_F(Restart, ResumesOnOtherTrainerAndRolloutCountsBitwiseIdentical) {
  for (const std::string staleness : {"0", "1"}) {
    const std::string mode = "rl.max_staleness=" + staleness;
    const auto [rc0, out0] = run("clean-" + staleness, "", "0", {mode});
    ASSERT_EQ(rc0, 0) << out0;
    const std::string want = slurp(root_ / ("clean-" + staleness) / "policy.safetensors");
    ASSERT_GT(want.size(), 1000u);
    for (const auto& [trainers, rollouts] : {std::pair<int, int>{1, 2}, {3, 1}}) {
      const std::string name = "reshard-" + staleness + "-" + std::to_string(trainers) + std::to_string(rollouts);
      // 2 + 1 ranks, trainer 0 killed after step 4 (its save in flight made durable first: the
      // checkpoint of 4 steps is the newest)...
      const auto [rc1, out1] = run(name, "4", "0", {mode, "fault.max_restarts=0"});
      ASSERT_NE(rc1, 0) << out1;
      // ...then the same job on another layout.
      const auto [rc2, out2] = run(
          name, "", "0",
          {mode, "roles.trainer.ranks=" + std::to_string(trainers), "roles.rollout.ranks=" + std::to_string(rollouts)});
      ASSERT_EQ(rc2, 0) << out2;
      EXPECT_NE(out2.find("resumed from " + (root_ / name / "checkpoints" / "ckpt-00000004.h5").string()),
                std::string::npos)
          << out2;
      const std::string summary = slurp(root_ / name / "summary.json");
      EXPECT_NE(summary.find("\"trainers\": " + std::to_string(trainers) + ","), std::string::npos) << summary;
      EXPECT_NE(summary.find("\"rollouts\": " + std::to_string(rollouts) + ","), std::string::npos) << summary;
      EXPECT_NE(summary.find("\"first_step\": 4,"), std::string::npos) << summary;
      EXPECT_EQ(slurp(root_ / name / "policy.safetensors"), want) << name << ": weights differ from the 2 + 1 run";
    }
  }
}

// More trainers than shards cannot hold a shard each: a clear spec error on every rank, exit 2.
TEST_F(Restart, MoreTrainersThanShardsIsASpecError) {
  const auto [rc, out] = run("too-many", "", "0", {"roles.trainer.ranks=3", "job.shards=2"});
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("job.shards: 2 is less than the 3 trainers"), std::string::npos) << out;
}

TEST_F(Restart, AlwaysFailingJobStopsAtTheRestartLimit) {
  const auto [rc, out] = run("doomed", "4", "0", {"fault.max_restarts=1"}, "-1");
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("(restart 1 of 1)"), std::string::npos) << out;
  EXPECT_EQ(out.find("(restart 2 of"), std::string::npos) << out;
  size_t kills = 0;
  for (auto p = out.find("fault injection"); p != std::string::npos; p = out.find("fault injection", p + 1)) ++kills;
  EXPECT_EQ(kills, 2u) << out;
}

TEST_F(Restart, CorruptNewestCheckpointFallsBackAndAllCorruptRefusesToStart) {
  const auto [rc1, out1] = run("job", "5", "0", {"fault.max_restarts=0"});
  ASSERT_NE(rc1, 0) << out1;
  const fs::path dir = root_ / "job" / "checkpoints";
  ASSERT_TRUE(fs::exists(dir / "ckpt-00000006.h5")) << out1;
  // Flip bytes in the middle of the newest file (inside the parameter data): the checksum fails.
  {
    std::fstream f(dir / "ckpt-00000006.h5", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(dir / "ckpt-00000006.h5") / 2));
    f.write("\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f", 8);
  }
  // Readable with the HDF5 tools (docs/formats/checkpoint.md).
  auto dump = run_capture({"h5dump", "-A", (dir / "ckpt-00000004.h5").string()}, 30);
  ASSERT_TRUE(dump.is_ok()) << dump.status().message();
  EXPECT_EQ(dump->exit_code, 0) << dump->err;
  EXPECT_NE(dump->out.find("\"mobula-checkpoint\""), std::string::npos) << dump->out;
  EXPECT_NE(dump->out.find("DATASET \"adam_v\""), std::string::npos) << dump->out;

  const auto [rc2, out2] = run("job", "6", "0", {"fault.max_restarts=0"});  // resumes from 4, dies after step 6
  EXPECT_NE(out2.find("checkpoint rejected: " + (dir / "ckpt-00000006.h5").string()), std::string::npos) << out2;
  EXPECT_NE(out2.find("resumed from " + (dir / "ckpt-00000004.h5").string()), std::string::npos) << out2;
  EXPECT_NE(rc2, 0);

  // Left to itself (restarts on), the job falls back once more and ends as a clean run does.
  const auto [rc0, out0] = run("clean");
  ASSERT_EQ(rc0, 0) << out0;
  {
    std::fstream f(dir / "ckpt-00000006.h5", std::ios::in | std::ios::out | std::ios::binary);
    if (fs::exists(dir / "ckpt-00000006.h5")) {
      f.seekp(static_cast<std::streamoff>(fs::file_size(dir / "ckpt-00000006.h5") / 2));
      f.write("\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f", 8);
    }
  }
  const auto [rc4, out4] = run("job");
  ASSERT_EQ(rc4, 0) << out4;
  EXPECT_EQ(slurp(root_ / "job" / "policy.safetensors"), slurp(root_ / "clean" / "policy.safetensors"));
  EXPECT_EQ(dataset_checksums(dir / "ckpt-00000008.h5"),
            dataset_checksums(root_ / "clean" / "checkpoints" / "ckpt-00000008.h5"));

  // Now truncate every checkpoint: the job must refuse to start from scratch.
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".h5") fs::resize_file(e.path(), 1000);
  const auto [rc3, out3] = run("job");  // exit 2: not retried
  EXPECT_NE(rc3, 0) << out3;
  EXPECT_NE(out3.find("none verifies"), std::string::npos) << out3;
  EXPECT_NE(out3.find("refusing to start from scratch"), std::string::npos) << out3;
  EXPECT_NE(rc3, 0);
}

}  // namespace
}  // namespace mobula
