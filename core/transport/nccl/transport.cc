#include "core/transport/nccl/transport.h"

#include <string>

#include "core/runtime/mpi.h"
#include "core/transport/p2p.h"

#if MOBULA_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

namespace mobula {

#if MOBULA_HAVE_NCCL
namespace {

#define MOBULA_CUDA_AT(call, where)                                                                            \
  do {                                                                                                         \
    const cudaError_t mobula_cuda_e_ = (call);                                                                 \
    if (mobula_cuda_e_ != cudaSuccess)                                                                         \
      return Status::external(std::string(#call) + " failed at " + __FILE__ + ":" + std::to_string(__LINE__) + \
                              " on " + (where) + ": " + cudaGetErrorName(mobula_cuda_e_) + ": " +              \
                              cudaGetErrorString(mobula_cuda_e_));                                             \
  } while (0)
#define MOBULA_NCCL_AT(call, where)                                                                            \
  do {                                                                                                         \
    const ncclResult_t mobula_nccl_r_ = (call);                                                                \
    if (mobula_nccl_r_ != ncclSuccess)                                                                         \
      return Status::external(std::string(#call) + " failed at " + __FILE__ + ":" + std::to_string(__LINE__) + \
                              " on " + (where) + ": " + ncclGetErrorString(mobula_nccl_r_) +                   \
                              "; set NCCL_DEBUG=WARN for details");                                            \
  } while (0)

Result<ncclDataType_t> nccl_type(DType t) {
  switch (t) {
    case DType::kU8:
      return ncclUint8;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kF32:
      return ncclFloat32;
    case DType::kF64:
      return ncclFloat64;
    case DType::kBF16:
      return ncclBfloat16;
  }
  return Status::invalid_argument("nccl: unknown dtype");
}

class NcclRequest : public Request {
 public:
  NcclRequest(ncclComm_t* comm, cudaEvent_t ev, Clock::time_point deadline, std::string what)
      : Request(deadline), comm_(comm), ev_(ev), what_(std::move(what)) {}
  ~NcclRequest() override {
    if (ev_) cudaEventDestroy(ev_);
  }
  Result<bool> test() override {
    if (!*comm_) return Status::external(what_ + ": the NCCL communicator was aborted after an earlier failure");
    const cudaError_t e = cudaEventQuery(ev_);
    if (e == cudaSuccess) return true;
    if (e != cudaErrorNotReady)
      return Status::external(what_ + ": cudaEventQuery: " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(*comm_, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress) {
      ncclCommAbort(*comm_);
      *comm_ = nullptr;
      return Status::external(what_ + ": NCCL asynchronous error: " + ncclGetErrorString(async));
    }
    if (Clock::now() > deadline_) {
      ncclCommAbort(*comm_);
      *comm_ = nullptr;
      return Status::timeout(what_ +
                             " timed out: a peer did not take part in time; the NCCL communicator was "
                             "aborted; abort the job so it can be restarted");
    }
    return false;
  }

 private:
  ncclComm_t* comm_;
  cudaEvent_t ev_;
  std::string what_;
};

class NcclTransport final : public Transport {
 public:
  ~NcclTransport() override {
    if (stream_) cudaStreamSynchronize(stream_);
    if (comm_) ncclCommDestroy(comm_);
    if (stream_) cudaStreamDestroy(stream_);
    if (scratch_) cudaFree(scratch_);
  }

  static Result<std::unique_ptr<Transport>> create(MPI_Comm comm) {
    auto t = std::unique_ptr<NcclTransport>(new NcclTransport());
    MOBULA_MPI(MPI_Comm_rank(comm, &t->rank_));
    MOBULA_MPI(MPI_Comm_size(comm, &t->size_));
    const std::string where = transport_where("nccl", t->rank_);
    int ngpu = 0;
    const cudaError_t ce = cudaGetDeviceCount(&ngpu);
    int ok = ce == cudaSuccess && ngpu > 0, all = 0;
    if (!ok) (void)cudaGetLastError();
    // Agree before any NCCL call: either every rank has a GPU or none starts NCCL.
    MOBULA_MPI(MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm));
    if (!all)
      return Status::external("nccl transport: no usable GPU on " + std::string(ok ? "another rank" : where) +
                              (ok ? "" : std::string(" (") + cudaGetErrorName(ce) + ")") +
                              "; use the mpi or ucx transport for host memory");
    MPI_Comm node;
    MOBULA_MPI(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, t->rank_, MPI_INFO_NULL, &node));
    int local = 0;
    MPI_Comm_rank(node, &local);
    MPI_Comm_free(&node);
    MOBULA_CUDA_AT(cudaSetDevice(local % ngpu), where);
    ncclUniqueId id{};
    if (t->rank_ == 0) MOBULA_NCCL_AT(ncclGetUniqueId(&id), where);
    MOBULA_MPI(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, comm));
    MOBULA_NCCL_AT(ncclCommInitRank(&t->comm_, t->size_, id, t->rank_), where);
    MOBULA_CUDA_AT(cudaStreamCreateWithFlags(&t->stream_, cudaStreamNonBlocking), where);
    MOBULA_CUDA_AT(cudaMalloc(&t->scratch_, sizeof(float)), where);
    return std::unique_ptr<Transport>(std::move(t));
  }

  const char* name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool supports(MemoryPlace place) const override { return place == MemoryPlace::kDevice; }

  Result<RequestPtr> isend(Buffer buf, int dst, const Options& opt) override {
    MOBULA_RETURN_IF_ERROR(check(buf, dst, "send"));
    MOBULA_NCCL_AT(ncclSend(buf.data, buf.bytes(), ncclUint8, dst, comm_, stream_), where());
    return finish(opt, "send to rank " + std::to_string(dst));
  }
  Result<RequestPtr> irecv(Buffer buf, int src, const Options& opt) override {
    MOBULA_RETURN_IF_ERROR(check(buf, src, "recv"));
    MOBULA_NCCL_AT(ncclRecv(buf.data, buf.bytes(), ncclUint8, src, comm_, stream_), where());
    return finish(opt, "recv from rank " + std::to_string(src));
  }
  Result<RequestPtr> ibroadcast(Buffer buf, int root, const Options& opt) override {
    MOBULA_RETURN_IF_ERROR(check(buf, root, "broadcast"));
    MOBULA_NCCL_AT(ncclBroadcast(buf.data, buf.data, buf.bytes(), ncclUint8, root, comm_, stream_), where());
    return finish(opt, "broadcast from root " + std::to_string(root));
  }
  Result<RequestPtr> iallreduce(Buffer buf, ReduceOp op, const Options& opt) override {
    MOBULA_RETURN_IF_ERROR(check(buf, 0, "allreduce"));
    auto ty = nccl_type(buf.dtype);
    if (!ty) return ty.status();
    if (op == ReduceOp::kAvg && buf.dtype != DType::kF32 && buf.dtype != DType::kF64 && buf.dtype != DType::kBF16)
      return Status::invalid_argument("allreduce avg needs a floating-point dtype");
    MOBULA_NCCL_AT(
        ncclAllReduce(buf.data, buf.data, buf.count, *ty, op == ReduceOp::kAvg ? ncclAvg : ncclSum, comm_, stream_),
        where());
    return finish(opt, "all-reduce");
  }
  Result<RequestPtr> iallgather(Buffer in, Buffer out, const Options& opt) override {
    MOBULA_RETURN_IF_ERROR(check(in, 0, "allgather"));
    MOBULA_RETURN_IF_ERROR(check(out, 0, "allgather"));
    if (out.bytes() != in.bytes() * static_cast<size_t>(size_))
      return Status::invalid_argument("allgather: output must hold group size x input bytes");
    MOBULA_NCCL_AT(ncclAllGather(in.data, out.data, in.bytes(), ncclUint8, comm_, stream_), where());
    return finish(opt, "all-gather");
  }
  Result<RequestPtr> ibarrier(const Options& opt) override {
    if (!comm_) return Status::external("nccl barrier: the communicator was aborted after an earlier failure");
    MOBULA_NCCL_AT(ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_), where());
    return finish(opt, "barrier");
  }

 private:
  NcclTransport() = default;
  std::string where() const { return transport_where("nccl", rank_); }
  Status check(const Buffer& b, int peer, const char* op) const {
    if (!comm_)
      return Status::external(std::string("nccl ") + op + ": the communicator was aborted after an earlier failure");
    if (b.place != MemoryPlace::kDevice)
      return Status::invalid_argument(std::string("nccl ") + op +
                                      ": host buffer given to the nccl transport; use \"mpi\" or \"ucx\"");
    if (peer < 0 || peer >= size_)
      return Status::invalid_argument(std::string("nccl ") + op + ": peer " + std::to_string(peer) +
                                      " outside the group");
    return Status::ok();
  }
  Result<RequestPtr> finish(const Options& opt, const std::string& what) {
    cudaEvent_t ev = nullptr;
    MOBULA_CUDA_AT(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), where());
    const cudaError_t e = cudaEventRecord(ev, stream_);
    if (e != cudaSuccess) {
      cudaEventDestroy(ev);
      MOBULA_CUDA_AT(e, where());
    }
    return RequestPtr(std::make_unique<NcclRequest>(&comm_, ev, deadline_of(opt), what + " at " + where()));
  }

  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* scratch_ = nullptr;
  int rank_ = 0, size_ = 1;
};

}  // namespace

Result<std::unique_ptr<Transport>> make_nccl_transport(MPI_Comm comm) {
  return NcclTransport::create(comm);
}

#else

Result<std::unique_ptr<Transport>> make_nccl_transport(MPI_Comm) {
  return Status::invalid_argument(
      "the nccl transport is not built into this mobula (CUDA/NCCL not found); rebuild with MOBULA_WITH_NCCL=ON on a "
      "machine with CUDA and NCCL, or use \"mpi\"");
}

#endif

}  // namespace mobula
