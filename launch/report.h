// `mobula report JOB -o report.html` and the pages of `mobula history serve`: one self-contained
// HTML page per job (inline SVG plots and CSS, a few lines of inline JS, no network access), built
// from what the job left in its work dir (docs/observability.md): events.jsonl, metrics.jsonl,
// summary.json. Readable after the allocation is gone.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::launch {

// What the report shows about one job. load_job_view fills the files' parts; the caller adds what
// only the registry / Slurm know (id, status).
struct JobView {
  std::string name;                     // job.name (from job_start, else the work dir's name)
  std::string id;                       // Slurm job id, or "" for a job run with `mobula run`
  std::string workdir;                  // absolute
  std::string status;                   // COMPLETED, FAILED, RUNNING, PREEMPTED, ... (see history.h)
  std::vector<nlohmann::json> events;   // events.jsonl lines, file order (objects)
  std::vector<nlohmann::json> metrics;  // metrics.jsonl lines, file order; a step re-run after a restart
                                        // appears once per attempt
  nlohmann::json summary;               // summary.json, or null when the job did not finish
  int skipped_lines = 0;                // lines that were not JSON objects (a crash mid-write)
};

// Reads WORKDIR/events.jsonl, metrics.jsonl and summary.json; missing files are empty, a torn or
// malformed line is skipped and counted. Fails only when WORKDIR is not a directory.
Result<JobView> load_job_view(const std::string& workdir);

// Text for HTML (& < > " ' escaped); the report's and the history server's pages use it.
std::string html_escape(std::string_view s);

// The page: title and status, summary figures, plots (reward/accuracy, loss/KL, tokens/s, step-time
// breakdown stacked, weight-sync time, checkpoint stage/durable times), the attempt/restart timeline,
// the layout table (rank, role, host from job_start) and the event list.
std::string render_report(const JobView& job);

}  // namespace mobula::launch
