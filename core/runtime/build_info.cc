#include "core/runtime/build_info.h"
#include "core/runtime/blas_cpu.h"

#include <mpi.h>

#include <Kokkos_Core.hpp>

#include "core/config.h"
#include "core/device/gpu.h"
#if MOBULA_HAVE_UCX
#include <ucp/api/ucp.h>
#endif

namespace mobula {

std::vector<std::pair<std::string, std::string>> core_build_info() {
  std::vector<std::pair<std::string, std::string>> out;
  out.emplace_back("mobula", MOBULA_VERSION " (" MOBULA_BUILD_TYPE ")");
  out.emplace_back("compiler", MOBULA_CXX_COMPILER ", C++" + std::to_string(__cplusplus / 100 % 100));
  char lib[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int len = 0;
  std::string mpi = "unknown";
  if (MPI_Get_library_version(lib, &len) == MPI_SUCCESS) {
    mpi = std::string(lib, static_cast<size_t>(len));
    if (auto nl = mpi.find_first_of(",\n"); nl != std::string::npos) mpi.resize(nl);
  }
  int ver = 0, sub = 0;
  if (MPI_Get_version(&ver, &sub) == MPI_SUCCESS)
    mpi += " (MPI " + std::to_string(ver) + "." + std::to_string(sub) + ")";
  out.emplace_back("mpi", mpi);
  out.emplace_back("mpiexec", MOBULA_MPIEXEC);
  std::string kokkos = MOBULA_KOKKOS_VERSION_STRING;
#if defined(KOKKOS_ENABLE_CUDA)
  kokkos += " backends: cuda";
#elif defined(KOKKOS_ENABLE_OPENMP)
  kokkos += " backends: openmp";
#else
  kokkos += " backends: serial";
#endif
  out.emplace_back("kokkos", kokkos);
  if (const std::string blas = blas_description(); !blas.empty()) out.emplace_back("blas", blas);
#if MOBULA_HAVE_UCX
  out.emplace_back("ucx", std::string(ucp_get_version_string()));
#else
  out.emplace_back("ucx", "not built (MOBULA_WITH_UCX)");
#endif
  for (auto& kv : gpu_build_info()) out.push_back(std::move(kv));
  return out;
}

}  // namespace mobula
