// Bitwise determinism whatever the launcher, the environment's thread settings and the layout
// (docs/rl.md, "Determinism"): the same spec through `mobula run` and through `mpiexec ... mobula
// worker` with OPENBLAS_NUM_THREADS / OMP_NUM_THREADS set to 2 ends with the same params hash, and
// the worker reports that BLAS ran the spec's job.threads (1); GRPO and latent-pretrain weights do
// not depend on the trainer or rollout count.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/runtime/process.h"
#include "tests/support/files.h"

namespace mobula {
namespace {

namespace fs = std::filesystem;
const std::string kExe = MOBULA_EXE;
const std::string kSrc = MOBULA_TEST_SOURCE_DIR;
const std::string kMpiexec = MOBULA_MPIEXEC;

using test::slurp;

// The "params_fnv1a" of DIR/summary.json ("" when missing).
std::string params_hash(const fs::path& dir) {
  const std::string s = slurp(dir / "summary.json");
  const auto p = s.find("\"params_fnv1a\": \"");
  return p == std::string::npos ? "" : s.substr(p + 17, 16);
}

struct Job {
  std::string spec;
  std::vector<std::string> sets;
};

// A short GRPO job (a few seconds on 2 cores) and a short latent-pretrain job without embed ranks.
Job grpo(int trainers, int rollouts) {
  return {"grpo-addition.toml",
          {"job.steps=10", "rl.warm_start_steps=60", "rl.eval_problems=16",
           "roles.trainer.ranks=" + std::to_string(trainers), "roles.rollout.ranks=" + std::to_string(rollouts)}};
}
Job latent(int trainers) {
  return {"latent-pretrain.toml",
          {"job.steps=24", "data.images=256", "latent.mode=inline", "roles.embed.ranks=0", "checkpoint.every=0",
           "roles.trainer.ranks=" + std::to_string(trainers)}};
}

class Determinism : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("mobula_determinism_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
             "_" + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(root_);
  }
  std::vector<std::string> args(const Job& j, const std::string& name) {
    std::vector<std::string> a = {kSrc + "/examples/" + j.spec};
    for (const auto& s : j.sets) a.insert(a.end(), {"--set", s});
    a.insert(a.end(),
             {"--set", "job.workdir=" + (root_ / name).string(), "--set", "data.dir=" + (root_ / "data").string()});
    return a;
  }
  // `mobula run`, the launcher's own environment.
  std::string run(const Job& j, const std::string& name) {
    std::vector<std::string> argv = {kExe, "run"};
    for (const auto& a : args(j, name)) argv.push_back(a);
    auto r = run_capture(argv, 240);
    EXPECT_TRUE(r.is_ok()) << r.status().message();
    if (r.is_ok()) {
      EXPECT_EQ(r->exit_code, 0) << r->out << r->err;
    }
    return params_hash(root_ / name);
  }
  // mpiexec by hand, as a user in an allocation would type it, with thread variables that would
  // change how BLAS splits its sums if the worker left them to the environment.
  std::string by_hand(const Job& j, const std::string& name, int ranks) {
    setenv("OPENBLAS_NUM_THREADS", "2", 1);
    setenv("OMP_NUM_THREADS", "2", 1);
    std::vector<std::string> argv = {
        kMpiexec, "-np",   std::to_string(ranks), "--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none",
        kExe,     "worker"};
    for (const auto& a : args(j, name)) argv.push_back(a);
    auto r = run_capture(argv, 240);
    unsetenv("OPENBLAS_NUM_THREADS");
    unsetenv("OMP_NUM_THREADS");
    EXPECT_TRUE(r.is_ok()) << r.status().message();
    if (!r.is_ok()) return "";
    EXPECT_EQ(r->exit_code, 0) << r->out << r->err;
    const std::string events = slurp(root_ / name / "events.jsonl");
    EXPECT_NE(events.find("\"threads\": 1, \"blas_threads\": 1"), std::string::npos) << events;
    return params_hash(root_ / name);
  }
  fs::path root_;
};

TEST_F(Determinism, MpiexecByHandWithThreadVariablesEqualsMobulaRun) {
  unsetenv("OPENBLAS_NUM_THREADS");
  unsetenv("OMP_NUM_THREADS");
  const std::string g = run(grpo(2, 1), "grpo-run");
  ASSERT_EQ(g.size(), 16u);
  EXPECT_EQ(by_hand(grpo(2, 1), "grpo-hand", 3), g);
  const std::string l = run(latent(2), "latent-run");
  ASSERT_EQ(l.size(), 16u);
  EXPECT_EQ(by_hand(latent(2), "latent-hand", 2), l);
}

TEST_F(Determinism, WeightsDoNotDependOnTrainerOrRolloutCounts) {
  const std::string g = run(grpo(2, 1), "grpo-2-1");
  ASSERT_EQ(g.size(), 16u);
  for (const auto& [t, r] : {std::pair<int, int>{1, 1}, {3, 2}, {4, 1}})
    EXPECT_EQ(run(grpo(t, r), "grpo-" + std::to_string(t) + "-" + std::to_string(r)), g)
        << t << " trainers, " << r << " rollouts";
  const std::string l = run(latent(2), "latent-2");
  ASSERT_EQ(l.size(), 16u);
  for (int t : {1, 4}) EXPECT_EQ(run(latent(t), "latent-" + std::to_string(t)), l) << t << " trainers";
}

// job.threads is the spec's: a bad value is a spec error before any rank computes.
TEST_F(Determinism, ThreadsOutOfRangeIsASpecError) {
  auto r = run_capture({kExe, "check", kSrc + "/examples/grpo-addition.toml", "--set", "job.threads=0"}, 60);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->exit_code, 2) << r->out << r->err;
  EXPECT_NE(r->err.find("job.threads"), std::string::npos) << r->err;
}

}  // namespace
}  // namespace mobula
