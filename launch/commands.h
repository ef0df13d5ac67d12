// The `mobula` subcommands. Each returns the process exit code:
// 0 success, 2 bad input (spec, arguments), 1 failure, else the job's own exit code (run).
#pragma once

#include <string>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::launch {

struct SpecArgs {
  std::string spec;
  std::vector<std::string> sets;  // --set k=v, in order
};

int cmd_check(const SpecArgs& a, int np, bool all_keys);
int cmd_run(const SpecArgs& a, int np, const std::vector<std::string>& mpiexec_args);
// `mobula serve SPEC`: `mobula run` of a serve spec (docs/serve.md); `mobula serve token ...`.
int cmd_serve(const SpecArgs& a);
int cmd_serve_token(const std::string& action, const SpecArgs& a, const std::string& name);
int cmd_worker(const SpecArgs& a, int argc, char** argv);
int cmd_submit(const SpecArgs& a, bool dry_run);
// What cmd_submit does, with extra sbatch arguments (e.g. --dependency=afterany:ID): the job id, or
// with dry_run the script. On failure *exit_code is 2 (bad input) or 1.
Result<std::string> submit_spec(const SpecArgs& a, const std::vector<std::string>& sbatch_args, bool dry_run,
                                int* exit_code);
// "completed", "bad input", "preempted", "stuck rank" or "failed" for a job's exit code.
const char* outcome_of(int code);
int cmd_status(const std::string& job);  // "" lists every registered job
// Slurm's combined output of a registered job, or with rank/attempt >= 0 the ranks' own files
// (WORKDIR/logs/attempt-A/rank-R.log); `job` may also be a work dir (mobula run jobs).
int cmd_logs(const std::string& job, int rank, int attempt);
int cmd_cancel(const std::string& job);
// History (launch/history.h): the table of every registered job, one job's details and recent
// events, its HTML report, and the read-only history server.
int cmd_history(bool ask_slurm);
int cmd_show(const std::string& job, int nevents);
int cmd_report(const std::string& job, const std::string& out);
int cmd_version();
// `mobula queue status|requeue-dead|drain DIR` (launch/queue_cli.cc).
int cmd_queue(const std::string& action, const std::string& dir, const std::string& redis = "",
              const std::string& name = "");

// This executable's path (/proc/self/exe; "mobula" when it cannot be read).
std::string self_exe();
// What `mobula run` starts ranks with on this host: mpiexec (MOBULA_MPIEXEC overrides the one
// found at build time) -np NP, oversubscribed, unbound, without CMA single-copy.
std::vector<std::string> local_mpiexec(int np);

// Entry point of the `mobula` executable.
int mobula_main(int argc, char** argv);

}  // namespace mobula::launch
