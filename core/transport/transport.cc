#include "core/transport/transport.h"

#include <sched.h>
#include <spdlog/spdlog.h>

#include "core/runtime/environment.h"
#include "core/runtime/mpi.h"
#include "core/transport/mpi/transport.h"
#include "core/transport/nccl/transport.h"
#include "core/transport/ucx/transport.h"

namespace mobula {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kU8:
      return 1;
    case DType::kBF16:
      return 2;
    case DType::kI32:
    case DType::kF32:
      return 4;
    case DType::kI64:
    case DType::kF64:
      return 8;
  }
  return 1;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kU8:
      return "u8";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
    case DType::kF32:
      return "f32";
    case DType::kF64:
      return "f64";
    case DType::kBF16:
      return "bf16";
  }
  return "?";
}

Status Request::wait() {
  // Spin on test(): the backends progress only while they are tested (no progress threads), and
  // large shared-memory messages move fragment by fragment. Yield after a while so oversubscribed
  // ranks on one core still make progress.
  for (long spins = 0;; ++spins) {
    auto r = test();
    if (!r) return r.status();
    if (*r) return Status::ok();
    if (spins > 256) sched_yield();
  }
}

Status wait_all(std::span<RequestPtr> reqs) {
  Status first;
  for (auto& r : reqs) {
    if (!r) continue;
    Status s = r->wait();
    if (!s && first) first = s;
  }
  return first;
}

namespace {
Status start_and_wait(Result<RequestPtr> r) {
  if (!r) return r.status();
  return (*r)->wait();
}
}  // namespace

Status Transport::send(Buffer buf, int dst, const Options& opt) {
  return start_and_wait(isend(buf, dst, opt));
}
Status Transport::recv(Buffer buf, int src, const Options& opt) {
  return start_and_wait(irecv(buf, src, opt));
}
Status Transport::broadcast(Buffer buf, int root, const Options& opt) {
  return start_and_wait(ibroadcast(buf, root, opt));
}
Status Transport::allreduce(Buffer buf, ReduceOp op, const Options& opt) {
  return start_and_wait(iallreduce(buf, op, opt));
}
Status Transport::allgather(Buffer in, Buffer out, const Options& opt) {
  return start_and_wait(iallgather(in, out, opt));
}
Status Transport::barrier(const Options& opt) {
  return start_and_wait(ibarrier(opt));
}

std::string transport_where(const char* backend, int rank) {
  int world = -1, inited = 0, fin = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&fin);
  if (inited && !fin) MPI_Comm_rank(MPI_COMM_WORLD, &world);
  return "rank " + std::to_string(rank) + " of the " + backend + " group (world rank " + std::to_string(world) +
         ", host " + host_name() + ")";
}

Result<std::unique_ptr<Transport>> make_transport(const std::string& name, MPI_Comm comm) {
  if (comm == MPI_COMM_NULL) return Status::invalid_argument("make_transport(\"" + name + "\"): MPI_COMM_NULL group");
  Result<std::unique_ptr<Transport>> t = Status::invalid_argument(
      "unknown transport \"" + name + "\"; use \"mpi\", \"ucx\" or \"nccl\" (or \"auto\" in the job spec)");
  if (name == "mpi") t = make_mpi_transport(comm);
  if (name == "ucx") t = make_ucx_transport(comm);
  if (name == "nccl") t = make_nccl_transport(comm);
  if (t) spdlog::debug("transport {}: rank {}/{}", name, (*t)->rank(), (*t)->size());
  return t;
}

}  // namespace mobula
