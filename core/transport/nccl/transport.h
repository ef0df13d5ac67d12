// NCCL backend: device memory only. The communicator is bootstrapped by broadcasting an
// ncclUniqueId from rank 0 over the group's MPI communicator; each rank uses GPU
// (node-local rank % GPUs on the node). Operations are enqueued on one CUDA stream of the
// transport, in call order; a request completes when its CUDA event has fired and NCCL reports no
// asynchronous error. On timeout the NCCL communicator is aborted (ncclCommAbort), so a hung peer
// cannot hang the caller; the transport is then unusable. send/recv are ncclSend/ncclRecv (tags
// are ignored: messages between a pair are matched in call order), all-reduce is ncclAllReduce
// (deterministic for a fixed rank count, topology and NCCL version, not across them).
// Creation fails with a clear message without a GPU or when built without NCCL.
#pragma once

#include <mpi.h>

#include <memory>

#include "core/transport/transport.h"

namespace mobula {

// Collective over `comm`.
Result<std::unique_ptr<Transport>> make_nccl_transport(MPI_Comm comm);

}  // namespace mobula
