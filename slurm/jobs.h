// Submitting and following batch jobs with Slurm's own commands (sbatch, scontrol, squeue, scancel,
// sacct): the one place mobula runs them. Every command
// is checked: a non-zero exit or unparsable output comes back as a Status with the command line
// and Slurm's first stderr line. Usable on a login node; no MPI.
#pragma once

#include <string>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::slurm {

struct JobInfo {
  std::string id;
  std::string state;  // PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
  std::string reason;
  int exit_code = 0;  // batch script exit code ("ExitCode=A:B" -> A)
  int signal = 0;     // -> B
  int restarts = 0;
  std::string nodes;     // NodeList
  std::string run_time;  // RunTime, [D-]HH:MM:SS
  std::string name;      // JobName
  bool terminal() const;
};

// `sbatch --parsable ARGS...`; returns the job id (for a het job: the leader's id).
Result<std::string> sbatch(const std::vector<std::string>& args);
// `scontrol -o show job ID`: the leader line of the job (component 0 of a het job).
Result<JobInfo> show_job(const std::string& id);
// Polls show_job every poll_s until the job is in a terminal state; Status::timeout after timeout_s.
// A poll that times out or cannot reach slurmctld is retried until then.
// (sbatch --wait backs off to 10+ s between polls, which made short test jobs take 40 s.)
Result<JobInfo> wait_job(const std::string& id, double timeout_s, double poll_s = 0.25);
// `squeue -h -s -j ID -o %i`: the job's running steps that run user tasks (ids like "84.0" or,
// for a het step, "84+1.0"); the batch, extern and interactive steps are left out.
Result<std::vector<std::string>> job_steps(const std::string& id);
// `scontrol requeue ID`.
Status requeue(const std::string& id);
// `scancel [ARGS...] ID` (e.g. {"--batch", "--signal=USR1"}).
Status cancel(const std::string& id, const std::vector<std::string>& args = {});
// `sacct -D -X -n -P -j ID -o State,ExitCode,Elapsed,NodeList`: one "STATE|A:B|ELAPSED|NODES" row per
// allocation of the job (-D: every requeue), oldest first; empty when accounting has no record.
Result<std::vector<std::string>> accounting(const std::string& id);
// Parses one `scontrol -o show job` line; exposed for tests.
Result<JobInfo> parse_job_line(const std::string& line);

}  // namespace mobula::slurm
