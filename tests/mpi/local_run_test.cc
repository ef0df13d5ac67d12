// `mobula run` end to end on local ranks: mpiexec is started by the launcher, every rank prints its
// role, the workload's collectives pass, and failures travel back as exit codes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/runtime/process.h"

namespace mobula {
namespace {

const std::string kExe = MOBULA_EXE;
const std::string kSrc = MOBULA_TEST_SOURCE_DIR;

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

TEST(LocalRun, FourRanksPrintTheirRolesAndPass) {
  auto r = run_capture({kExe, "run", kSrc + "/examples/minimal.toml", "--set",
                        "job.workdir=" + std::filesystem::temp_directory_path().string() + "/mobula_run_test"},
                       240);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  ASSERT_EQ(r->exit_code, 0) << r->out << r->err;
  for (const char* who : {"[trainer 0/2 ", "[trainer 1/2 ", "[rollout 0/2 ", "[rollout 1/2 "}) {
    EXPECT_EQ(count(r->out, std::string(who)) >= 1, true) << who << " missing:\n" << r->out;
  }
  EXPECT_EQ(count(r->out, "] info: role trainer "), 2u) << r->out;
  EXPECT_EQ(count(r->out, "] info: role rollout "), 2u) << r->out;
  EXPECT_EQ(count(r->out, "links: trainer+rollout(4)"), 4u) << r->out;
  EXPECT_EQ(count(r->out, "layout check passed: 4 ranks, 2 roles, 1 links, 3 steps"), 1u) << r->out;
}

TEST(LocalRun, ThreeRolesWithOverrides) {
  auto r = run_capture(
      {kExe, "run", kSrc + "/examples/three-roles.toml", "--set", "job.steps=2", "--set", "roles.rollout.ranks=2",
       "--set", "job.workdir=" + std::filesystem::temp_directory_path().string() + "/mobula_run_test3"},
      240);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  ASSERT_EQ(r->exit_code, 0) << r->out << r->err;
  EXPECT_NE(r->out.find("layout check passed: 5 ranks, 3 roles, 3 links, 2 steps"), std::string::npos) << r->out;
  EXPECT_EQ(count(r->out, "] info: role embed 0/1 on world rank 4/5"), 1u) << r->out;
}

TEST(LocalRun, UnwritableWorkdirFailsOnAllRanksWithOneLine) {
  auto r = run_capture({kExe, "run", kSrc + "/examples/minimal.toml", "--set", "job.workdir=/proc/mobula"}, 240);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->exit_code, 2) << r->out << r->err;
  EXPECT_EQ(count(r->err, "job.workdir: cannot create '/proc/mobula'"), 1u) << r->err;
}

}  // namespace
}  // namespace mobula

namespace mobula {
namespace {

std::string read_text(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A number after "key": in a JSON text (the first occurrence), -1 when missing.
double json_number(const std::string& s, const std::string& key) {
  const auto p = s.find("\"" + key + "\": ");
  EXPECT_NE(p, std::string::npos) << key << " missing in " << s;
  return p == std::string::npos ? -1.0 : std::atof(s.c_str() + p + key.size() + 4);
}

// Both example tasks at full size (seconds each): 2 trainers + 1 rollout, warm start on noisy
// labels, then GRPO. Held-out greedy accuracy must rise clearly beyond the warm start, every step
// prints a line, and summary.json holds the figures and the per-step metrics.
struct Example {
  const char* spec;
  unsigned steps;
};
class GrpoExample : public ::testing::TestWithParam<Example> {};

TEST_P(GrpoExample, ImprovesHeldOutAccuracy) {
  const std::string dir =
      std::filesystem::temp_directory_path().string() + "/mobula_grpo_example_" + std::to_string(GetParam().steps);
  std::filesystem::remove_all(dir);
  auto r = run_capture({kExe, "run", kSrc + "/examples/" + GetParam().spec, "--set", "job.workdir=" + dir}, 280);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  ASSERT_EQ(r->exit_code, 0) << r->out << r->err;
  EXPECT_EQ(count(r->out, "] info: step "), GetParam().steps) << r->out;
  const std::string s = read_text(dir + "/summary.json");
  const double base = json_number(s, "base_accuracy"), final_acc = json_number(s, "final_accuracy");
  EXPECT_GT(final_acc, base + 0.15) << s;
  EXPECT_EQ(json_number(s, "trainers"), 2);
  EXPECT_EQ(json_number(s, "rollouts"), 1);
  EXPECT_GT(json_number(s, "tokens_per_s"), 0);
  EXPECT_GT(json_number(s, "mean_train_s"), 0);
  EXPECT_GT(json_number(s, "mean_sample_s"), 0);
  EXPECT_GE(json_number(s, "mean_transfer_s"), 0);
  // Per step: the sampled policy's entropy is positive at temperature 1, accuracy is a fraction.
  EXPECT_GT(json_number(s, "entropy"), 0);
  const double acc = json_number(s, "accuracy");
  EXPECT_TRUE(acc >= 0 && acc <= 1) << s;
  EXPECT_GE(json_number(s, "reward_std"), 0);
  EXPECT_EQ(count(s, "\"step\": "), GetParam().steps) << s;
}

INSTANTIATE_TEST_SUITE_P(Tasks, GrpoExample,
                         ::testing::Values(Example{"grpo-addition.toml", 50}, Example{"grpo-reverse.toml", 100}));

// The KL penalty to the frozen reference: zero before the first update, positive once the policy
// has moved, and reported per step.
TEST(LocalRun, GrpoKlPenaltyIsMeasured) {
  const std::string dir = std::filesystem::temp_directory_path().string() + "/mobula_grpo_kl_test";
  std::filesystem::remove_all(dir);
  auto r = run_capture(
      {kExe, "run", kSrc + "/examples/grpo-addition.toml", "--set", "rl.kl_coef=0.1", "--set", "job.steps=8", "--set",
       "rl.warm_start_steps=100", "--set", "rl.eval_problems=8", "--set", "rl.lr=3e-3", "--set", "job.workdir=" + dir},
      200);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  ASSERT_EQ(r->exit_code, 0) << r->out << r->err;
  const std::string s = read_text(dir + "/summary.json");
  EXPECT_NEAR(json_number(s, "kl_coef"), 0.1, 1e-9);
  EXPECT_EQ(json_number(s, "kl"), 0) << s;  // step 0 trains the reference itself
  const auto last = s.rfind("\"step\": 7");
  ASSERT_NE(last, std::string::npos) << s;
  EXPECT_GT(json_number(s.substr(last), "kl"), 0) << s;
}

}  // namespace
}  // namespace mobula

namespace mobula {
namespace {

// One-step-off asynchronous GRPO: rollouts sample batch k+1 with the weights before batch k's
// update; every batch after the first is exactly one version behind, never more.
TEST(LocalRun, GrpoAsyncRespectsTheStalenessBound) {
  const std::string dir = std::filesystem::temp_directory_path().string() + "/mobula_grpo_async_test";
  std::filesystem::remove_all(dir);
  auto r = run_capture(
      {kExe, "run", kSrc + "/examples/grpo-addition.toml", "--set", "rl.max_staleness=1", "--set", "job.steps=12",
       "--set", "rl.warm_start_steps=100", "--set", "rl.eval_problems=20", "--set", "job.workdir=" + dir},
      280);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  ASSERT_EQ(r->exit_code, 0) << r->out << r->err;
  EXPECT_EQ(count(r->out, "  lag 0\n"), 1u) << r->out;  // batch 0 uses v0 while training v0
  EXPECT_EQ(count(r->out, "  lag 1\n"), 11u) << r->out;
  const std::string s = read_text(dir + "/summary.json");
  EXPECT_EQ(json_number(s, "max_staleness"), 1) << s;
  EXPECT_EQ(json_number(s, "max_lag"), 1) << s;
}

}  // namespace
}  // namespace mobula

namespace mobula {
namespace {

// Two runs of a short job with the same seed and layout end with bitwise-equal weights, in the
// synchronous and the asynchronous mode.
TEST(LocalRun, GrpoIsBitwiseReproducible) {
  for (const char* staleness : {"0", "1"}) {
    std::string weights[2];
    for (int run = 0; run < 2; ++run) {
      const std::string dir = std::filesystem::temp_directory_path().string() + "/mobula_grpo_repro_" + staleness +
                              "_" + std::to_string(run);
      std::filesystem::remove_all(dir);
      auto r = run_capture({kExe, "run", kSrc + "/examples/grpo-addition.toml", "--set",
                            std::string("rl.max_staleness=") + staleness, "--set", "job.steps=6", "--set",
                            "rl.warm_start_steps=20", "--set", "rl.eval_problems=8", "--set", "job.workdir=" + dir},
                           200);
      ASSERT_TRUE(r.is_ok()) << r.status().message();
      ASSERT_EQ(r->exit_code, 0) << r->out << r->err;
      weights[run] = read_text(dir + "/policy.safetensors");
    }
    ASSERT_GT(weights[0].size(), 1000u);
    EXPECT_TRUE(weights[0] == weights[1]) << "max_staleness " << staleness << ": weights differ between two runs";
  }
}

}  // namespace
}  // namespace mobula
