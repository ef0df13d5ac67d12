// The `mobula` executable: everything lives in mobula_launch.
#include "core/runtime/blas_cpu.h"
#include "launch/commands.h"

int main(int argc, char** argv) {
  // Before MPI_Init and any thread: a CPU that OpenBLAS mistook for a generic one gets the right
  // kernels here and in every process this one starts (core/runtime/blas_cpu.h).
  mobula::reexec_with_openblas_fix(argv);
  return mobula::launch::mobula_main(argc, argv);
}
