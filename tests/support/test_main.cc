// gtest main for every mobula test binary. Under mpiexec (OMPI_COMM_WORLD_SIZE or PMI_SIZE set) it
// initialises MPI + Kokkos through Environment, lets only rank 0 print the usual gtest output
// (other ranks print their failures, prefixed with the rank), and makes every rank exit with the
// same code: failed anywhere = failed everywhere.
#include <gtest/gtest.h>
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <cstdio>
#include <cstdlib>

#include "core/runtime/environment.h"

namespace {

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_STEP_ID"})
    if (std::getenv(v)) return true;
  return false;
}

class RankFailurePrinter : public testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (!launched_by_mpi()) {
    Kokkos::initialize();
    const int rc = RUN_ALL_TESTS();
    Kokkos::finalize();
    return rc;
  }
  auto env = mobula::Environment::init(&argc, &argv);
  if (!env) {
    std::fprintf(stderr, "%s\n", env.status().message().c_str());
    return 1;
  }
  if ((*env)->rank() != 0) {
    auto& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter((*env)->rank()));
  }
  int rc = RUN_ALL_TESTS() ? 1 : 0, any = 0;
  MPI_Allreduce(&rc, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any && (*env)->rank() == 0 && !rc) std::fprintf(stderr, "a test failed on another rank\n");
  return any;
}
