#include "core/runtime/environment.h"

#include <unistd.h>

#include <Kokkos_Core.hpp>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/runtime/mpi.h"

namespace mobula {

Status mpi_error(int rc, const char* call, const char* file, int line) {
  char msg[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) std::snprintf(msg, sizeof msg, "error code %d", rc);
  int rank = -1, inited = 0, fin = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&fin);
  if (inited && !fin) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return Status::external(std::string(call) + " failed at " + file + ":" + std::to_string(line) + " on rank " +
                          std::to_string(rank) + " (" + host_name() + "): " + msg);
}

std::string host_name() {
  if (const char* n = std::getenv("SLURMD_NODENAME"); n && *n) return n;
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown-host";
  return buf;
}

long env_long(const std::string& name, long def) {
  const char* v = std::getenv(name.c_str());
  if (!v || !*v) return def;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return (end && *end == '\0') ? x : def;
}

bool fault_attempt_matches() {
  const long want = env_long("MOBULA_FAULT_KILL_ATTEMPT", 0);
  return want < 0 || want == env_long("MOBULA_STEP_ATTEMPT", 0);
}

int slurm_het_group() {
  // Explicit override (e.g. from a wrapper script) wins.
  if (const long g = env_long("MOBULA_HET_GROUP", -1); g >= 0 && g < 64) return static_cast<int>(g);
  // Slurm 22.05 exports no per-task component index in a heterogeneous step. It does export the
  // task count of every component (SLURM_NTASKS_HET_GROUP_<g>; SLURM_*_PACK_GROUP_<g> before
  // 20.02) and srun --het-group=0,1,... numbers tasks component by component, so the component
  // follows from SLURM_PROCID. Only valid when the step spans every component (task counts add up
  // to SLURM_STEP_NUM_TASKS); otherwise -1 (unknown) and roles are assigned in canonical order.
  const long size = env_long("SLURM_HET_SIZE", env_long("SLURM_PACK_SIZE", -1));
  const long procid = env_long("SLURM_PROCID", -1);
  const long step_tasks = env_long("SLURM_STEP_NUM_TASKS", -1);
  if (size <= 0 || size > 64 || procid < 0 || step_tasks <= 0) return -1;
  std::vector<long> counts;
  long total = 0;
  for (long g = 0; g < size; ++g) {
    const std::string n = std::to_string(g);
    const long c = env_long("SLURM_NTASKS_HET_GROUP_" + n, env_long("SLURM_NTASKS_PACK_GROUP_" + n, -1));
    if (c < 0) return -1;
    counts.push_back(c);
    total += c;
  }
  if (total != step_tasks) return -1;
  long first = 0;
  for (long g = 0; g < size; ++g) {
    if (procid < first + counts[static_cast<size_t>(g)]) return static_cast<int>(g);
    first += counts[static_cast<size_t>(g)];
  }
  return -1;
}

Result<std::unique_ptr<Environment>> Environment::init(int* argc, char*** argv, int threads) {
  std::unique_ptr<Environment> env(new Environment());
  int provided = 0;
  MOBULA_MPI(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  MOBULA_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MOBULA_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &env->rank_));
  MOBULA_MPI(MPI_Comm_size(MPI_COMM_WORLD, &env->size_));
  env->thread_level_ = provided;
  env->host_ = host_name();
  env->het_group_ = slurm_het_group();
  if (!Kokkos::is_initialized()) {
#if KOKKOS_VERSION >= 40000
    Kokkos::initialize(Kokkos::InitializationSettings().set_num_threads(threads));
#else
    Kokkos::InitArguments args;
    args.num_threads = threads;
    Kokkos::initialize(args);
#endif
  }
  return env;
}

Environment::~Environment() {
  if (Kokkos::is_initialized()) Kokkos::finalize();
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
}

}  // namespace mobula
