#include "launch/step.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "core/metrics/events.h"
#include "core/runtime/environment.h"
#include "core/runtime/files.h"
#include "core/runtime/process.h"
#include "launch/commands.h"
#include "slurm/jobs.h"

namespace mobula::launch {

namespace fs = std::filesystem;

Status write_step_record(const std::string& dir, const StepRecord& r) {
  return write_file_atomically(
      fs::path(dir) / ("rank-" + std::to_string(r.rank) + ".rc"),
      std::to_string(r.rank) + " " + std::to_string(r.size) + " " + std::to_string(r.exit_code) + "\n");
}

Result<std::vector<StepRecord>> read_step_records(const std::string& dir) {
  std::vector<StepRecord> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("rank-", 0) != 0 || e.path().extension() != ".rc") continue;
    std::ifstream in(e.path());
    StepRecord r;
    std::string rest;
    if (!(in >> r.rank >> r.size >> r.exit_code) || (in >> rest) || r.rank < 0 || r.size <= 0 || r.rank >= r.size)
      return Status::io(e.path().string() + ": malformed step record (want 'rank size exit_code')");
    out.push_back(r);
  }
  if (ec) return Status::io(dir + ": " + ec.message());
  return out;
}

Result<int> combine_step_records(const std::vector<StepRecord>& records) {
  if (records.empty()) return Status::not_found("no rank recorded an exit code");
  const int size = records.front().size;
  std::set<int> seen;
  int code = 0;
  for (const auto& r : records) {
    if (r.size != size)
      return Status::io("step records disagree on the world size (" + std::to_string(size) + " vs " +
                        std::to_string(r.size) + ")");
    seen.insert(r.rank);
    code = std::max(code, r.exit_code);
  }
  if (static_cast<int>(seen.size()) != size) {
    std::string missing;
    int listed = 0;
    for (int r = 0; r < size && listed < 8; ++r)
      if (!seen.count(r)) {
        missing += (missing.empty() ? "" : ",") + std::to_string(r);
        ++listed;
      }
    return Status::not_found(std::to_string(size - static_cast<int>(seen.size())) + " of " + std::to_string(size) +
                             " ranks recorded no exit code (ranks " + missing + (listed == 8 ? ",..." : "") + ")");
  }
  return code;
}

namespace {

// The step's exit code from the ranks' records in `dir`; an error when a rank recorded none.
Result<int> recorded_exit_code(const std::string& dir) {
  auto records = read_step_records(dir);
  if (!records) return records.status();
  return combine_step_records(*records);
}

// One launch of the command: its exit code, or the ranks' combined record when srun outlived the
// step and was stopped.
int run_once(const char* job, const std::string& dir, double grace_s, bool require_records,
             const std::vector<std::string>& command, int attempt) {
  // Steps already running (another step of the same job) are not ours.
  std::set<std::string> before;
  if (auto s = slurm::job_steps(job)) before.insert(s->begin(), s->end());

  using clock = std::chrono::steady_clock;
  bool seen = false;
  std::optional<clock::time_point> done_since;
  std::string ours;
  Watch watch;
  bool killed = false;
  watch.killed = &killed;
  watch.poll_s = std::min(2.0, std::max(0.2, grace_s / 4));
  // run_inherit_watched passes a signal on at once (in its handler); it is reported here, while
  // polling or after the command ended (a preempted step often ends before the next poll).
  int told = 0;
  const auto report_signal = [&] {
    if (const int sig = forwarded_signal(); sig != 0 && sig != told) {
      std::fprintf(stderr, "mobula step: got signal %d (SIG%s); passed it on to '%s'\n", sig, sigabbrev_np(sig),
                   command.front().c_str());
      std::fflush(stderr);
      told = sig;
    }
  };
  watch.should_kill = [&] {
    report_signal();
    auto steps = slurm::job_steps(job);
    if (!steps) return false;  // squeue trouble is not evidence of a hang
    bool running = false;
    for (const auto& s : *steps)
      if (!before.count(s)) {
        running = true;
        if (ours.empty()) ours = s;
      }
    if (running) {
      seen = true;
      done_since.reset();
      return false;
    }
    // A step shorter than one poll may never be listed; complete records prove it ran and ended.
    if (!seen && !recorded_exit_code(dir)) return false;
    const auto now = clock::now();
    if (!done_since) done_since = now;
    if (std::chrono::duration<double>(now - *done_since).count() >= grace_s) {
      std::fprintf(stderr,
                   "mobula step: step %s ended %.0f s ago but '%s' has not exited (Slurm's srun can hang after a "
                   "heterogeneous PMIx step); stopping it and taking the exit code from the ranks' records\n",
                   ours.empty() ? "(not seen)" : ours.c_str(), grace_s, command.front().c_str());
      return true;
    }
    return false;
  };
  auto rc = run_inherit_watched(
      command, {std::string(kStepRecordDirEnv) + "=" + dir, "MOBULA_STEP_ATTEMPT=" + std::to_string(attempt)}, watch);
  report_signal();
  int code = 1;
  if (!rc) {
    std::fprintf(stderr, "mobula step: %s\n", rc.status().message().c_str());
  } else if (!killed) {
    code = *rc;
    if (code == 0 && require_records) {
      // Slurm 22.05's srun can exit 0 after a step whose launch failed on one node ("task 2 launch
      // failed", "Timed out waiting for job step to complete"): no worker ran, and the job would end
      // as COMPLETED without its work. Success needs every rank's record of exit code 0.
      auto combined = recorded_exit_code(dir);
      if (!combined || *combined != 0) {
        std::fprintf(stderr, "mobula step: '%s' exited 0 but %s; the step failed\n", command.front().c_str(),
                     combined ? ("a rank recorded exit code " + std::to_string(*combined)).c_str()
                              : combined.status().message().c_str());
        code = 1;
      }
    }
  } else {
    auto combined = recorded_exit_code(dir);
    if (combined) {
      code = *combined;
      std::fprintf(stderr, "mobula step: all ranks recorded their exit codes; step exit code %d\n", code);
    } else {
      std::fprintf(stderr, "mobula step: %s; the step failed\n", combined.status().message().c_str());
    }
  }
  return code;
}

}  // namespace

namespace {

constexpr int kNodeLost = 5;  // internal: a relaunch found a node of the allocation unusable

// Starts one `true` on every node of the allocation (srun, bounded); "" when all ran, else why not.
// Het jobs are not probed (their nodes are per component).
std::string probe_nodes() {
  if (std::getenv("SLURM_HET_SIZE")) return "";
  const char* n = std::getenv("SLURM_JOB_NUM_NODES");
  if (!n || !*n) return "";
  auto r = run_capture({"srun", "--nodes=" + std::string(n), "--ntasks=" + std::string(n), "--ntasks-per-node=1",
                        "--kill-on-bad-exit=1", "true"},
                       90);
  if (!r) return "node probe (srun true on every node) did not finish: " + r.status().message();
  if (r->exit_code == 0) return "";
  std::string err = r->err;
  if (const auto nl = err.find('\n'); nl != std::string::npos) err.resize(nl);
  return "node probe failed (srun true on every node, exit " + std::to_string(r->exit_code) + ": " + err + ")";
}

}  // namespace

int with_restarts(const char* who, int max_restarts, double delay_s, const std::function<int(int attempt)>& launch,
                  bool relaunch_preempted) {
  int code = 1;
  for (int attempt = 0; attempt <= max_restarts; ++attempt) {
    code = launch(attempt);
    if (code == 0 || code == 2 || attempt == max_restarts) break;
    if (code == 3 && !relaunch_preempted) break;
    if (code == kNodeLost) break;              // mobula step: a node of the allocation is lost (requeue instead)
    if (const int sig = forwarded_signal()) {  // the launcher was told to stop: do not relaunch
      std::fprintf(stderr, "%s: stopped by signal %d (exit code %d); not relaunching%s\n", who, sig, code,
                   code == 3 ? "; the job saved a checkpoint and resumes from it when run again" : "");
      break;
    }
    const double delay = std::min(delay_s * double(1 << std::min(attempt, 10)), 300.0);
    std::fprintf(stderr,
                 "%s: the job %s; relaunching in %.0f s (restart %d of %d); it resumes from its newest checkpoint\n",
                 who,
                 code == 3   ? "was preempted (exit code 3)"
                 : code == 4 ? "had a stuck rank (exit code 4, watchdog)"
                             : ("failed with exit code " + std::to_string(code)).c_str(),
                 delay, attempt + 1, max_restarts);
    std::fflush(stderr);
    std::this_thread::sleep_for(std::chrono::duration<double>(delay));
  }
  return code;
}

int cmd_step(const StepOptions& o, const std::vector<std::string>& command) {
  const char* job = std::getenv("SLURM_JOB_ID");
  if (!job || !*job) {
    std::fprintf(stderr, "mobula step: SLURM_JOB_ID is not set; run it inside an sbatch script or salloc\n");
    return 2;
  }
  if (command.empty()) {
    std::fprintf(stderr, "mobula step: no command; usage: mobula step -- srun ARGS...\n");
    return 2;
  }
  const std::string dir =
      o.record_dir.empty()
          ? (fs::current_path() / (".mobula-step-" + std::string(job) + "-" + std::to_string(getpid()))).string()
          : o.record_dir;
  std::error_code ec;
  const long requeues = env_long("SLURM_RESTART_COUNT", 0);
  const long base = requeues * (o.max_restarts + 1);
  if (requeues > 0) {  // the log then says why it starts again, whoever requeued it (mobula or slurmctld)
    std::fprintf(stderr,
                 "mobula step: job %s was requeued (SLURM_RESTART_COUNT=%ld: by mobula after a preemption or a "
                 "lost node, by Slurm after a node failure, or by hand); this allocation resumes from the newest "
                 "checkpoint, if there is one\n",
                 job, requeues);
    std::fflush(stderr);
  }
  int code = with_restarts(
      "mobula step", o.max_restarts, o.restart_delay_s,
      [&](int attempt) {
        setenv("MOBULA_STEP_ATTEMPT", std::to_string(base + attempt).c_str(), 1);  // for the events below
        const auto event = [&](const char* name, const events::Fields& f) {
          if (!o.events_dir.empty()) events::emit(o.events_dir, name, f);
        };
        event("attempt_start", {{"launcher", events::str("mobula step")},
                                {"slurm_job", events::str(job)},
                                {"slurm_restart_count", events::num(requeues)}});
        // A relaunch first checks that every node of the allocation still starts a task; one that
        // does not (a lost node: slurmctld marks it DOWN only after SlurmdTimeout) ends the
        // in-allocation relaunches, and the job is requeued instead (exit 5 below).
        if (attempt > 0) {
          if (std::string why = probe_nodes(); !why.empty()) {
            std::fprintf(stderr, "mobula step: %s; not relaunching in this allocation\n", why.c_str());
            event("node_failure", {{"reason", events::str(why)}});
            event("attempt_end", {{"exit_code", events::num(kNodeLost)}, {"outcome", events::str("node lost")}});
            return kNodeLost;
          }
        }
        const int rc = [&] {
          std::error_code e;
          fs::remove_all(dir, e);
          fs::create_directories(dir, e);
          if (e) {
            std::fprintf(
                stderr, "mobula step: cannot create the record dir %s: %s; pass --record-dir on a shared file system\n",
                dir.c_str(), e.message().c_str());
            return 2;
          }
          return run_once(job, dir, o.grace_s, o.require_records, command, int(base) + attempt);
        }();
        event("attempt_end", {{"exit_code", events::num(rc)}, {"outcome", events::str(outcome_of(rc))}});
        return rc;
      },
      /*relaunch_preempted=*/false);
  fs::remove_all(dir, ec);
  const bool node_lost = code == kNodeLost;
  if (node_lost) code = 3;  // requeued like a preemption (the checkpoint is the newest published one)
  const auto event = [&](const char* name, const events::Fields& f) {
    if (!o.events_dir.empty()) events::emit(o.events_dir, name, f);
  };
  if (code != 3) event("job_end", {{"exit_code", events::num(code)}, {"outcome", events::str(outcome_of(code))}});
  if (code != 0 && code != 3 && o.keep_on_failure_s > 0) {  // like KubeRay's deletion policy: keep it to debug
    std::fprintf(stderr,
                 "mobula step: the job failed (exit code %d); keeping the allocation for %.0f s "
                 "(slurm.keep_on_failure): attach with 'srun --jobid=%s --overlap --pty bash', end it with "
                 "'scancel %s'\n",
                 code, o.keep_on_failure_s, job, job);
    std::fflush(stderr);
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.keep_on_failure_s);
    while (std::chrono::steady_clock::now() < until && !forwarded_signal())
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (code == 3) {  // preempted (the workers' checkpoint is durable) or a node lost: the allocation is ending
    if (requeues >= o.max_requeues) {
      event("job_end", {{"exit_code", events::num(code)}, {"outcome", events::str("preempted, requeue limit")}});
      std::fprintf(stderr,
                   "mobula step: the job was preempted and has been requeued %ld time(s), the limit "
                   "(fault.max_requeues = %d); not requeueing. Resubmit it to resume from its checkpoint\n",
                   requeues, o.max_requeues);
      return code;
    }
    // `scancel` stops the ranks with SIGTERM too, and they exit 3 like a preemption: a cancelled job
    // (COMPLETING while its processes end, then CANCELLED) must stay cancelled; scontrol requeue
    // would bring it back. A preemption signal leaves the job RUNNING.
    const auto j = !node_lost && forwarded_signal() == SIGTERM ? slurm::show_job(job)
                                                               : Result<slurm::JobInfo>(Status::not_found("not asked"));
    if (j.is_ok() && (j->state == "CANCELLED" || j->state == "COMPLETING")) {
      event("job_end", {{"exit_code", events::num(code)}, {"outcome", events::str("cancelled")}});
      std::fprintf(stderr, "mobula step: the job was cancelled (scancel); not requeueing it\n");
      return code;
    }
    // Before the command: a requeue can end this batch script (SIGTERM/SIGKILL) before scontrol returns,
    // so the event and the message are written first.
    event("requeue",
          {{"slurm_restart_count", events::num(requeues + 1)}, {"max_requeues", events::num(o.max_requeues)}});
    std::fprintf(stderr,
                 "mobula step: the job was %s; requeueing it (requeue %ld of %d); it resumes from its "
                 "checkpoint, if there is one\n",
                 node_lost ? "left with a lost node" : "preempted", requeues + 1, o.max_requeues);
    std::fflush(stderr);
    if (Status r = slurm::requeue(job); !r.is_ok()) {
      event("job_end", {{"exit_code", events::num(code)}, {"outcome", events::str("preempted, requeue failed")}});
      std::fprintf(stderr, "mobula step: the job was preempted but the requeue failed: %s; resubmit it\n",
                   r.message().c_str());
      return code;
    }
  }
  return code;
}

}  // namespace mobula::launch
