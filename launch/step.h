// `mobula step [--grace S] -- srun ARGS...`: runs one job step from a batch script and returns its
// exit code, also when srun itself does not exit after the step has ended.
//
// Why: Slurm 22.05's srun sometimes hangs after a heterogeneous step with --mpi=pmix has ended
// (every task exited, slurmctld no longer lists the step, srun stays blocked joining its PMIx
// abort-agent thread; seen ~1 in 6 het steps on the local test cluster). The batch script would
// then sit until the time limit. The guard watches the job's steps with squeue; once the step it
// started has been gone for `grace` seconds and srun is still alive, srun is stopped and the exit
// code comes from the per-rank records the workers write after MPI_Finalize.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::launch {

// Set by `mobula step` for the workers: where each rank records its exit code.
inline constexpr const char* kStepRecordDirEnv = "MOBULA_STEP_RECORD_DIR";

struct StepRecord {
  int rank = 0;
  int size = 0;
  int exit_code = 0;
};

// DIR/rank-<rank>.rc, "rank size exit_code", written under a temporary name and renamed.
Status write_step_record(const std::string& dir, const StepRecord& r);
// Every rank-*.rc in dir; a malformed file is an error naming it.
Result<std::vector<StepRecord>> read_step_records(const std::string& dir);
// The step's exit code from the records (the largest one), or an error naming the missing ranks.
Result<int> combine_step_records(const std::vector<StepRecord>& records);

// Runs launch(attempt) for attempt = 0, 1, ... until it returns 0 or 2 (bad input, identical on a
// relaunch) or max_restarts relaunches are spent, sleeping delay_s * 2^k (capped at 300 s) before
// relaunch k+1 and saying so on stderr as "WHO: ...". Exit 3 (preempted) is relaunched only when
// relaunch_preempted (mobula run; under Slurm the allocation is ending: requeue instead), and
// nothing is relaunched once the launcher itself forwarded a stop signal. Returns the last code.
int with_restarts(const char* who, int max_restarts, double delay_s, const std::function<int(int attempt)>& launch,
                  bool relaunch_preempted = true);

struct StepOptions {
  double grace_s = 15;           // how long srun may outlive its finished step
  std::string record_dir;        // default ./.mobula-step-JOBID-PID
  int max_restarts = 0;          // relaunches after a failed step (exit code other than 0 and 2)
  double restart_delay_s = 5;    // before the first relaunch; doubles each time, capped at 300 s
  int max_requeues = 0;          // preempted (exit 3): `scontrol requeue` while SLURM_RESTART_COUNT is below
  double keep_on_failure_s = 0;  // after a final failure, hold the allocation this long for debugging
  std::string events_dir;        // the job's work dir: events.jsonl (attempts, requeue, end); "" = none
  bool require_records = false;  // srun's exit 0 counts only if every rank recorded exit code 0
};

// Runs the step; a failed step is relaunched up to max_restarts times (the workers resume from
// the newest checkpoint). A preempted step (exit 3: the workers checkpointed on Slurm's
// pre-timeout signal or a scheduler's SIGTERM) requeues the job with `scontrol requeue` while
// SLURM_RESTART_COUNT < max_requeues. MOBULA_STEP_ATTEMPT tells the workers which launch they are:
// SLURM_RESTART_COUNT * (max_restarts + 1) + relaunch, increasing over both (fencing).
int cmd_step(const StepOptions& o, const std::vector<std::string>& command);

}  // namespace mobula::launch
