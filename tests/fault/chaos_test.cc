// Chaos: a seeded random schedule of kill -9 and SIGSTOP of random ranks at random steps, over
// several trials of a small GRPO job under `mobula run` (its relaunch loop; a stopped rank is caught
// by its peers' watchdogs, exit 4). The faults come from outside, as the test's own kill(2) on the
// worker process, at the moment trainer 0 has written the chosen step to metrics.jsonl. Every trial
// must end completed with the weights of the uninterrupted run. Prints "N passed, M failed".
//
// MOBULA_CHAOS_SEED picks another schedule (default 20261207); MOBULA_CHAOS_TRIALS the trial count.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/runtime/process.h"
#include "tests/support/files.h"

namespace mobula {
namespace {

namespace fs = std::filesystem;
const std::string kExe = MOBULA_EXE;
const std::string kSrc = MOBULA_TEST_SOURCE_DIR;
constexpr int kSteps = 12, kRanks = 3;  // 2 trainers + 1 rollout

using test::slurp;

struct Fault {
  int attempt = 0, step = 0, rank = 0;
  bool stop = false;  // SIGSTOP (a hang) instead of SIGKILL
  std::string describe() const {
    return std::string(stop ? "SIGSTOP" : "SIGKILL") + " rank " + std::to_string(rank) + " after step " +
           std::to_string(step) + " of attempt " + std::to_string(attempt);
  }
};

// One or two faults: the first in the first launch, a second (half the trials) in the relaunch, at
// a later step (the relaunch resumes at or before the first fault's step).
std::vector<Fault> schedule(std::mt19937& rng) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<Fault> f;
  f.push_back({0, pick(1, kSteps - 4), pick(0, kRanks - 1), pick(0, 1) == 1});
  if (pick(0, 1) == 1) f.push_back({1, pick(f[0].step + 1, kSteps - 2), pick(0, kRanks - 1), pick(0, 1) == 1});
  return f;
}

// The pid of world rank `rank` of launch `attempt` of the job tagged `tag` (0: not running).
pid_t find_rank(const std::string& tag, int rank, int attempt) {
  const std::vector<std::string> want = {"MOBULA_CHAOS_TAG=" + tag, "OMPI_COMM_WORLD_RANK=" + std::to_string(rank),
                                         "MOBULA_STEP_ATTEMPT=" + std::to_string(attempt)};
  DIR* d = opendir("/proc");
  if (!d) return 0;
  pid_t found = 0;
  while (dirent* e = readdir(d)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    const std::string env = slurp(fs::path("/proc") / e->d_name / "environ");
    size_t hits = 0;
    for (size_t p = 0; p < env.size();) {
      const size_t z = env.find('\0', p);
      const std::string var = env.substr(p, z == std::string::npos ? std::string::npos : z - p);
      for (const auto& w : want) hits += var == w;
      if (z == std::string::npos) break;
      p = z + 1;
    }
    if (hits == want.size()) {
      found = pid;
      break;
    }
  }
  closedir(d);
  return found;
}

std::vector<std::string> job_args(const fs::path& dir) {
  return {kExe,
          "run",
          kSrc + "/examples/grpo-addition.toml",
          "--set",
          "job.steps=" + std::to_string(kSteps),
          "--set",
          "rl.warm_start_steps=30",
          "--set",
          "rl.eval_problems=8",
          "--set",
          "checkpoint.every=2",
          "--set",
          "fault.restart_delay_s=0",
          "--set",
          "fault.max_restarts=4",
          "--set",
          "fault.hang_timeout_s=6",
          "--set",
          "job.workdir=" + dir.string()};
}

// Waits until trainer 0 wrote step `step` of launch `attempt` to metrics.jsonl, or the job ended.
bool wait_for_step(const fs::path& dir, const Fault& f, std::future<Result<ProcessResult>>& job) {
  const std::string needle =
      "\"attempt\": " + std::to_string(f.attempt) + ", \"step\": " + std::to_string(f.step) + ",";
  while (job.wait_for(std::chrono::milliseconds(5)) != std::future_status::ready)
    if (slurp(dir / "metrics.jsonl").find(needle) != std::string::npos) return true;
  return false;
}

TEST(Chaos, RandomKillsAndStopsEndWithTheWeightsOfAnUninterruptedRun) {
  const fs::path root = fs::temp_directory_path() / ("mobula_chaos_" + std::to_string(getpid()));
  fs::remove_all(root);
  // Trainer 0 sleeps 60 ms after each step, so a step lasts long enough for a fault to land in it.
  setenv("MOBULA_FAULT_STEP_DELAY_MS", "60", 1);
  auto clean = run_capture(job_args(root / "clean"), 240);
  ASSERT_TRUE(clean.is_ok()) << clean.status().message();
  ASSERT_EQ(clean->exit_code, 0) << clean->out << clean->err;
  const std::string want = slurp(root / "clean" / "policy.safetensors");
  ASSERT_GT(want.size(), 1000u);

  const char* seed_env = std::getenv("MOBULA_CHAOS_SEED");
  const char* trials_env = std::getenv("MOBULA_CHAOS_TRIALS");
  const unsigned seed = seed_env ? static_cast<unsigned>(std::strtoul(seed_env, nullptr, 10)) : 20261207u;
  const int trials = trials_env ? std::max(1, std::atoi(trials_env)) : 5;
  std::mt19937 rng(seed);
  int passed = 0, failed = 0, applied_total = 0;
  for (int t = 0; t < trials; ++t) {
    const std::vector<Fault> faults = schedule(rng);
    const std::string tag = std::to_string(getpid()) + "-" + std::to_string(t);
    const fs::path dir = root / ("trial-" + std::to_string(t));
    setenv("MOBULA_CHAOS_TAG", tag.c_str(), 1);
    auto job = std::async(std::launch::async, [&] { return run_capture(job_args(dir), 300); });
    std::string what;
    int applied = 0;
    for (const Fault& f : faults) {
      if (!wait_for_step(dir, f, job)) {
        what += " [" + f.describe() + ": the job never ran that step]";
        continue;
      }
      const pid_t pid = find_rank(tag, f.rank, f.attempt);
      if (pid <= 0 || kill(pid, f.stop ? SIGSTOP : SIGKILL) != 0) {
        what += " [" + f.describe() + ": rank not found]";
        continue;
      }
      ++applied;
      what += " [" + f.describe() + "]";
    }
    const auto r = job.get();
    unsetenv("MOBULA_CHAOS_TAG");
    const bool ok = r.is_ok() && r->exit_code == 0 && slurp(dir / "policy.safetensors") == want && applied >= 1;
    std::printf("chaos trial %d:%s -> %s\n", t, what.c_str(), ok ? "passed" : "FAILED");
    std::fflush(stdout);
    EXPECT_TRUE(r.is_ok()) << r.status().message();
    if (r.is_ok()) {
      EXPECT_EQ(r->exit_code, 0) << "trial " << t << what << "\n" << r->out << r->err;
    }
    EXPECT_EQ(slurp(dir / "policy.safetensors"), want) << "trial " << t << what << ": weights differ";
    EXPECT_GE(applied, 1) << "trial " << t << what << ": no fault landed";
    ok ? ++passed : ++failed;
    applied_total += applied;
  }
  unsetenv("MOBULA_FAULT_STEP_DELAY_MS");
  std::printf("chaos (seed %u): %d passed, %d failed; %d faults injected\n", seed, passed, failed, applied_total);
  if (!HasFailure()) fs::remove_all(root);
}

}  // namespace
}  // namespace mobula
