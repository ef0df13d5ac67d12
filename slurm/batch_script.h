// Rendering a job spec into an sbatch script (`mobula submit`). No Slurm calls here.
//
// Roles whose effective [slurm] resources (the role's keys, else the global ones) are equal share
// one component; when they differ the script is a heterogeneous job (`#SBATCH hetjob`) and ONE
// step spans every component (`srun --het-group=0,..,k-1`), so all ranks share MPI_COMM_WORLD and
// each role is pinned to its component with `--set roles.R.het_group=g`.
#pragma once

#include <string>
#include <vector>

#include "core/runtime/spec.h"
#include "core/runtime/status.h"

namespace mobula::slurm {

struct BatchComponent {
  SlurmResources resources;
  std::vector<std::string> roles;  // canonical order
  int ranks = 0;
};

struct BatchScript {
  std::string text;
  std::vector<BatchComponent> components;  // 1 = an ordinary job
};

struct RenderOptions {
  std::string mobula_exe;         // absolute path of the mobula binary on the compute nodes
  std::string spec_copy;          // the spec file the workers read
  std::vector<std::string> sets;  // the user's --set overrides, passed on to the workers
  std::string workdir;            // absolute job work dir (chdir, output, job.workdir)
  std::string origin;             // for the header comment: where the spec came from
};

// The components of a job: roles grouped by equal effective resources, in canonical role order.
std::vector<BatchComponent> batch_components(const JobSpec& spec);

// Errors (Status::invalid_spec, "FILE:LINE: KEY: ...") for resources no allocation can satisfy,
// e.g. more nodes than ranks in a component.
Result<BatchScript> render_batch_script(const JobSpec& spec, const RenderOptions& opt);

}  // namespace mobula::slurm
