#include "core/runtime/environment.h"

#include <unistd.h>

#include <Kokkos_Core.hpp>
#include <cstdlib>

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

int slurm_het_group() {
  // Inside a heterogeneous step (srun --het-group=0,1 ...) slurmstepd exports the component index
  // of each task as SLURM_HET_JOB_COMPONENT... but only in some versions; SLURM_PACK_* is the
  // pre-20.02 spelling. Accept both.
  for (const char* var : {"SLURM_HET_JOB_COMPONENT", "SLURM_HET_GROUP", "SLURM_PACK_JOB_COMPONENT"}) {
    if (const char* v = std::getenv(var); v && *v) {
      char* end = nullptr;
      const long g = std::strtol(v, &end, 10);
      if (end && *end == '\0' && g >= 0 && g < 64) return static_cast<int>(g);
    }
  }
  return -1;
}

Result<std::unique_ptr<Environment>> Environment::init(int* argc, char*** argv) {
  std::unique_ptr<Environment> env(new Environment());
  int provided = 0;
  MOBULA_MPI(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  MOBULA_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MOBULA_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &env->rank_));
  MOBULA_MPI(MPI_Comm_size(MPI_COMM_WORLD, &env->size_));
  env->thread_level_ = provided;
  env->host_ = host_name();
  env->het_group_ = slurm_het_group();
  if (!Kokkos::is_initialized()) Kokkos::initialize();
  return env;
}

Environment::~Environment() {
  if (Kokkos::is_initialized()) Kokkos::finalize();
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
}

}  // namespace mobula
