// The job registry: one small file per job under ROOT/jobs (ROOT = $MOBULA_HOME, else ~/.mobula),
// so `mobula status|logs|cancel|history|show|report` find a job by id or name from any directory
// of a login node. Jobs of `mobula submit` (id = the Slurm job id) and of `mobula run` (id =
// "local-YYYYMMDDTHHMMSS-PID") are registered. Plain "key=value" lines, written atomically.
#pragma once

#include <string>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::launch {

struct JobRecord {
  std::string id;                  // Slurm job id
  std::string name;                // job.name
  std::string workdir;             // absolute
  std::string spec;                // the spec as submitted (the copy in workdir/spec.toml is what runs)
  std::string submitted;           // UTC, YYYY-MM-DDTHH:MM:SSZ
  std::string launcher = "slurm";  // "slurm" (mobula submit) or "local" (mobula run)
  std::string host;                // local: where `mobula run` ran
  long pid = 0;                    // local: its pid (alive = still running)
  bool local() const { return launcher == "local"; }
  // Slurm's combined output; a local job's went to the terminal of `mobula run`.
  std::string log() const { return local() ? "" : workdir + "/slurm-" + id + ".out"; }
};

std::string registry_root();
Status register_job(const JobRecord& r);
// Every registered job, oldest first (by submission time, then id).
Result<std::vector<JobRecord>> list_jobs();
// By id, else the newest job with that name; a clear error naming the registry otherwise.
Result<JobRecord> find_job(const std::string& id_or_name);

}  // namespace mobula::launch
