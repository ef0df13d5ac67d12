// `mobula scale-study` end to end, CI-sized (docs/scaling.md): a live sweep of the GRPO demo over 1
// and 2 trainers with its calibration, the files it writes, the same weights at every point, the
// page in headless Chromium, resumption (a measured run is not rerun; a changed spec reruns), weak
// scaling's batch, and bad input refused before anything runs.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/runtime/process.h"
#include "perf/scaling/cost_model.h"
#include "tests/support/files.h"

namespace mobula {
namespace {

namespace fs = std::filesystem;
const std::string kExe = MOBULA_EXE;
const std::string kSrc = MOBULA_TEST_SOURCE_DIR;

using test::slurp;

class ScaleStudy : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("mobula_scale_study_test_" + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    setenv("MOBULA_HOME", (root_ / "home").c_str(), 1);
  }
  static void TearDownTestSuite() {
    if (!::testing::UnitTest::GetInstance()->Failed()) fs::remove_all(root_);
  }
  // `mobula scale-study` on the demo spec, shortened; returns (exit code, stdout + stderr).
  static std::pair<int, std::string> study(const std::string& out, std::vector<std::string> extra) {
    std::vector<std::string> argv = {kExe,
                                     "scale-study",
                                     kSrc + "/examples/grpo-addition.toml",
                                     "-o",
                                     out,
                                     "--set",
                                     "rl.warm_start_steps=40",
                                     "--set",
                                     "rl.eval_problems=20"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto r = run_capture(argv, 400);
    if (!r) return {-1, r.status().message()};
    return {r->exit_code, r->out + r->err};
  }
  static fs::path root_;
};
fs::path ScaleStudy::root_;

TEST_F(ScaleStudy, MeasuresFitsDrawsAndResumes) {
  const fs::path out = root_ / "strong";
  auto [rc, log] = study(out.string(), {"--sweep", "trainers=1,2", "--set", "job.steps=8"});
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("2 points x 1 repeat: 0 measured already, 2 to run"), std::string::npos) << log;
  // points.csv: one row per run, both measured, with the same weights (bitwise, whatever the count).
  auto rows = scaling::read_points((out / "points.csv").string());
  ASSERT_TRUE(rows.is_ok()) << rows.status().message();
  ASSERT_EQ(rows->size(), 2u);
  for (const auto& r : *rows) {
    EXPECT_EQ(r.exit_code, 0) << r.point;
    EXPECT_EQ(r.steps, 8) << r.point;
    EXPECT_GT(r.step_s, 0) << r.point;
    EXPECT_GT(r.tokens_per_s, 0) << r.point;
    EXPECT_GT(r.train_s, 0) << r.point;
    EXPECT_GT(r.param_bytes, 0) << r.point;
    EXPECT_GE(r.cores, 1) << r.point;
  }
  EXPECT_EQ((*rows)[0].trainers, 1);
  EXPECT_EQ((*rows)[1].trainers, 2);
  EXPECT_EQ((*rows)[1].ranks, 3);
  EXPECT_EQ((*rows)[0].params_fnv1a, (*rows)[1].params_fnv1a);
  EXPECT_EQ((*rows)[0].params_fnv1a.size(), 16u);
  // The calibration: the fits the model uses, at the rank counts the points use.
  auto samples = scaling::read_comm_samples((out / "comm.csv").string());
  ASSERT_TRUE(samples.is_ok()) << samples.status().message();
  const auto fits = scaling::fit_comm(*samples);
  EXPECT_NE(scaling::find_fit(fits, "mpi", "shardsum", 2), nullptr);
  EXPECT_NE(scaling::find_fit(fits, "mpi", "sync", 3), nullptr);
  EXPECT_NE(scaling::find_fit(fits, "hdf5", "checkpoint_save", 1), nullptr);
  EXPECT_NE(slurp(out / "model.csv").find("trainers=2,3,"), std::string::npos);
  EXPECT_NE(log.find("model: a waiting rank takes w = "), std::string::npos) << log;
  // The page draws in a browser.
  auto check = run_capture(
      {"bash", kSrc + "/tests/report/check_report.sh", (out / "index.html").string(), (root_ / "page-check").string()},
      300);
  ASSERT_TRUE(check.is_ok()) << check.status().message();
  EXPECT_EQ(check->exit_code, 0) << check->out << check->err;

  // Again: nothing to run, the files of the runs untouched.
  const fs::path summary = out / "points" / "trainers2" / "rep-1" / "summary.json";
  const auto before = fs::last_write_time(summary);
  std::tie(rc, log) = study(out.string(), {"--sweep", "trainers=1,2", "--set", "job.steps=8"});
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("2 measured already, 0 to run"), std::string::npos) << log;
  EXPECT_EQ(fs::last_write_time(summary), before);
  // One more repeat runs only the new runs; a changed spec reruns what it changes.
  std::tie(rc, log) = study(out.string(), {"--sweep", "trainers=1,2", "--set", "job.steps=8", "--repeats", "2"});
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("2 points x 2 repeats: 2 measured already, 2 to run"), std::string::npos) << log;
  std::tie(rc, log) = study(out.string(), {"--sweep", "trainers=1", "--set", "job.steps=6", "--no-calibrate"});
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("1 point x 1 repeat: 0 measured already, 1 to run"), std::string::npos) << log;
  rows = scaling::read_points((out / "points.csv").string());
  ASSERT_TRUE(rows.is_ok() && rows->size() == 1u);
  EXPECT_EQ(rows->front().steps, 6);
}

TEST_F(ScaleStudy, WeakScalingGrowsTheBatch) {
  const fs::path out = root_ / "weak";
  auto [rc, log] =
      study(out.string(), {"--sweep", "trainers=1,2", "--mode", "weak", "--no-calibrate", "--set", "job.steps=4"});
  ASSERT_EQ(rc, 0) << log;
  auto rows = scaling::read_points((out / "points.csv").string());
  ASSERT_TRUE(rows.is_ok() && rows->size() == 2u) << log;
  EXPECT_EQ((*rows)[0].batch, 16);
  EXPECT_EQ((*rows)[1].batch, 32);
  EXPECT_EQ((*rows)[1].mode, "weak");
  EXPECT_FALSE(fs::exists(out / "comm.csv"));
  EXPECT_NE(log.find("no comm.csv"), std::string::npos) << log;
}

TEST_F(ScaleStudy, BadInputIsRefusedBeforeAnythingRuns) {
  const fs::path out = root_ / "bad";
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--sweep", "trainers=1,x"}, "'x' is not a rank count"},
      {{"--sweep", "bogus=1,2"}, "neither a role"},
      {{"--sweep", "trainers=1,9"}, "point trainers=9: "},  // more trainers than job.shards
  };
  for (const auto& [args, want] : cases) {
    auto [rc, log] = study(out.string(), args);
    EXPECT_EQ(rc, 2) << log;
    EXPECT_NE(log.find(want), std::string::npos) << log;
    EXPECT_FALSE(fs::exists(out / "points")) << log;
  }
  auto r = run_capture({kExe, "scale-study", kSrc + "/examples/curate.toml", "--sweep", "embed=1,2", "--mode", "weak",
                        "-o", out.string()},
                       60);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->exit_code, 2) << r->out << r->err;
  EXPECT_NE(r->err.find("has no batch key"), std::string::npos) << r->err;
  r = run_capture({kExe, "scale-study", "fit", (root_ / "nothing").string()}, 60);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->exit_code, 2) << r->err;
  EXPECT_NE(r->err.find("not a scale-study directory"), std::string::npos) << r->err;
}

}  // namespace
}  // namespace mobula
