// MPI backend: host memory over the MPI library (device memory when it is CUDA-aware, queried at
// creation). Point-to-point messages are MPI_Isend/MPI_Irecv on a duplicate of the group's
// communicator; broadcast, all-gather and barrier are MPI's non-blocking collectives; all-reduce
// is the deterministic rank-order algorithm of core/transport/p2p.h over those messages.
// Needs MPI_THREAD_MULTIPLE only when several transports are used from several threads.
// A message is at most INT_MAX bytes (split larger payloads: the bucketed helpers do).
#pragma once

#include <mpi.h>

#include <memory>

#include "core/transport/transport.h"

namespace mobula {

// Collective over `comm`.
Result<std::unique_ptr<Transport>> make_mpi_transport(MPI_Comm comm);

}  // namespace mobula
