// The latent-pretrain workload end to end with `mobula run` (docs/embedding.md): jit (embed ranks
// through core/stage), inline and offline feed the trainers the same latents in the same order, so
// all three end with bitwise-identical weights; the denoiser learns; an embed rank killed mid-run
// is recovered from the checkpoint (the step is the data cursor) without a sample skipped or
// repeated — the weights equal those of the uninterrupted run.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "core/runtime/process.h"
#include "tests/support/files.h"

namespace mobula {
namespace {

namespace fs = std::filesystem;
const std::string kExe = MOBULA_EXE;
const std::string kSrc = MOBULA_TEST_SOURCE_DIR;

using test::slurp;

std::string field(const std::string& json, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(json, m, std::regex("\"" + key + "\": \"?([^\",}\\s]+)"))) return "";
  return m[1];
}

class Latent : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("mobula_latent_test_" + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  static void TearDownTestSuite() {
    if (!::testing::UnitTest::GetInstance()->Failed()) fs::remove_all(root_);
  }
  // A small job: 2 trainers (+ 1 embed rank in jit/offline), 40 steps of 8 samples, one shared
  // synthetic dataset of 96 images (so the order wraps into a second epoch).
  static ProcessResult run(const std::string& name, std::vector<std::string> sets) {
    std::vector<std::string> argv = {kExe,
                                     "run",
                                     kSrc + "/examples/latent-pretrain.toml",
                                     "--set",
                                     "job.workdir=" + (root_ / name).string(),
                                     "--set",
                                     "data.dir=" + (root_ / "data").string(),
                                     "--set",
                                     "data.images=96",
                                     "--set",
                                     "data.per_shard=40",
                                     "--set",
                                     "job.steps=40",
                                     "--set",
                                     "latent.batch=8",
                                     "--set",
                                     "latent.hidden=128",
                                     "--set",
                                     "fault.restart_delay_s=0",
                                     "--set",
                                     "roles.embed.ranks=1"};
    for (auto& s : sets) argv.insert(argv.end(), {"--set", s});
    auto r = run_capture(argv, 280);
    EXPECT_TRUE(r.is_ok()) << r.status().message();
    return r.is_ok() ? *r : ProcessResult{};
  }
  static fs::path root_;
};
fs::path Latent::root_;

TEST_F(Latent, JitInlineAndOfflineTrainTheSameWeights) {
  std::string hash;
  for (const auto& [mode, extra] : std::vector<std::pair<std::string, std::string>>{
           {"jit", "checkpoint.every=10"}, {"inline", "roles.embed.ranks=0"}, {"offline", "checkpoint.every=0"}}) {
    const auto r = run(mode, {"latent.mode=" + mode, extra});
    ASSERT_EQ(r.exit_code, 0) << mode << "\n" << r.out << r.err;
    const std::string summary = slurp(root_ / mode / "summary.json");
    ASSERT_FALSE(summary.empty()) << mode << "\n" << r.out;
    EXPECT_EQ(field(summary, "mode"), mode);
    EXPECT_LT(std::stod(field(summary, "late_loss")), std::stod(field(summary, "early_loss")))
        << mode << ": the denoiser did not learn\n"
        << summary;
    if (hash.empty()) hash = field(summary, "params_fnv1a");
    EXPECT_EQ(field(summary, "params_fnv1a"), hash) << mode << " trained other weights than jit";
  }
  EXPECT_TRUE(fs::exists(root_ / "offline" / "latents.h5"));
  EXPECT_NE(slurp(root_ / "jit" / "events.jsonl").find("\"checkpoint_durable\""), std::string::npos);
}

TEST_F(Latent, AKilledEmbedRankIsRecoveredWithoutSkippingOrRepeatingASample) {
  const auto clean = run("clean", {"checkpoint.every=5"});
  ASSERT_EQ(clean.exit_code, 0) << clean.out << clean.err;
  setenv("MOBULA_FAULT_KILL_EMBED_AFTER_ITEMS", "23", 1);
  const auto r = run("killed", {"checkpoint.every=5"});
  unsetenv("MOBULA_FAULT_KILL_EMBED_AFTER_ITEMS");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::string events = slurp(root_ / "killed" / "events.jsonl");
  EXPECT_NE(events.find("\"fault_injected\""), std::string::npos) << events;
  EXPECT_NE(events.find("\"checkpoint_loaded\""), std::string::npos) << events;
  EXPECT_NE(r.out.find("resumed from " + (root_ / "killed").string() + "/checkpoints/ckpt-"), std::string::npos)
      << r.out;
  EXPECT_EQ(field(slurp(root_ / "killed" / "summary.json"), "params_fnv1a"),
            field(slurp(root_ / "clean" / "summary.json"), "params_fnv1a"))
      << "the restarted job trained on other data than the uninterrupted one";
}

TEST_F(Latent, AStopSignalCheckpointsExits3AndTheRelaunchResumes) {
  // Trainer 0 raises SIGUSR1 after step 12 (as Slurm's pre-timeout signal would): the trainers agree
  // at the next step boundary, publish a checkpoint, end the stage, and every rank exits 3 (the embed
  // rank too); `mobula run` relaunches and the job ends with the uninterrupted run's weights.
  const auto clean = run("clean-signal", {"checkpoint.every=0"});
  ASSERT_EQ(clean.exit_code, 0) << clean.out << clean.err;
  setenv("MOBULA_FAULT_SIGNAL_AFTER_STEP", "12", 1);
  const auto r = run("signalled", {"checkpoint.every=0"});
  unsetenv("MOBULA_FAULT_SIGNAL_AFTER_STEP");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::string events = slurp(root_ / "signalled" / "events.jsonl");
  EXPECT_NE(events.find("\"event\": \"preempted\""), std::string::npos) << events;
  EXPECT_NE(events.find("\"outcome\": \"preempted\""), std::string::npos) << events;
  EXPECT_NE(events.find("\"checkpoint_loaded\""), std::string::npos) << events;
  EXPECT_NE(r.out.find("preempted by signal 10 at the boundary of step"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("resumed from " + (root_ / "signalled").string() + "/checkpoints/ckpt-"), std::string::npos)
      << r.out;
  EXPECT_EQ(field(slurp(root_ / "signalled" / "summary.json"), "params_fnv1a"),
            field(slurp(root_ / "clean-signal" / "summary.json"), "params_fnv1a"));
}

TEST_F(Latent, APreemptedJobResumesOnFourTrainersWithTheSameWeights) {
  // 2 trainers are preempted after step 12 (no relaunch); the job resumes on 4 trainers, whose
  // stage consumers continue at the checkpoint's item, and ends with the weights of the
  // uninterrupted 2-trainer run (job.shards = 8: 4 divides it; docs/formats/checkpoint.md).
  const auto clean = run("clean-reshard", {"checkpoint.every=0"});
  ASSERT_EQ(clean.exit_code, 0) << clean.out << clean.err;
  setenv("MOBULA_FAULT_SIGNAL_AFTER_STEP", "12", 1);
  const auto first = run("reshard", {"checkpoint.every=0", "fault.max_restarts=0"});
  unsetenv("MOBULA_FAULT_SIGNAL_AFTER_STEP");
  ASSERT_EQ(first.exit_code, 3) << first.out << first.err;
  const auto r = run("reshard", {"checkpoint.every=0", "roles.trainer.ranks=4"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("resumed from " + (root_ / "reshard").string() + "/checkpoints/ckpt-"), std::string::npos)
      << r.out;
  const std::string summary = slurp(root_ / "reshard" / "summary.json");
  EXPECT_EQ(field(summary, "trainers"), "4") << summary;
  EXPECT_EQ(field(summary, "params_fnv1a"), field(slurp(root_ / "clean-reshard" / "summary.json"), "params_fnv1a"));
}

TEST_F(Latent, AFailedSaveTrainsOnAndAFailingTrainerEndsTheEmbedRanksAtOnce) {
  // The save of the checkpoint of 10 steps fails (ENOSPC): reported, training goes on. At step 17
  // every trainer fails: their stage consumers tell the embed rank, which ends too, long before
  // the hang watchdog (300 s here) would; no relaunch (fault.max_restarts = 0).
  setenv("MOBULA_FAULT_SAVE_ERROR_AT_STEP", "10", 1);
  setenv("MOBULA_FAULT_ERROR_AT_STEP", "17", 1);
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = run("failing", {"checkpoint.every=5", "fault.max_restarts=0", "fault.hang_timeout_s=300"});
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  unsetenv("MOBULA_FAULT_SAVE_ERROR_AT_STEP");
  unsetenv("MOBULA_FAULT_ERROR_AT_STEP");
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  EXPECT_LT(took, 120.0) << "the embed rank waited for a timeout:\n" << r.out << r.err;
  const std::string all = r.out + r.err, events = slurp(root_ / "failing" / "events.jsonl");
  EXPECT_NE(events.find("\"event\": \"checkpoint_failed\""), std::string::npos) << events;
  EXPECT_NE(events.find("\"step\": 15"), std::string::npos) << "no checkpoint after the failed one:\n" << events;
  EXPECT_NE(all.find("injected failure at step 17"), std::string::npos) << all;
  EXPECT_NE(all.find("(a consumer) failed and ended the stage"), std::string::npos)
      << "the embed rank did not hear of it:\n"
      << all;
}

TEST_F(Latent, OneFailingTrainerEndsTheWholeJobAtOnce) {
  // Only trainer 1 (world rank 1) fails at step 17; trainer 0 then waits in the gradient all-reduce
  // of step 17, where no stage message reaches it, and never joins the outcome agreement. Trainer 1
  // waits fault.abort_grace_s (3 s here) for it, then aborts the job (launch/worker.cc: MPI_Abort);
  // before, the job sat until the hang watchdog (300 s here, 600 by default).
  setenv("MOBULA_FAULT_ERROR_AT_STEP", "17", 1);
  setenv("MOBULA_FAULT_ERROR_RANK", "1", 1);
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = run("one-failing", {"checkpoint.every=0", "fault.max_restarts=0", "fault.hang_timeout_s=300",
                                     "fault.abort_grace_s=3"});
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  unsetenv("MOBULA_FAULT_ERROR_AT_STEP");
  unsetenv("MOBULA_FAULT_ERROR_RANK");
  const std::string all = r.out + r.err;
  EXPECT_NE(r.exit_code, 0) << all;
  EXPECT_LT(took, 60.0) << "the other ranks waited for a timeout:\n" << all;
  const size_t at = all.find("injected failure at step 17");
  EXPECT_NE(at, std::string::npos) << all;
  EXPECT_EQ(all.find("injected failure at step 17", at + 1), std::string::npos) << "logged twice:\n" << all;
  EXPECT_NE(all.find("within fault.abort_grace_s = 3 s"), std::string::npos) << all;
  EXPECT_EQ(all.find("watchdog:"), std::string::npos) << "ended by the watchdog:\n" << all;
}

TEST_F(Latent, JitWithoutEmbedRanksIsRefusedWithOneLine) {
  const auto r = run("bad", {"roles.embed.ranks=0"});
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("latent.mode: \"jit\" needs embed ranks"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace mobula
