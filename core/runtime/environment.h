// Process environment of a rank: MPI (MPI_THREAD_MULTIPLE requested), Kokkos, host identity.
//
// Contract
//  * Environment::init() is collective over MPI_COMM_WORLD and must be called once per process,
//    before any other MPI or Kokkos use; the returned object finalizes both when destroyed.
//  * host() is the Slurm node name (SLURMD_NODENAME) when running under slurmd, else gethostname():
//    on emulated multi-node test clusters several nodes share one hostname.
//  * het_group() is the Slurm heterogeneous-job component of this task, -1 outside het steps.
#pragma once

#include <memory>
#include <string>

#include "core/runtime/status.h"

namespace mobula {

class Environment {
 public:
  // `threads`: Kokkos host threads (job.threads; the worker reads the spec before this call), so
  // the launcher's OMP_NUM_THREADS never decides how kernels split their work.
  static Result<std::unique_ptr<Environment>> init(int* argc, char*** argv, int threads = 1);
  ~Environment();
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int thread_level() const { return thread_level_; }
  const std::string& host() const { return host_; }
  int het_group() const { return het_group_; }

 private:
  Environment() = default;
  int rank_ = 0, size_ = 1, thread_level_ = 0, het_group_ = -1;
  std::string host_;
};

// Node name as described above; usable without MPI.
std::string host_name();
// Integer value of environment variable `name`; `def` when unset, empty or not an integer.
long env_long(const std::string& name, long def);
// Whether the fault-injection switches (docs/testing.md) apply to this launch: launch number
// MOBULA_STEP_ATTEMPT equals MOBULA_FAULT_KILL_ATTEMPT (default 0, the first launch; -1: every launch).
bool fault_attempt_matches();
// Slurm heterogeneous-job component of this process (-1 if none); usable without MPI.
int slurm_het_group();

}  // namespace mobula
