// Job history (docs/observability.md): what `mobula history`, `mobula show`, `mobula report` and
// `mobula history serve` know about a registered job, read from its work dir (events.jsonl,
// metrics.jsonl, summary.json) after the allocation is gone, and from Slurm while it still knows
// the job.
#pragma once

#include <string>
#include <vector>

#include "launch/registry.h"
#include "launch/report.h"

namespace mobula::launch {

// One row of `mobula history`.
struct JobSummary {
  std::string status;      // COMPLETED, FAILED, PREEMPTED, RUNNING, PENDING, DIED, UNKNOWN, ...
  std::string started;     // the first event's time, "-" when none
  double duration_s = -1;  // first to last event (to now while it runs); < 0 unknown
  int attempts = 0;        // distinct attempt numbers seen
  long long last_step = -1;
  std::string headline;  // "acc 0.76" (the last step's accuracy), "-" when no step ran
};

// The job's status: the launcher's job_end event when there is one; else Slurm's state of the job
// (scontrol, then sacct); else, for `mobula run` jobs, RUNNING while its launcher lives on this host
// and DIED when it does not (killed before it could write job_end).
std::string job_status(const JobRecord& rec, const JobView& view, bool ask_slurm);
JobSummary summarize(const JobRecord& rec, const JobView& view, bool ask_slurm);

// A registered job by id or name, or an unregistered work dir (a path that is a directory).
Result<JobRecord> resolve_job(const std::string& key);

// The view for the report: files + id and status.
Result<JobView> load_job(const JobRecord& rec, bool ask_slurm);

// A whole file as text; "" when it cannot be read (the work dir's files are optional).
std::string slurp(const std::string& path);

// The read-only history server of `mobula history serve`: GET / (the job table), GET
// /jobs/ID/report (the HTML report), GET /jobs/ID/events.jsonl|metrics.jsonl|summary.json. IDs are
// looked up in the registry; no other file is ever served. Blocks until SIGINT/SIGTERM.
int serve_history(const std::string& address, int port);

}  // namespace mobula::launch
