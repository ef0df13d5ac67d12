#include "core/transport/choice.h"

#include <Kokkos_Macros.hpp>

namespace mobula {

bool transport_built(const std::string& name) {
  if (name == "mpi") return true;
  if (name == "ucx") return MOBULA_HAVE_UCX + 0 != 0;
  if (name == "nccl") return MOBULA_HAVE_NCCL + 0 != 0;
  return false;
}

Result<std::string> resolve_transport(const JobSpec& spec, const std::string& key, const std::string& choice,
                                      MemoryPlace place) {
  if (choice == "auto") return std::string(place == MemoryPlace::kDevice && transport_built("nccl") ? "nccl" : "mpi");
  if (!transport_built(choice))
    return Status::invalid_spec(spec.where(key) + ": " + key + ": \"" + choice +
                                "\" is not built into this mobula (rebuild with MOBULA_WITH_" +
                                (choice == "ucx" ? "UCX" : "NCCL") + "=ON); use \"auto\" or \"mpi\"");
  if (choice == "nccl" && place == MemoryPlace::kHost)
    return Status::invalid_spec(spec.where(key) + ": " + key +
                                ": \"nccl\" moves GPU memory only, and this build keeps model buffers in host "
                                "memory (Kokkos without a GPU backend); use \"auto\", \"mpi\" or \"ucx\"");
  return choice;
}

Status validate_transports(const JobSpec& spec) {
#if defined(KOKKOS_ENABLE_CUDA)
  const MemoryPlace place = MemoryPlace::kDevice;
#else
  const MemoryPlace place = MemoryPlace::kHost;
#endif
  for (const auto& [key, v] : {std::pair<std::string, std::string>{"transport.weights", spec.transport.weights},
                               {"transport.rollouts", spec.transport.rollouts},
                               {"transport.gradients", spec.transport.gradients}}) {
    auto r = resolve_transport(spec, key, v, place);
    if (!r) return r.status();
  }
  return Status::ok();
}

}  // namespace mobula
