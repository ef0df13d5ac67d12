// sbatch jobs on the local 3-node Slurm cluster (gpu = n1,n2; cpu = n3): an MPI job across two
// emulated nodes with srun --mpi=pmix, and a heterogeneous job whose het groups define the roles.
#include <gtest/gtest.h>
#include <httplib.h>

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/runtime/process.h"
#include "slurm/jobs.h"

namespace mobula {
namespace {

namespace fs = std::filesystem;
const std::string kExe = MOBULA_EXE;
const std::string kSrc = MOBULA_TEST_SOURCE_DIR;

// Emulated nodes share one host, so Open MPI's shared-memory BTL (vader) sees ranks of n1 and n2
// as local to each other and their segment names collide (segfault in
// mca_btl_vader_poll_handle_frag). TCP between "nodes" is what a real cluster would use anyway.
const char* kMpiEnv = "export OMPI_MCA_btl=self,tcp\n";

class Sbatch : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* conf = std::getenv("SLURM_CONF");
    const bool required =
        std::getenv("MOBULA_REQUIRE_SLURM") && std::string(std::getenv("MOBULA_REQUIRE_SLURM")) == "1";
    std::string why;
    if (!conf || !fs::exists(conf)) {
      why = "SLURM_CONF does not name a slurm.conf; start slurm/local-cluster.sh";
    } else {
      auto ping = run_capture({"scontrol", "ping"}, 20);
      if (!ping || ping->exit_code != 0) why = "scontrol ping failed: the local cluster is not running";
    }
    if (!why.empty()) {
      if (required) FAIL() << why << " (MOBULA_REQUIRE_SLURM=1)";
      GTEST_SKIP() << why;
    }
    dir_ =
        scratch_root() / "slurm-jobs" /
        (std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "-" + std::to_string(getpid()));
    fs::create_directories(dir_);
    setenv("MOBULA_HOME", (dir_ / "mobula-home").c_str(), 1);  // the job registry of this test
  }

  void TearDown() override {
    if (dir_.empty()) return;
    if (HasFailure()) {
      std::cerr << "job files kept in " << dir_.string() << "\n";
    } else if (dir_.string().rfind("/dev/shm/", 0) == 0) {
      std::error_code ec;
      fs::remove_all(dir_, ec);  // RAM: do not keep what passed
    }
  }

  // Job dirs live in RAM (/dev/shm) when it is writable: the CI machine's disk has stalled fsync for
  // 60 s at a time, which made a checkpoint miss a real time limit's grace period. These tests are
  // about Slurm's job lifecycle, not the disk; restart_test covers checkpoints on a real disk.
  // MOBULA_TEST_SCRATCH overrides the choice.
  static fs::path scratch_root() {
    if (const char* s = std::getenv("MOBULA_TEST_SCRATCH"); s && *s) return s;
    if (::access("/dev/shm", W_OK | X_OK) == 0)
      return fs::path("/dev/shm") / ("mobula-test-" + std::to_string(getuid()));
    return MOBULA_TEST_BINARY_DIR;
  }

  static std::string slurp(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Waits (up to 120 s) until trainer rank 0 has finished RL step `step` of the job in `workdir`:
  // its line in metrics.jsonl, which the rank appends itself. Not the job's log: Slurm relays the
  // ranks' output through slurmstepd and srun, and on a loaded machine CI saw a whole run's lines
  // reach slurm-ID.out only when the step ended, too late to signal or kill the job mid-run.
  static bool wait_for_step(const std::string& workdir, int step) {
    const std::string needle = "\"step\": " + std::to_string(step) + ",";
    for (int i = 0; i < 1200; ++i) {
      if (slurp(fs::path(workdir) / "metrics.jsonl").find(needle) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  // `mobula submit ARGS...`: expects success and stdout starting with "submitted job ID ";
  // returns ID ("" after a failed expectation); *out receives stdout.
  std::string submit(const std::vector<std::string>& args, std::string* out = nullptr) {
    std::vector<std::string> argv = {kExe, "submit"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto sub = run_capture(argv, 60);
    EXPECT_TRUE(sub.is_ok() && sub->exit_code == 0) << (sub ? sub->err : sub.status().message());
    if (!sub || sub->exit_code != 0) return "";
    const std::string pre = "submitted job ";
    EXPECT_EQ(sub->out.rfind(pre, 0), 0u) << sub->out;
    if (out) *out = sub->out;
    if (sub->out.rfind(pre, 0) != 0) return "";
    return sub->out.substr(pre.size(), sub->out.find(' ', pre.size()) - pre.size());
  }

  // Slurm holds a requeued batch job back for about two minutes (its begin time); let it start now.
  // Not in the same second as the requeue: slurmd compares the new launch credential's time with
  // the old one's revocation in whole seconds ("Job credential revoked"). The job may have started
  // on its own meanwhile ("no longer pending"): fine.
  static void release_requeued(const std::string& id) {
    std::this_thread::sleep_for(std::chrono::seconds(3));
    auto u = run_capture({"scontrol", "update", "JobId=" + id, "StartTime=now"}, 30);
    ASSERT_TRUE(u.is_ok()) << u.status().message();
    if (u->exit_code != 0) {
      EXPECT_NE(u->err.find("no longer pending"), std::string::npos) << u->err;
    }
  }

  // `scancel --batch --signal=SIG ID`. A stalled slurmctld (see slurm::wait_job; CI saw one take 85 s)
  // makes scancel time out: ask again, for up to 110 s (within the ranks' 120 s wait).
  static Result<ProcessResult> signal_batch(const std::string& id, const std::string& sig) {
    Result<ProcessResult> r = Status::timeout("scancel not run");
    for (const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(110);
         std::chrono::steady_clock::now() < until;) {
      r = run_capture({"scancel", "--batch", "--signal=" + sig, id}, 60);
      if (r.is_ok() && r->exit_code == 0) break;
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    return r;
  }

  // Slurm holds a requeued batch job back for about two minutes (its begin time): once the job is
  // requeued (PENDING, restarts >= 1), let it start at once (release_requeued). Polls every 200 ms,
  // `polls` times at most; stops at a terminal state.
  static void release_when_requeued(const std::string& id, int polls) {
    for (int i = 0; i < polls; ++i) {
      auto j = slurm::show_job(id);  // not ok: a stalled slurmctld (see slurm::wait_job), ask again
      if (j.is_ok() && j->restarts >= 1 && j->state == "PENDING") {
        release_requeued(id);
        return;
      }
      if (j.is_ok() && j->terminal()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }

  // Submit arguments: the GRPO example spec with `sets` ("key=value" each) and job.workdir=work.
  static std::vector<std::string> grpo_args(const std::string& work, const std::vector<std::string>& sets) {
    std::vector<std::string> a = {kSrc + "/examples/grpo-addition.toml"};
    for (const auto& x : sets) a.insert(a.end(), {"--set", x});
    a.insert(a.end(), {"--set", "job.workdir=" + work});
    return a;
  }

  // Writes `script`, submits it, waits for the end; returns (batch script exit code, job output).
  std::pair<int, std::string> run_job(const std::string& script) {
    const auto path = dir_ / "job.sh";
    std::ofstream(path) << script;
    auto id = slurm::sbatch({"-o", (dir_ / "out.txt").string(), "-D", dir_.string(), path.string()});
    EXPECT_TRUE(id.is_ok()) << id.status().message();
    if (!id) return {-1, ""};
    auto end = slurm::wait_job(*id, 240);
    EXPECT_TRUE(end.is_ok()) << end.status().message();
    const std::string out = slurp(dir_ / "out.txt");
    if (!end) return {-1, out};
    EXPECT_EQ(end->state, end->exit_code == 0 ? "COMPLETED" : "FAILED") << out;
    return {end->exit_code, out};
  }

  fs::path dir_;
};

TEST_F(Sbatch, MpiJobAcrossTwoNodes) {
  const auto [rc, out] = run_job("#!/bin/bash\n#SBATCH -J mobula-test -p gpu -N 2 -n 4 --ntasks-per-node=2 -t 5\n" +
                                 std::string(kMpiEnv) + "srun --mpi=pmix " + kExe + " worker " + kSrc +
                                 "/examples/minimal.toml --set job.workdir=" + dir_.string() + "/run\n");
  ASSERT_EQ(rc, 0) << out;
  // One MPI_COMM_WORLD over both nodes: trainers on n1, rollouts on n2 (block distribution).
  EXPECT_NE(out.find("   0  trainer   0/2          -  n1"), std::string::npos) << out;
  EXPECT_NE(out.find("   1  trainer   1/2          -  n1"), std::string::npos) << out;
  EXPECT_NE(out.find("   2  rollout   0/2          -  n2"), std::string::npos) << out;
  EXPECT_NE(out.find("   3  rollout   1/2          -  n2"), std::string::npos) << out;
  EXPECT_NE(out.find("[rollout 1/2 n2] info: role rollout 1/2 on world rank 3/4; links: trainer+rollout(4)"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("layout check passed: 4 ranks, 2 roles, 1 links, 3 steps"), std::string::npos) << out;
}

TEST_F(Sbatch, HetJobGroupsDefineRoles) {
  // Component 0 (cpu partition, n3) hosts the embed rank, component 1 (gpu partition, n1+n2) the
  // trainers. World rank 0 is therefore on n3 and must become the embed rank, not a trainer.
  // `mobula step` guards against Slurm 22.05's srun hanging after a het PMIx step has ended.
  const std::string script =
      "#!/bin/bash\n"
      "#SBATCH -J mobula-het -t 5 -p cpu -N 1 -n 1\n"
      "#SBATCH hetjob\n"
      "#SBATCH -p gpu -N 2 -n 2 --ntasks-per-node=1\n" +
      std::string(kMpiEnv) + kExe + " step -- srun --het-group=0,1 --mpi=pmix " + kExe + " worker " + kSrc +
      "/examples/hetjob.toml --set roles.embed.het_group=0 --set roles.trainer.het_group=1 --set job.workdir=" +
      dir_.string() + "/run\n";
  const auto [rc, out] = run_job(script);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("   0  embed     0/1          0  n3"), std::string::npos) << out;
  EXPECT_NE(out.find("   1  trainer   0/2          1  n1"), std::string::npos) << out;
  EXPECT_NE(out.find("   2  trainer   1/2          1  n2"), std::string::npos) << out;
  EXPECT_NE(out.find("layout check passed: 3 ranks, 2 roles, 1 links, 2 steps"), std::string::npos) << out;
}

TEST_F(Sbatch, StepGuardEndsAnSrunThatOutlivesItsStep) {
  // Stand-in for the hung srun: the step ends, then the guarded command keeps running. The guard
  // stops it after --grace and returns the exit code the 4 workers recorded.
  const auto [rc, out] =
      run_job("#!/bin/bash\n#SBATCH -p gpu -N 2 -n 4 --ntasks-per-node=2 -t 5\n" + std::string(kMpiEnv) + kExe +
              " step --grace 2 -- bash -c 'srun --mpi=pmix " + kExe + " worker " + kSrc +
              "/examples/minimal.toml --set job.workdir=" + dir_.string() + "/run; exec sleep 600'\n");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("layout check passed"), std::string::npos) << out;
  EXPECT_NE(out.find("has not exited"), std::string::npos) << out;
  EXPECT_NE(out.find("all ranks recorded their exit codes; step exit code 0"), std::string::npos) << out;
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 3) << "record dir left behind";
}

TEST_F(Sbatch, RequireRecordsFailsAStepWhoseRanksDidNotRun) {
  // srun exits 0 but no mobula worker ran (CI saw srun exit 0 after a launch that failed on a
  // returning node): with --require-records (rendered scripts pass it) the step failed.
  const auto [rc, out] = run_job("#!/bin/bash\n#SBATCH -p gpu -N 1 -n 1 -t 5\n" + kExe +
                                 " step --require-records -- srun -n 1 true\necho \"after step $?\"\n");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("mobula step: 'srun' exited 0 but no rank recorded an exit code; the step failed"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("after step 1"), std::string::npos) << out;
}

TEST_F(Sbatch, StepGuardFailsWithoutRecords) {
  // A step whose tasks record nothing (not mobula workers) cannot be vouched for: exit 1.
  const auto [rc, out] =
      run_job("#!/bin/bash\n#SBATCH -p gpu -N 1 -n 1 -t 5\n" + kExe +
              " step --grace 2 -- bash -c 'srun -n 1 sleep 2; exec sleep 600'\necho \"after step $?\"\n");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("has not exited"), std::string::npos) << out;
  EXPECT_NE(out.find("no rank recorded an exit code; the step failed"), std::string::npos) << out;
  EXPECT_NE(out.find("after step 1"), std::string::npos) << out;
}

TEST_F(Sbatch, SubmitRendersAHetJobFromRoleResources) {
  // `mobula submit`: trainers on the gpu partition one per node, the embed rank on cpu. Different
  // resources make a het job; submit pins each role to its component.
  const std::string work = (dir_ / "run").string();
  std::string printed;
  const std::string id =
      submit({kSrc + "/examples/hetjob.toml", "--set", "job.workdir=" + work, "--set", "slurm.partition=gpu", "--set",
              "slurm.trainer.tasks_per_node=1", "--set", "slurm.embed.partition=cpu", "--set", "slurm.time=5", "--set",
              "slurm.env=[\"OMPI_MCA_btl=self,tcp\"]"},
             &printed);
  ASSERT_FALSE(id.empty());
  EXPECT_NE(printed.find("(2 components)"), std::string::npos) << printed;
  EXPECT_TRUE(fs::exists(fs::path(work) / "sbatch.sh"));
  EXPECT_TRUE(fs::exists(fs::path(work) / "spec.toml"));
  auto end = slurm::wait_job(id, 240);
  ASSERT_TRUE(end.is_ok()) << end.status().message();
  const std::string out = slurp(fs::path(work) / ("slurm-" + id + ".out"));
  EXPECT_EQ(end->state, "COMPLETED") << out;
  EXPECT_NE(out.find("   0  trainer   0/2          0  n1"), std::string::npos) << out;
  EXPECT_NE(out.find("   1  trainer   1/2          0  n2"), std::string::npos) << out;
  EXPECT_NE(out.find("   2  embed     0/1          1  n3"), std::string::npos) << out;
  EXPECT_NE(out.find("layout check passed: 3 ranks, 2 roles, 1 links, 2 steps"), std::string::npos) << out;
}

TEST_F(Sbatch, LatentPretrainWithEmbedRanksOnTheCpuPartition) {
  // JIT embedding across a heterogeneous job: trainers on the gpu partition (n1, n2), the embed rank
  // on cpu (n3), one MPI world; the stage feeds the trainers across nodes. The weights equal those of
  // the same spec run with `mobula run` on local ranks: the data order does not depend on placement.
  const std::vector<std::string> sets = {"roles.embed.ranks=1",
                                         "job.steps=30",
                                         "latent.batch=8",
                                         "latent.hidden=128",
                                         "data.images=64",
                                         "data.per_shard=32",
                                         "checkpoint.every=10",
                                         "slurm.time=5",
                                         "slurm.partition=gpu",
                                         "slurm.trainer.tasks_per_node=1",
                                         "slurm.embed.partition=cpu",
                                         "slurm.env=[\"OMPI_MCA_btl=self,tcp\"]"};
  std::vector<std::string> args = {kSrc + "/examples/latent-pretrain.toml"};
  for (const auto& x : sets) args.insert(args.end(), {"--set", x});
  const std::string work = (dir_ / "run").string(), local = (dir_ / "local").string();
  auto sub_args = args;
  sub_args.insert(sub_args.end(), {"--set", "job.workdir=" + work});
  std::string printed;
  const std::string id = submit(sub_args, &printed);
  ASSERT_FALSE(id.empty());
  EXPECT_NE(printed.find("(2 components)"), std::string::npos) << printed;
  std::vector<std::string> run_argv = {kExe, "run"};
  run_argv.insert(run_argv.end(), args.begin(), args.end());
  run_argv.insert(run_argv.end(), {"--set", "job.workdir=" + local});
  auto loc = run_capture(run_argv, 240);
  ASSERT_TRUE(loc.is_ok() && loc->exit_code == 0) << (loc ? loc->out + loc->err : loc.status().message());
  auto end = slurm::wait_job(id, 300);
  ASSERT_TRUE(end.is_ok()) << end.status().message();
  const std::string out = slurp(fs::path(work) / ("slurm-" + id + ".out"));
  EXPECT_EQ(end->state, "COMPLETED") << out;
  EXPECT_NE(out.find("   2  embed     0/1          1  n3"), std::string::npos) << out;
  EXPECT_NE(out.find("latent-pretrain (jit)"), std::string::npos) << out;
  const auto hash = [](const std::string& summary) {
    const auto p = summary.find("\"params_fnv1a\": \"");
    return p == std::string::npos ? std::string() : summary.substr(p + 17, 16);
  };
  const std::string a = hash(slurp(fs::path(work) / "summary.json")), b = hash(slurp(fs::path(local) / "summary.json"));
  EXPECT_FALSE(a.empty()) << out;
  EXPECT_EQ(a, b) << "the het job trained other weights than the local run";
}

TEST_F(Sbatch, PreTimeoutSignalCheckpointsRequeuesAndCompletes) {
  // The batch shell gets the pre-timeout signal (here sent at once with scancel --batch, as
  // --signal=B:USR1@grace would before the time limit): mobula step forwards it to srun, srun to
  // the ranks; they agree at a step boundary, the trainers publish a checkpoint, every rank exits 3,
  // mobula step requeues the job (scontrol requeue), and the next allocation resumes and completes
  // with the weights of an uninterrupted run.
  // The ranks of the signalled job wait after step 3 until the signal reaches them
  // (MOBULA_FAULT_AWAIT_SIGNAL_AFTER_STEP; it changes no result), so the signal lands mid-run however
  // slow the machine or slurmctld is: a fixed 40 ms a step once left too short a window (a whole
  // 150-step run ended before a loaded CI machine's scancel reached slurmctld, 5 s).
  const std::vector<std::string> common = {"job.steps=150", "rl.warm_start_steps=30", "rl.eval_problems=8",
                                           "checkpoint.every=5", "slurm.partition=gpu"};
  auto sets = common, clean_sets = common;
  sets.push_back("slurm.env=[\"OMPI_MCA_btl=self,tcp\", \"MOBULA_FAULT_AWAIT_SIGNAL_AFTER_STEP=3\"]");
  clean_sets.push_back("slurm.env=[\"OMPI_MCA_btl=self,tcp\"]");
  const std::string work = (dir_ / "run").string(), clean = (dir_ / "clean").string();
  const std::string id = submit(grpo_args(work, sets));
  const std::string clean_id = submit(grpo_args(clean, clean_sets));
  ASSERT_FALSE(id.empty() || clean_id.empty());
  const fs::path log = fs::path(work) / ("slurm-" + id + ".out");
  // Signal once RL steps run (after the warm start).
  ASSERT_TRUE(wait_for_step(work, 3)) << slurp(log);
  const auto sig = signal_batch(id, "USR1");
  ASSERT_TRUE(sig.is_ok() && sig->exit_code == 0) << (sig ? sig->err : sig.status().message());
  release_when_requeued(id, 600);
  auto end = slurm::wait_job(id, 300);
  ASSERT_TRUE(end.is_ok()) << end.status().message();
  auto clean_end = slurm::wait_job(clean_id, 300);
  ASSERT_TRUE(clean_end.is_ok()) << clean_end.status().message();
  ASSERT_EQ(clean_end->state, "COMPLETED") << slurp(fs::path(clean) / ("slurm-" + clean_id + ".out"));
  const std::string out = slurp(log);
  EXPECT_EQ(end->state, "COMPLETED") << out;
  EXPECT_NE(out.find("mobula step: got signal 10 (SIGUSR1); passed it on to 'srun'"), std::string::npos) << out;
  EXPECT_NE(out.find("fault injection: signal 10 arrived; going on"), std::string::npos) << out;
  EXPECT_NE(out.find("preempted by signal 10 at the boundary of step"), std::string::npos) << out;
  EXPECT_NE(out.find("mobula step: the job was preempted; requeueing it (requeue 1 of 3)"), std::string::npos) << out;
  EXPECT_NE(out.find("resumed from " + work + "/checkpoints/ckpt-"), std::string::npos) << out;
  EXPECT_NE(slurp(fs::path(work) / "summary.json").find("\"first_step\": "), std::string::npos);
  EXPECT_EQ(slurp(fs::path(work) / "summary.json").find("\"first_step\": 0,"), std::string::npos)
      << "the last attempt did not resume";
  EXPECT_TRUE(slurp(fs::path(work) / "policy.safetensors") == slurp(fs::path(clean) / "policy.safetensors"))
      << "weights differ from the uninterrupted job";
  // The event journal spans both allocations: mobula step's attempts and requeue, the ranks' events.
  const std::string ev = slurp(fs::path(work) / "events.jsonl");
  for (const char* e :
       {"\"event\": \"attempt_start\", \"attempt\": 0", "\"event\": \"preempted\"", "\"event\": \"requeue\"",
        "\"event\": \"checkpoint_loaded\", \"attempt\": 3", "\"event\": \"job_end\", \"attempt\": 3"})
    EXPECT_NE(ev.find(e), std::string::npos) << e << " missing in\n" << ev;
  // mobula status finds the job in the registry, by id and by name (the newest of that name).
  auto st = run_capture({kExe, "status", id}, 60);
  ASSERT_TRUE(st.is_ok() && st->exit_code == 0) << (st ? st->err : st.status().message());
  EXPECT_NE(st->out.find("job " + id + " (grpo-addition): COMPLETED"), std::string::npos) << st->out;
  EXPECT_NE(st->out.find("requeued 1 time(s)"), std::string::npos) << st->out;
  EXPECT_NE(st->out.find("last step 149"), std::string::npos) << st->out;
  EXPECT_NE(st->out.find("finished  yes"), std::string::npos) << st->out;
  EXPECT_NE(st->out.find("last event {"), std::string::npos) << st->out;
  EXPECT_NE(st->out.find("\"event\": \"job_end\""), std::string::npos) << st->out;
  auto all = run_capture({kExe, "status"}, 60);
  ASSERT_TRUE(all.is_ok() && all->exit_code == 0);
  EXPECT_NE(all->out.find(id + " "), std::string::npos) << all->out;
  EXPECT_NE(all->out.find(clean_id + " "), std::string::npos) << all->out;
  auto logs = run_capture({kExe, "logs", id}, 60);
  ASSERT_TRUE(logs.is_ok() && logs->exit_code == 0);
  EXPECT_EQ(logs->out, out);
  auto missing = run_capture({kExe, "status", "no-such-job"}, 60);
  ASSERT_TRUE(missing.is_ok());
  EXPECT_EQ(missing->exit_code, 2);
  EXPECT_NE(missing->err.find("no job 'no-such-job' in the registry"), std::string::npos) << missing->err;
}

// Processes whose /proc/PID/environ holds NAME=VALUE for every pair (same user; unreadable ones
// are skipped).
std::vector<int> pids_with_env(const std::vector<std::string>& vars) {
  std::vector<int> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string n = e.path().filename().string();
    if (n.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(e.path() / "environ", std::ios::binary);
    std::string env((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    bool all = !env.empty();
    for (const auto& v : vars)
      all = all && env.find(std::string(1, '\0') + v + std::string(1, '\0')) != std::string::npos;
    if (all) out.push_back(std::stoi(n));
  }
  return out;
}

// slurmstepd processes that hold `open_file` open (an emulated node's slurmd log).
std::vector<int> stepds_of(const std::string& open_file) {
  std::vector<int> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string n = e.path().filename().string();
    if (n.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream cmd(e.path() / "cmdline");
    std::string c;
    std::getline(cmd, c, '\0');
    if (c.rfind("slurmstepd", 0) != 0) continue;
    std::error_code ec;
    for (const auto& fd : fs::directory_iterator(e.path() / "fd", ec)) {
      const auto target = fs::read_symlink(fd.path(), ec).string();
      if (!ec && target == open_file) {
        out.push_back(std::stoi(n));
        break;
      }
    }
  }
  return out;
}

TEST_F(Sbatch, NodeLossRequeuesAndResumes) {
  // A 2-node job (ranks 0-1 on n1, rank 2 on n2) loses n2: its slurmd, step daemon and rank are
  // SIGKILLed mid-run. srun reports the dead rank and ends the step; before relaunching, mobula
  // step probes every node of the allocation (srun true), finds n2 unusable and requeues the job
  // instead of burning its relaunches on a node slurmctld has not declared DOWN yet (that takes
  // SlurmdTimeout). n2 comes back (slurmd restarted, ReturnToService=2); the next allocation
  // resumes from the newest checkpoint and ends with the weights of an uninterrupted job.
  const std::string conf = std::getenv("SLURM_CONF");
  const fs::path cluster = fs::path(conf).parent_path();
  const std::vector<std::string> sets = {
      "job.steps=400",       "rl.warm_start_steps=30",   "rl.eval_problems=8",
      "checkpoint.every=10", "fault.hang_timeout_s=120", "slurm.partition=gpu",
      "slurm.nodes=2",       "slurm.tasks_per_node=2",   "slurm.env=[\"OMPI_MCA_btl=self,tcp\"]"};
  const std::string work = (dir_ / "run").string(), clean = (dir_ / "clean").string();
  const std::string clean_id = submit(grpo_args(clean, sets));
  ASSERT_FALSE(clean_id.empty());
  auto clean_end = slurm::wait_job(clean_id, 300);
  ASSERT_TRUE(clean_end.is_ok() && clean_end->state == "COMPLETED")
      << slurp(fs::path(clean) / ("slurm-" + clean_id + ".out"));
  const std::string id = submit(grpo_args(work, sets));
  ASSERT_FALSE(id.empty());
  const fs::path log = fs::path(work) / ("slurm-" + id + ".out");
  ASSERT_TRUE(wait_for_step(work, 25)) << slurp(log);
  // Node n2 dies: slurmd, its step daemon, its rank.
  int slurmd_pid = 0;
  std::ifstream(cluster / "slurmd-n2.pid") >> slurmd_pid;
  ASSERT_GT(slurmd_pid, 0);
  const auto ranks = pids_with_env({"SLURMD_NODENAME=n2", "SLURM_JOB_ID=" + id});
  // n2's step daemons hold n2's slurmd log open (SlurmdLogFile in the cluster's slurm.conf).
  std::string n2_log, ctld_log;
  {
    std::istringstream conf_text(slurp(cluster / "slurm.conf"));
    for (std::string line; std::getline(conf_text, line);) {
      if (line.rfind("SlurmdLogFile=", 0) == 0) n2_log = line.substr(14);
      if (line.rfind("SlurmctldLogFile=", 0) == 0) ctld_log = line.substr(17);
    }
    const auto at = n2_log.find("%n");
    if (at != std::string::npos) n2_log.replace(at, 2, "n2");
  }
  ASSERT_FALSE(n2_log.empty() || ctld_log.empty())
      << "no SlurmdLogFile or SlurmctldLogFile in " << (cluster / "slurm.conf");
  const auto stepds = stepds_of(n2_log);
  ASSERT_FALSE(ranks.empty()) << "no rank of job " << id << " on n2";
  ASSERT_FALSE(stepds.empty()) << "no slurmstepd of n2 (with " << n2_log << " open)";
  ::kill(slurmd_pid, SIGKILL);
  for (int p : stepds) ::kill(p, SIGKILL);
  for (int p : ranks) ::kill(p, SIGKILL);
  // Wait for the requeue (node failure), bring n2 back, release the requeue hold.
  // Up to the hang watchdog (fault.hang_timeout_s: srun does not hear of a rank whose step daemon
  // died) plus a node probe that may run into its 90 s bound, plus slack.
  bool requeued = false;
  const auto requeue_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(400);
  while (!requeued && std::chrono::steady_clock::now() < requeue_deadline) {
    auto j = slurm::show_job(id);
    if (!j.is_ok()) {  // a stalled slurmctld (see slurm::wait_job): ask again
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    requeued = j->restarts >= 1 && j->state == "PENDING";
    if (j->terminal()) break;
    if (!requeued) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  auto restart = run_capture({kSrc + "/slurm/local-cluster.sh", "start", cluster.string()}, 120);
  ASSERT_TRUE(restart.is_ok() && restart->exit_code == 0) << (restart ? restart->err : restart.status().message());
  ASSERT_TRUE(requeued) << "job " << id << " was not requeued after the node loss:\n" << slurp(log);
  release_requeued(id);
  auto end = slurm::wait_job(id, 300);
  ASSERT_TRUE(end.is_ok()) << end.status().message();
  const std::string out = slurp(log);
  EXPECT_EQ(end->state, "COMPLETED") << out;
  // Two ways to the next allocation, both right: mobula step sees its step fail, probes the nodes
  // and requeues (`node_failure` event); or slurmctld declares the node failed first and requeues
  // the job itself (--requeue), killing the batch script. Which one wins is a race.
  const std::string events = slurp(fs::path(work) / "events.jsonl");
  // mobula step writes its event and its message before 'scontrol requeue' (which can end the batch
  // script at once). slurmctld's own requeue leaves its line in slurmctld.log; srun's "Node failure"
  // message is there only when srun heard of it before the batch script was killed (CI once saw neither).
  const bool by_mobula = events.find("\"event\": \"node_failure\"") != std::string::npos;
  const std::string ctld_line = "requeue job JobId=" + id + " due to failure of node n2";
  const bool by_slurm = out.find("srun: error: Node failure on n2") != std::string::npos ||
                        slurp(ctld_log).find(ctld_line) != std::string::npos;
  EXPECT_TRUE(by_mobula || by_slurm) << out << events;
  if (by_mobula) {
    EXPECT_NE(out.find("mobula step: node probe"), std::string::npos) << out;
    EXPECT_NE(out.find("the job was left with a lost node; requeueing it (requeue 1 of 3)"), std::string::npos) << out;
    EXPECT_NE(events.find("\"event\": \"requeue\""), std::string::npos) << events;
  }
  EXPECT_NE(events.find("\"slurm_restart_count\": 1"), std::string::npos) << events;
  EXPECT_NE(out.find("mobula step: job " + id + " was requeued (SLURM_RESTART_COUNT=1:"), std::string::npos) << out;
  EXPECT_NE(out.find("resumed from " + work + "/checkpoints/ckpt-"), std::string::npos) << out;
  EXPECT_TRUE(slurp(fs::path(work) / "policy.safetensors") == slurp(fs::path(clean) / "policy.safetensors"))
      << "weights differ from the uninterrupted job";
  // Leave n2 healthy for the next tests: responding (no '*') and not DOWN.
  std::string state;
  for (int i = 0; i < 300; ++i) {
    auto st = run_capture({"sinfo", "-h", "-n", "n2", "-o", "%T"}, 30);
    state = st.is_ok() ? st->out : "";
    if (!state.empty() && state.find('*') == std::string::npos && state.find("down") == std::string::npos &&
        state.find("drain") == std::string::npos)
      break;
    if (state.find("down") != std::string::npos)
      (void)run_capture({"scontrol", "update", "NodeName=n2", "State=RESUME"}, 30);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(state.find('*'), std::string::npos) << "n2 is " << state;
}

TEST_F(Sbatch, TimeLimitSignalCheckpointsRequeuesAndCompletesLater) {
  // A real time limit: --time=2 with --signal=B:USR1@30. slurmctld checks every 30 s and sends the
  // signal once now + 30 s + 30 s >= the end, i.e. 60-90 s into each allocation. The work is
  // ~95-110 s (3000 steps, trainer 0 sleeping 30 ms after each: MOBULA_FAULT_STEP_DELAY_MS, so it
  // hardly depends on the machine): longer than the first allocation's 60-90 s, and what is left
  // (< 50 s) ends before the second allocation's signal. So: checkpoint + requeue once, then done.
  const std::string work = (dir_ / "run").string();
  const std::string id = submit({kSrc + "/examples/grpo-addition.toml",
                                 "--set",
                                 "job.workdir=" + work,
                                 "--set",
                                 "job.steps=3000",
                                 "--set",
                                 "rl.warm_start_steps=30",
                                 "--set",
                                 "rl.eval_problems=8",
                                 "--set",
                                 "rl.prompts_per_step=4",
                                 "--set",
                                 "rl.group_size=4",
                                 "--set",
                                 "checkpoint.every=100",
                                 "--set",
                                 "fault.max_requeues=3",
                                 "--set",
                                 "slurm.time=2",
                                 "--set",
                                 "slurm.signal_grace_s=30",
                                 "--set",
                                 "slurm.partition=gpu",
                                 "--set",
                                 "slurm.env=[\"OMPI_MCA_btl=self,tcp\", \"MOBULA_FAULT_STEP_DELAY_MS=30\"]"});
  ASSERT_FALSE(id.empty());
  const fs::path log = fs::path(work) / ("slurm-" + id + ".out");
  int released = 0;
  for (int i = 0; i < 3000; ++i) {  // up to ~10 minutes
    auto j = slurm::show_job(id);
    if (!j.is_ok()) {  // a stalled slurmctld (see slurm::wait_job): ask again
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    if (j->terminal()) break;
    if (j->state == "PENDING" && j->restarts > released) {
      release_requeued(id);
      released = j->restarts;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  auto end = slurm::show_job(id);
  ASSERT_TRUE(end.is_ok()) << end.status().message();
  const std::string out = slurp(log);
  EXPECT_EQ(end->state, "COMPLETED") << out.substr(out.size() > 6000 ? out.size() - 6000 : 0);
  EXPECT_GE(end->restarts, 1) << "the job ended within its first allocation";
  EXPECT_LE(end->restarts, 2) << "the work is meant to take two allocations";
  EXPECT_NE(out.find("mobula step: got signal 10 (SIGUSR1); passed it on to 'srun'"), std::string::npos);
  EXPECT_NE(out.find("preempted by signal 10 at the boundary of step"), std::string::npos);
  EXPECT_NE(out.find("resumed from " + work + "/checkpoints/ckpt-"), std::string::npos);
  EXPECT_NE(out.find("held-out accuracy, after GRPO"), std::string::npos);
}

TEST_F(Sbatch, FailedStepIsRelaunchedAndResumesFromTheCheckpoint) {
  // Rank 0 is SIGKILLed after step 4 of the first launch; --kill-on-bad-exit ends the step, mobula
  // step relaunches it (fault.max_restarts) and the job resumes from the checkpoint of step 4.
  const std::string work = (dir_ / "run").string();
  const std::string id =
      submit({kSrc + "/examples/grpo-addition.toml", "--set", "job.workdir=" + work, "--set", "job.steps=8", "--set",
              "rl.warm_start_steps=30", "--set", "rl.eval_problems=8", "--set", "checkpoint.every=2", "--set",
              "fault.restart_delay_s=0", "--set", "slurm.partition=gpu", "--set",
              "slurm.env=[\"OMPI_MCA_btl=self,tcp\", \"MOBULA_FAULT_KILL_AFTER_STEP=4\"]"});
  ASSERT_FALSE(id.empty());
  auto end = slurm::wait_job(id, 240);
  ASSERT_TRUE(end.is_ok()) << end.status().message();
  const std::string out = slurp(fs::path(work) / ("slurm-" + id + ".out"));
  EXPECT_EQ(end->state, "COMPLETED") << out;
  EXPECT_NE(out.find("fault injection: SIGKILL after step 4"), std::string::npos) << out;
  EXPECT_NE(out.find("relaunching in 0 s (restart 1 of 2)"), std::string::npos) << out;
  EXPECT_NE(out.find("resumed from " + work + "/checkpoints/ckpt-00000004.h5"), std::string::npos) << out;
  EXPECT_NE(out.find("held-out accuracy, after GRPO"), std::string::npos) << out;
  EXPECT_EQ(out.find("restart 2 of 2"), std::string::npos) << out;
}

TEST_F(Sbatch, FinalFailureKeepsTheAllocationForDebugging) {
  // Every launch dies (MOBULA_FAULT_KILL_ATTEMPT=-1) and no relaunch is allowed: the job fails, and
  // slurm.keep_on_failure holds the allocation 5 s with instructions to attach before it ends.
  const std::string work = (dir_ / "run").string();
  const std::string id = submit(
      {kSrc + "/examples/grpo-addition.toml", "--set", "job.workdir=" + work, "--set", "job.steps=4", "--set",
       "rl.warm_start_steps=10", "--set", "rl.eval_problems=8", "--set", "fault.max_restarts=0", "--set",
       "slurm.keep_on_failure=0:05", "--set", "slurm.partition=gpu", "--set",
       "slurm.env=[\"OMPI_MCA_btl=self,tcp\", \"MOBULA_FAULT_KILL_AFTER_STEP=1\", \"MOBULA_FAULT_KILL_ATTEMPT=-1\"]"});
  ASSERT_FALSE(id.empty());
  const fs::path log = fs::path(work) / ("slurm-" + id + ".out");
  for (int i = 0; i < 1200 && slurp(log).find("keeping the allocation") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto held_since = std::chrono::steady_clock::now();
  auto running = slurm::show_job(id);
  ASSERT_TRUE(running.is_ok()) << running.status().message();
  EXPECT_EQ(running->state, "RUNNING") << slurp(log);
  auto end = slurm::wait_job(id, 120);
  ASSERT_TRUE(end.is_ok()) << end.status().message();
  const double held = std::chrono::duration<double>(std::chrono::steady_clock::now() - held_since).count();
  const std::string out = slurp(log);
  EXPECT_EQ(end->state, "FAILED") << out;
  EXPECT_NE(out.find("keeping the allocation for 5 s (slurm.keep_on_failure): attach with 'srun --jobid=" + id),
            std::string::npos)
      << out;
  EXPECT_GE(held, 3.0) << out;
}

TEST_F(Sbatch, GrpoAcrossTwoNodes) {
  // The demo's spec, shortened, as 2 trainers on n1 and 1 rollout on n2: weight sync, rollouts and
  // gradients cross emulated nodes (TCP).
  const auto [rc, out] = run_job("#!/bin/bash\n#SBATCH -J mobula-grpo -p gpu -N 2 -n 3 -t 5\n" + std::string(kMpiEnv) +
                                 "srun --mpi=pmix " + kExe + " worker " + kSrc +
                                 "/examples/grpo-addition.toml --set rl.warm_start_steps=50 --set job.steps=5 "
                                 "--set rl.eval_problems=20 --set job.workdir=" +
                                 dir_.string() + "/run\n");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("   2  rollout   0/1          -  n2"), std::string::npos) << out;
  EXPECT_NE(out.find("[trainer 0/2 n1] info: step    4"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(dir_ / "run" / "summary.json")) << out;
}

TEST_F(Sbatch, FailingStepFailsTheJob) {
  // A spec error inside the allocation: every rank exits 2, srun and the batch script fail, and
  // the one-line message reaches the job's output exactly once.
  const auto [rc, out] =
      run_job("#!/bin/bash\n#SBATCH -p gpu -N 1 -n 2 -t 5\n" + std::string(kMpiEnv) + "srun --mpi=pmix " + kExe +
              " worker " + kSrc + "/examples/minimal.toml --set job.workdir=" + dir_.string() + "/run\n");
  EXPECT_NE(rc, 0);
  size_t n = 0;
  for (size_t p = out.find("roles: role ranks add up to 4"); p != std::string::npos;
       p = out.find("roles: role ranks add up to 4", p + 1))
    ++n;
  EXPECT_EQ(n, 1u) << out;
}

TEST_F(Sbatch, ScaleStudyRunsEachPointAsAJobAfterThePrevious) {
  // `mobula scale-study --slurm`: one batch job per run, each depending on the last (afterany), so
  // no two runs share the nodes; the study waits for them and reads their summaries.
  const std::string out = (dir_ / "study").string();
  auto r = run_capture({kExe, "scale-study", kSrc + "/examples/grpo-addition.toml", "--slurm", "--sweep",
                        "trainers=1,2", "-o", out, "--set", "rl.warm_start_steps=40", "--set", "job.steps=5", "--set",
                        "rl.eval_problems=20", "--set", "slurm.partition=gpu", "--set", "slurm.time=5"},
                       400);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  const std::string log = r->out + r->err;
  ASSERT_EQ(r->exit_code, 0) << log;
  EXPECT_NE(log.find("trainers=2, repeat 1: Slurm job"), std::string::npos) << log;
  const std::string csv = slurp(fs::path(out) / "points.csv");
  EXPECT_NE(csv.find("trainers=1,1,strong,grpo,1,1,0,0,2,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("trainers=2,1,strong,grpo,2,1,0,0,3,"), std::string::npos) << csv;
  // The second run's job waited for the first one's.
  EXPECT_NE(log.find("trainers=2, repeat 1: Slurm job "), std::string::npos) << log;
  EXPECT_NE(log.find(" (after job "), std::string::npos) << log;
  const std::string script = slurp(fs::path(out) / "points" / "trainers2" / "rep-1" / "sbatch.sh");
  EXPECT_FALSE(script.empty());
  bool found_out = false;
  for (const auto& e : fs::directory_iterator(fs::path(out) / "points" / "trainers2" / "rep-1"))
    found_out = found_out || e.path().filename().string().rfind("slurm-", 0) == 0;
  EXPECT_TRUE(found_out) << "no slurm-ID.out in the run's work dir";
}

TEST_F(Sbatch, ServeJobIsRequeuedAndKeepsItsState) {
  // `mobula submit` of a serve spec: the service runs as a batch job; the pre-timeout signal makes
  // it exit "preempted", mobula step requeues it, and the next allocation's service answers the
  // futures of the first one and still holds the gradient of an acknowledged forward_backward
  // (re-run from the journal): the optim_step after the requeue trains on it.
  using nlohmann::json;
  const std::string work = (dir_ / "serve").string();
  std::vector<std::string> args = {
      kSrc + "/examples/serve.toml", "--set", "job.workdir=" + work, "--set", "serve.port=0", "--set",
      "slurm.partition=gpu"};
  std::vector<std::string> tok = {kExe, "serve", "token", "create"};
  tok.insert(tok.end(), args.begin(), args.end());
  tok.insert(tok.end(), {"--name", "alice"});
  auto t = run_capture(tok, 60);
  ASSERT_TRUE(t.is_ok() && t->exit_code == 0) << (t ? t->err : t.status().message());
  const httplib::Headers auth = {{"Authorization", "Bearer " + t->out.substr(0, t->out.find('\n'))}};
  const std::string id = submit(args);
  ASSERT_FALSE(id.empty());
  const fs::path log = fs::path(work) / ("slurm-" + id + ".out");
  // The service of an attempt: its port once serve.json names a pid other than `old` and answers.
  auto endpoint = [&](int64_t old, int64_t* pid) {
    for (int i = 0; i < 2400; ++i) {
      const json j = json::parse(slurp(fs::path(work) / "serve.json"), nullptr, false);
      if (j.is_object() && j["pid"] != old) {
        httplib::Client c("127.0.0.1", j["port"].get<int>());
        if (auto r = c.Get("/v1/healthz"); r && r->status == 200) {
          *pid = j["pid"];
          return j["port"].get<int>();
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return 0;
  };
  auto call = [&](int port, const std::string& path, const json& body, const std::string& rid) {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    httplib::Headers h = auth;
    if (!rid.empty()) h.emplace("Idempotency-Key", rid);
    auto r = c.Post(path.c_str(), h, body.dump(), "application/json");
    return r ? json::parse(r->body, nullptr, false) : json();
  };
  auto result = [&](int port, const json& submitted) {
    for (int i = 0; i < 60; ++i) {
      const json f = call(port, "/v1/retrieve_future", {{"future_id", submitted["future_id"]}, {"timeout_s", 5}}, "");
      if (f.is_object() && f["state"] != "pending") return f;
    }
    return json();
  };
  int64_t pid = -1;
  const int port = endpoint(-1, &pid);
  ASSERT_GT(port, 0) << slurp(log);
  const json created = result(port, call(port, "/v1/adapters", {{"rank", 4}}, "create"));
  ASSERT_EQ(created["state"], "done") << created.dump();
  const std::string base = "/v1/adapters/" + std::to_string(created["result"]["adapter_id"].get<int64_t>());
  json datum = {{"tokens", {3, 4, 5, 6, 7}}, {"target_tokens", {4, 5, 6, 7, 8}}, {"weights", {0, 1, 1, 1, 1}}};
  const json fb = result(port, call(port, base + "/forward_backward", {{"data", {datum}}}, "fb"));
  ASSERT_EQ(fb["state"], "done") << fb.dump();
  const auto sig = signal_batch(id, "USR1");
  ASSERT_TRUE(sig.is_ok() && sig->exit_code == 0) << (sig ? sig->err : sig.status().message());
  release_when_requeued(id, 1200);
  int64_t pid2 = -1;
  const int port2 = endpoint(pid, &pid2);
  ASSERT_GT(port2, 0) << slurp(log);
  // The first allocation's future, retried by id: the same future and result.
  const json again = call(port2, base + "/forward_backward", {{"data", {datum}}}, "fb");
  EXPECT_EQ(again["future_id"], fb["future_id"]);
  EXPECT_EQ(result(port2, again)["result"], fb["result"]);
  const json step = result(port2, call(port2, base + "/optim_step", {{"lr", 0.01}}, "step"));
  EXPECT_EQ(step["state"], "done") << step.dump();  // the replayed gradient was there
  EXPECT_EQ(step["result"]["step"], 1) << step.dump();
  ASSERT_TRUE(run_capture({"scancel", id}, 60).is_ok());
  auto end = slurm::wait_job(id, 240);
  ASSERT_TRUE(end.is_ok()) << end.status().message();
  const std::string out = slurp(log);
  EXPECT_NE(out.find("mobula step: the job was preempted; requeueing it (requeue 1 of 3)"), std::string::npos) << out;
  EXPECT_NE(out.find("re-running"), std::string::npos) << out;
}

}  // namespace
}  // namespace mobula
