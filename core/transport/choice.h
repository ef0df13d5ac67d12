// Which transports this build has and where a buffer lives; the spec's choice per flow is in
// core/transport/flows.h.
#pragma once

#include <string>

namespace mobula {

enum class MemoryPlace { kHost, kDevice };

bool transport_built(const std::string& name);  // "mpi" | "ucx" | "nccl"

}  // namespace mobula
