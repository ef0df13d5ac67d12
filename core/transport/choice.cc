#include "core/transport/choice.h"

#include <Kokkos_Macros.hpp>

namespace mobula {

bool transport_built(const std::string& name) {
  if (name == "mpi") return true;
  if (name == "ucx") return MOBULA_HAVE_UCX + 0 != 0;
  if (name == "nccl") return MOBULA_HAVE_NCCL + 0 != 0;
  return false;
}

}  // namespace mobula
