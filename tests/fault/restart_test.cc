// Checkpoint/restart of the GRPO job through `mobula run`: kill a rank, run again, compare weights
// bit for bit with a run that never failed; corrupt checkpoints are reported and skipped.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/runtime/process.h"

namespace mobula {
namespace {

namespace fs = std::filesystem;
const std::string kExe = MOBULA_EXE;
const std::string kSrc = MOBULA_TEST_SOURCE_DIR;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
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
                                  const std::string& kill_rank = "0") {
    if (kill_after.empty()) {
      unsetenv("MOBULA_FAULT_KILL_AFTER_STEP");
    } else {
      setenv("MOBULA_FAULT_KILL_AFTER_STEP", kill_after.c_str(), 1);
      setenv("MOBULA_FAULT_KILL_RANK", kill_rank.c_str(), 1);
    }
    auto r = run_capture({kExe, "run", kSrc + "/examples/grpo-addition.toml", "--set", "job.steps=9", "--set",
                          "rl.warm_start_steps=30", "--set", "rl.eval_problems=8", "--set", "checkpoint.every=2",
                          "--set", "checkpoint.keep=2", "--set", "job.workdir=" + (root_ / name).string()},
                         200);
    unsetenv("MOBULA_FAULT_KILL_AFTER_STEP");
    EXPECT_TRUE(r.is_ok()) << r.status().message();
    if (!r) return {-1, ""};
    return {r->exit_code, r->out + r->err};
  }
  fs::path root_;
};

TEST_F(Restart, KilledJobResumesBitwiseIdentical) {
  const auto [rc0, out0] = run("clean");
  ASSERT_EQ(rc0, 0) << out0;
  const std::string want = slurp(root_ / "clean" / "policy.safetensors");
  ASSERT_GT(want.size(), 1000u);

  // A trainer dies after step 4 (checkpoints after steps 1 and 3 = "4 steps done"), and a rollout
  // rank after step 6: the job fails each time; the third run finishes from the checkpoint.
  const auto [rc1, out1] = run("killed", "4", "1");
  EXPECT_NE(rc1, 0) << out1;
  EXPECT_NE(out1.find("fault injection: SIGKILL after step 4"), std::string::npos) << out1;
  const auto [rc2, out2] = run("killed", "6", "2");
  EXPECT_NE(rc2, 0) << out2;
  EXPECT_NE(out2.find("resumed from " + (root_ / "killed" / "checkpoints" / "ckpt-00000004.h5").string()),
            std::string::npos)
      << out2;
  const auto [rc3, out3] = run("killed");
  ASSERT_EQ(rc3, 0) << out3;
  EXPECT_NE(out3.find("ckpt-00000006.h5 (step 6"), std::string::npos) << out3;
  EXPECT_EQ(slurp(root_ / "killed" / "policy.safetensors"), want) << "weights differ from the run that never failed";
  // Retention keeps the newest 2; no temporary files remain.
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(root_ / "killed" / "checkpoints"))
    files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"ckpt-00000006.h5", "ckpt-00000008.h5", "latest"}));
  EXPECT_EQ(slurp(root_ / "killed" / "checkpoints" / "latest"), "ckpt-00000008.h5\n");
}

TEST_F(Restart, CorruptNewestCheckpointFallsBackAndAllCorruptRefusesToStart) {
  const auto [rc1, out1] = run("job", "5", "0");
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

  const auto [rc2, out2] = run("job", "6", "0");  // resumes from 4, dies again after step 6
  EXPECT_NE(out2.find("checkpoint rejected: " + (dir / "ckpt-00000006.h5").string()), std::string::npos) << out2;
  EXPECT_NE(out2.find("resumed from " + (dir / "ckpt-00000004.h5").string()), std::string::npos) << out2;
  EXPECT_NE(rc2, 0);

  // Now truncate every checkpoint: the job must refuse to start from scratch.
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".h5") fs::resize_file(e.path(), 1000);
  const auto [rc3, out3] = run("job");
  EXPECT_NE(rc3, 0) << out3;
  EXPECT_NE(out3.find("none verifies"), std::string::npos) << out3;
  EXPECT_NE(out3.find("refusing to start from scratch"), std::string::npos) << out3;
  EXPECT_FALSE(fs::exists(root_ / "job" / "policy.safetensors"));
}

}  // namespace
}  // namespace mobula
