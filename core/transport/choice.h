// Which transport moves a flow's buffers. The full Transport interface and its backends come with
// the direct-transport work (core/transport/{mpi,ucx,nccl}); this is the choice the spec makes.
//
// Rules for "auto": buffers in GPU memory go over NCCL when it is built in; everything else goes
// over MPI, which every build has. Explicit choices must be built in, or resolve_transport()
// returns invalid_spec naming the key.
#pragma once

#include <string>

#include "core/runtime/spec.h"

namespace mobula {

enum class MemoryPlace { kHost, kDevice };

bool transport_built(const std::string& name);  // "mpi" | "ucx" | "nccl"
// Resolves spec value `choice` of `key` ("transport.weights", ...) for buffers at `place`.
Result<std::string> resolve_transport(const JobSpec& spec, const std::string& key, const std::string& choice,
                                      MemoryPlace place);
// Checks every transport.* key of the spec against the build (for `mobula check` and the worker).
Status validate_transports(const JobSpec& spec);

}  // namespace mobula
