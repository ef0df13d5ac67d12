// The transport of each flow of a job (weights, rollouts, gradients), as the spec's transport.* keys
// choose it (core/runtime/spec.h, kFlowKeys).
//
// Rules for "auto": buffers in GPU memory go over NCCL when it is built in; everything else goes
// over MPI, which every build has. Explicit choices must be built in, or resolve_flow() returns
// invalid_spec naming the key.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "core/runtime/spec.h"
#include "core/runtime/status.h"
#include "core/transport/choice.h"
#include "core/transport/transport.h"

namespace mobula {

// The backend name ("mpi", "ucx", "nccl") of flow `f` for buffers at `place`.
Result<std::string> resolve_flow(const JobSpec& spec, Flow f, MemoryPlace place);
// Checks every flow's choice against the build (for `mobula check`, `run` and the worker).
Status validate_transports(const JobSpec& spec);
// Collective over `comm`: the transport of flow `f`. Logs the choice on comm's rank 0
// ("transport.weights: auto -> mpi (host buffers)").
Result<std::unique_ptr<Transport>> make_flow_transport(const JobSpec& spec, Flow f, MemoryPlace place, MPI_Comm comm);

}  // namespace mobula
