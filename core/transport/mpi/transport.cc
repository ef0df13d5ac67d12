#include "core/transport/mpi/transport.h"

#include <climits>
#include <string>

#include "core/runtime/mpi.h"
#include "core/transport/p2p.h"

#if defined(OPEN_MPI) && OPEN_MPI
#include <mpi-ext.h>
#endif

namespace mobula {
namespace {

bool mpi_cuda_aware() {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1;
#else
  return false;
#endif
}

class MpiRequest : public Request {
 public:
  // expect_bytes >= 0: a receive whose size is checked on completion.
  MpiRequest(MPI_Request req, Clock::time_point deadline, long long expect_bytes, std::string what)
      : Request(deadline), req_(req), expect_(expect_bytes), what_(std::move(what)) {}
  ~MpiRequest() override {
    // A still running operation cannot be taken back; let MPI finish it (the buffer contract in
    // transport.h keeps its memory alive). Non-blocking collectives may not be freed: leak them.
    if (req_ != MPI_REQUEST_NULL && !collective_) MPI_Request_free(&req_);
  }
  void set_collective() { collective_ = true; }

  Result<bool> test() override {
    if (req_ == MPI_REQUEST_NULL) return true;
    int done = 0;
    MPI_Status st;
    const int rc = MPI_Test(&req_, &done, &st);
    if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Test", __FILE__, __LINE__);
    if (done) {
      if (expect_ >= 0) {
        int got = 0;
        MOBULA_MPI(MPI_Get_count(&st, MPI_BYTE, &got));
        if (got != expect_)
          return Status::invalid_argument(what_ + ": received " + std::to_string(got) + " bytes, expected " +
                                          std::to_string(expect_) + "; sender and receiver must agree on the size");
      }
      return true;
    }
    if (Clock::now() > deadline_) {
      if (expect_ >= 0 && !collective_) {
        // A receive that has not matched can be cancelled: its buffer is then free again. One that
        // matched a sender who died half way never completes: never block on it (no MPI_Wait).
        MPI_Cancel(&req_);
        const auto until = Clock::now() + std::chrono::milliseconds(100);
        int finished = 0;
        while (!finished && Clock::now() < until) MPI_Test(&req_, &finished, &st);
        if (finished) {
          int cancelled = 0;
          MPI_Test_cancelled(&st, &cancelled);
          if (!cancelled) return true;  // it completed after all
        }
      }
      return Status::timeout(what_ +
                             " timed out: the peer did not take part in time (dead, hung or mismatched "
                             "call); abort the job so it can be restarted");
    }
    return false;
  }

 private:
  MPI_Request req_;
  long long expect_;
  std::string what_;
  bool collective_ = false;
};

class MpiTransport final : public P2PTransport {
 public:
  ~MpiTransport() override {
    int fin = 0;
    MPI_Finalized(&fin);
    if (comm_ != MPI_COMM_NULL && !fin) MPI_Comm_free(&comm_);
  }
  static Result<std::unique_ptr<Transport>> create(MPI_Comm comm) {
    auto t = std::unique_ptr<MpiTransport>(new MpiTransport());
    MOBULA_MPI(MPI_Comm_dup(comm, &t->comm_));
    MOBULA_MPI(MPI_Comm_set_errhandler(t->comm_, MPI_ERRORS_RETURN));
    MOBULA_MPI(MPI_Comm_rank(t->comm_, &t->rank_));
    MOBULA_MPI(MPI_Comm_size(t->comm_, &t->size_));
    void* ub = nullptr;
    int flag = 0;
    // MPI_TAG_UB is defined on MPI_COMM_WORLD only: communicators made by MPI_Comm_split (the
    // role and link communicators) do not carry it, and the bound is the same for all of them.
    MOBULA_MPI(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag));
    if (!flag || *static_cast<int*>(ub) < kFirstCollectiveTag + kCollectiveTags)
      return Status::external("mpi transport: MPI_TAG_UB is below " +
                              std::to_string(kFirstCollectiveTag + kCollectiveTags) + " in this MPI library at " +
                              transport_where("mpi", t->rank_) + "; use the ucx transport");
    t->cuda_aware_ = mpi_cuda_aware();
    return std::unique_ptr<Transport>(std::move(t));
  }

  const char* name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool supports(MemoryPlace place) const override { return place == MemoryPlace::kHost || cuda_aware_; }

  Result<RequestPtr> post_send(Buffer buf, int dst, int tag, Request::Clock::time_point deadline) override {
    MOBULA_RETURN_IF_ERROR(check_size(buf, "send"));
    MPI_Request req;
    MOBULA_MPI(MPI_Isend(buf.data, static_cast<int>(buf.bytes()), MPI_BYTE, dst, tag, comm_, &req));
    return RequestPtr(std::make_unique<MpiRequest>(req, deadline, -1, what("send to", dst, tag, buf)));
  }
  Result<RequestPtr> post_recv(Buffer buf, int src, int tag, Request::Clock::time_point deadline) override {
    MOBULA_RETURN_IF_ERROR(check_size(buf, "recv"));
    MPI_Request req;
    MOBULA_MPI(MPI_Irecv(buf.data, static_cast<int>(buf.bytes()), MPI_BYTE, src, tag, comm_, &req));
    return RequestPtr(std::make_unique<MpiRequest>(req, deadline, static_cast<long long>(buf.bytes()),
                                                   what("recv from", src, tag, buf)));
  }

  Result<RequestPtr> ibroadcast(Buffer buf, int root, const Options& opt) override {
    MOBULA_RETURN_IF_ERROR(check_peer(root, "broadcast"));
    MOBULA_RETURN_IF_ERROR(check_host(buf, "broadcast"));
    MOBULA_RETURN_IF_ERROR(check_size(buf, "broadcast"));
    MPI_Request req;
    MOBULA_MPI(MPI_Ibcast(buf.data, static_cast<int>(buf.bytes()), MPI_BYTE, root, comm_, &req));
    return collective(req, opt,
                      "broadcast of " + std::to_string(buf.bytes()) + " bytes from root " + std::to_string(root));
  }
  Result<RequestPtr> iallgather(Buffer in, Buffer out, const Options& opt) override {
    MOBULA_RETURN_IF_ERROR(check_host(in, "allgather"));
    MOBULA_RETURN_IF_ERROR(check_host(out, "allgather"));
    MOBULA_RETURN_IF_ERROR(check_size(out, "allgather"));
    if (out.bytes() != in.bytes() * static_cast<size_t>(size_) || out.dtype != in.dtype)
      return Status::invalid_argument("allgather: output holds " + std::to_string(out.bytes()) + " bytes, need " +
                                      std::to_string(in.bytes() * static_cast<size_t>(size_)) +
                                      " (group size x input, same dtype)");
    MPI_Request req;
    MOBULA_MPI(MPI_Iallgather(in.data, static_cast<int>(in.bytes()), MPI_BYTE, out.data, static_cast<int>(in.bytes()),
                              MPI_BYTE, comm_, &req));
    return collective(req, opt, "all-gather of " + std::to_string(in.bytes()) + " bytes per rank");
  }
  Result<RequestPtr> ibarrier(const Options& opt) override {
    MPI_Request req;
    MOBULA_MPI(MPI_Ibarrier(comm_, &req));
    return collective(req, opt, "barrier");
  }

 private:
  MpiTransport() = default;
  Status check_size(const Buffer& b, const char* op) const {
    if (b.bytes() > static_cast<size_t>(INT_MAX))
      return Status::invalid_argument(std::string(op) + ": " + std::to_string(b.bytes()) +
                                      " bytes exceed one MPI message (INT_MAX); split the buffer into buckets");
    return Status::ok();
  }
  std::string what(const char* dir, int peer, int tag, const Buffer& b) const {
    return std::string(dir) + " rank " + std::to_string(peer) + " (tag " + std::to_string(tag) + ", " +
           std::to_string(b.bytes()) + " bytes) at " + transport_where("mpi", rank_);
  }
  Result<RequestPtr> collective(MPI_Request req, const Options& opt, const std::string& what) {
    auto r = std::make_unique<MpiRequest>(req, deadline_of(opt), -1, what + " at " + transport_where("mpi", rank_));
    r->set_collective();
    return RequestPtr(std::move(r));
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  bool cuda_aware_ = false;
};

}  // namespace

Result<std::unique_ptr<Transport>> make_mpi_transport(MPI_Comm comm) {
  return MpiTransport::create(comm);
}

}  // namespace mobula
