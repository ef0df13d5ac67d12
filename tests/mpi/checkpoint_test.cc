// io/checkpoint.h at np = 1, 2: synchronous saves by a replica group, a failed save (injected
// ENOSPC) that leaves `latest` and the published files alone, fencing of an older attempt, and
// asynchronous saves (stage a copy, publish in the background, at most one in flight).
#include "io/checkpoint.h"

#include <gtest/gtest.h>
#include <mpi.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

namespace mobula::io {
namespace {

namespace fs = std::filesystem;

std::string shared_dir(const std::string& name) {
  char buf[512] = {0};
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) {
    auto dir = fs::temp_directory_path() / ("mobula_ckpt_" + std::to_string(getpid())) / name;
    fs::remove_all(dir);
    std::snprintf(buf, sizeof buf, "%s", dir.c_str());
  }
  MPI_Bcast(buf, sizeof buf, MPI_CHAR, 0, MPI_COMM_WORLD);
  return buf;
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct State {
  std::vector<float> a = std::vector<float>(1000), b = std::vector<float>(10);
  CheckpointState view(int64_t step) {
    CheckpointState c;
    c.step = step;
    c.optimizer_steps = step * 2;
    c.buffers = {{"a", std::span<float>(a)}, {"b", std::span<float>(b)}};
    return c;
  }
  void fill(float v) {
    for (size_t i = 0; i < a.size(); ++i) a[i] = v + float(i);
    for (size_t i = 0; i < b.size(); ++i) b[i] = -v - float(i);
  }
};

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(Checkpoint, FailedSaveLeavesLatestAndFilesAlone) {
  const std::string dir = shared_dir("enospc");
  State s;
  s.fill(1);
  ASSERT_TRUE(save_checkpoint(dir, s.view(2), 5, MPI_COMM_WORLD).is_ok());
  setenv("MOBULA_FAULT_SAVE_ERROR_AT_STEP", "4", 1);
  s.fill(2);
  const Status st = save_checkpoint(dir, s.view(4), 5, MPI_COMM_WORLD);
  unsetenv("MOBULA_FAULT_SAVE_ERROR_AT_STEP");
  ASSERT_FALSE(st.is_ok());  // on every rank
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) {
    EXPECT_NE(st.message().find("No space left on device"), std::string::npos) << st.message();
  }
  EXPECT_EQ(slurp(dir + "/latest"), "ckpt-00000002.h5\n");
  EXPECT_EQ(files_in(dir), (std::vector<std::string>{"ckpt-00000002.h5", "latest"}));  // no temporary left
  State r;
  CheckpointState v = r.view(0);
  auto found = load_latest_checkpoint(dir, &v, MPI_COMM_WORLD, nullptr);
  ASSERT_TRUE(found.is_ok() && *found) << found.status().message();
  EXPECT_EQ(v.step, 2);
  EXPECT_EQ(r.a[7], 8.0f);
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(Checkpoint, AnOlderAttemptCannotPublish) {
  const std::string dir = shared_dir("fence");
  State s;
  s.fill(1);
  CheckpointState v = s.view(2);
  v.attempt = 1;
  ASSERT_TRUE(save_checkpoint(dir, v, 5, MPI_COMM_WORLD).is_ok());
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) {
    ASSERT_TRUE(fence_checkpoints(dir, 2).is_ok());  // launch 2 starts on this directory
    ASSERT_TRUE(fence_checkpoints(dir, 1).is_ok());  // never lowered
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(slurp(dir + "/fence"), "2\n");
  v.step = 4;  // a straggler of launch 1
  const Status st = save_checkpoint(dir, v, 5, MPI_COMM_WORLD);
  ASSERT_FALSE(st.is_ok());
  if (rank == 0) {
    EXPECT_NE(st.message().find("fenced"), std::string::npos) << st.message();
  }
  EXPECT_EQ(slurp(dir + "/latest"), "ckpt-00000002.h5\n");
  EXPECT_EQ(files_in(dir), (std::vector<std::string>{"ckpt-00000002.h5", "fence", "latest"}));
  v.attempt = 2;
  EXPECT_TRUE(save_checkpoint(dir, v, 5, MPI_COMM_WORLD).is_ok());
  EXPECT_EQ(slurp(dir + "/latest"), "ckpt-00000004.h5\n");
}

TEST(Checkpoint, AsyncSavesPublishTheStagedCopy) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const std::string dir = shared_dir("async");
  if (rank == 0) {  // one rank of the replica group saves; the others need not call anything
    State s;
    AsyncCheckpointer ck(dir, 2);
    for (int64_t step = 1; step <= 3; ++step) {
      s.fill(float(step));
      double stall = -1;
      ASSERT_TRUE(ck.stage(s.view(step), &stall).is_ok());
      EXPECT_GE(stall, 0);
      EXPECT_GE(ck.wait_staged(), 0);  // before the buffers change
      s.fill(100);                     // training goes on: the save holds its own copy
    }
    ASSERT_TRUE(ck.wait().is_ok());
    EXPECT_EQ(slurp(dir + "/latest"), "ckpt-00000003.h5\n");
    EXPECT_EQ(files_in(dir), (std::vector<std::string>{"ckpt-00000002.h5", "ckpt-00000003.h5", "latest"}));
    // A failing save is reported by the next stage() (or wait()), and latest stays.
    setenv("MOBULA_FAULT_SAVE_ERROR_AT_STEP", "4", 1);
    ASSERT_TRUE(ck.stage(s.view(4)).is_ok());
    EXPECT_FALSE(ck.wait().is_ok());
    unsetenv("MOBULA_FAULT_SAVE_ERROR_AT_STEP");
    EXPECT_EQ(slurp(dir + "/latest"), "ckpt-00000003.h5\n");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  State r;
  CheckpointState v = r.view(0);
  auto found = load_latest_checkpoint(dir, &v, MPI_COMM_WORLD, nullptr);
  ASSERT_TRUE(found.is_ok() && *found) << found.status().message();
  EXPECT_EQ(v.step, 3);
  EXPECT_EQ(v.optimizer_steps, 6);
  EXPECT_EQ(r.a[5], 8.0f);  // step 3's values, not the 100s written after staging
  EXPECT_EQ(r.b[1], -4.0f);
}

}  // namespace
}  // namespace mobula::io
