// What a process learns from Slurm about its job and step (environment variables set by
// sbatch/srun/slurmstepd), and checked wrappers around Slurm's commands.
#pragma once

#include <string>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::slurm {

struct SlurmEnv {
  bool in_job = false;   // SLURM_JOB_ID set
  bool in_step = false;  // SLURM_STEP_ID set (launched by srun)
  std::string job_id;
  std::string node_name;     // SLURMD_NODENAME
  std::string job_nodelist;  // SLURM_JOB_NODELIST (hostlist expression)
  int procid = -1;           // SLURM_PROCID
  int ntasks = -1;           // SLURM_NTASKS
  int het_group = -1;        // het component of this task, -1 if none
  int restart_count = 0;     // SLURM_RESTART_COUNT (requeues)

  static SlurmEnv from_environment();
};

// Expands a hostlist expression ("n[1-3],gpu7") with `scontrol show hostnames`.
Result<std::vector<std::string>> expand_hostlist(const std::string& expr);

// Parses SLURM_TASKS_PER_NODE syntax ("2(x3),1") into one count per node.
Result<std::vector<int>> parse_tasks_per_node(const std::string& s);

}  // namespace mobula::slurm
