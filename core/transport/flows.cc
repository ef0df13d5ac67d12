#include "core/transport/flows.h"

#include <spdlog/spdlog.h>

#include "core/runtime/mpi.h"

namespace mobula {

Result<std::string> resolve_flow(const JobSpec& spec, Flow f, MemoryPlace place) {
  const FlowKey& k = flow_key(f);
  const std::string& choice = spec.transport.*k.choice;
  const std::string key = k.key;
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
  for (const FlowKey& k : kFlowKeys) {
    auto r = resolve_flow(spec, k.flow, place);
    if (!r) return r.status();
  }
  return Status::ok();
}

Result<std::unique_ptr<Transport>> make_flow_transport(const JobSpec& spec, Flow f, MemoryPlace place, MPI_Comm comm) {
  auto name = resolve_flow(spec, f, place);
  if (!name) return name.status();
  int rank = 0;
  MOBULA_MPI(MPI_Comm_rank(comm, &rank));
  if (rank == 0)
    spdlog::info("{}: {} -> {} ({} buffers)", flow_key(f).key, spec.transport.*flow_key(f).choice, *name,
                 place == MemoryPlace::kHost ? "host" : "device");
  return make_transport(*name, comm);
}

}  // namespace mobula
