// UCX backend: UCP tag-matched messages over whatever transports UCX finds (shm/tcp here; IB and
// CUDA memory on clusters). Endpoints are bootstrapped by exchanging worker addresses with MPI over
// the group's communicator (one MPI_Allgather + MPI_Allgatherv at creation); after that no MPI call
// is made. Host memory only in this build (UCX here is built without CUDA). Broadcast, all-reduce,
// all-gather and barrier are the point-to-point algorithms of core/transport/p2p.h.
// 64-bit UCP tag = (mobula tag << 32) | sender rank. One UCP worker per transport, single-threaded.
// Endpoints use peer error handling, so a dead peer fails the operations on it ("Endpoint timeout")
// instead of aborting the survivors; it costs bandwidth on shared memory (UCX then avoids its
// zero-copy CMA path: ~2-3x slower here, docs/transport.md). MOBULA_UCX_PEER_ERRORS=0 turns it off.
#pragma once

#include <mpi.h>

#include <memory>

#include "core/transport/transport.h"

namespace mobula {

// Collective over `comm`. Fails with a clear message when built without UCX.
Result<std::unique_ptr<Transport>> make_ucx_transport(MPI_Comm comm);

}  // namespace mobula
