#include "core/transport/ucx/transport.h"

#include <cstdlib>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "core/runtime/mpi.h"
#include "core/transport/p2p.h"

#if MOBULA_HAVE_UCX
#include <ucp/api/ucp.h>
#endif

namespace mobula {

#if MOBULA_HAVE_UCX
namespace {

#define MOBULA_UCS(call, where)                                                                                \
  do {                                                                                                         \
    const ucs_status_t mobula_ucs_ = (call);                                                                   \
    if (mobula_ucs_ != UCS_OK)                                                                                 \
      return Status::external(std::string(#call) + " failed at " + __FILE__ + ":" + std::to_string(__LINE__) + \
                              " on " + (where) + ": " + ucs_status_string(mobula_ucs_) +                       \
                              "; check UCX_TLS / UCX_NET_DEVICES or use the mpi transport");                   \
  } while (0)

constexpr uint64_t kAllOnes = ~uint64_t{0};
bool peer_errors() {
  const char* v = std::getenv("MOBULA_UCX_PEER_ERRORS");
  return !(v && std::string(v) == "0");
}
uint64_t make_tag(int tag, int src) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(tag)) << 32) | static_cast<uint32_t>(src);
}

class UcxRequest : public Request {
 public:
  UcxRequest(ucp_worker_h worker, void* req, Clock::time_point deadline, long long expect, std::string what)
      : Request(deadline), worker_(worker), req_(req), expect_(expect), what_(std::move(what)) {}
  ~UcxRequest() override {
    if (req_) ucp_request_free(req_);  // a pending operation completes inside UCX later
  }
  Result<bool> test() override {
    if (!req_) return true;
    ucp_worker_progress(worker_);
    ucs_status_t st;
    ucp_tag_recv_info_t info{};
    if (expect_ >= 0)
      st = ucp_tag_recv_request_test(req_, &info);
    else
      st = ucp_request_check_status(req_);
    if (st == UCS_INPROGRESS) {
      if (Clock::now() <= deadline_) return false;
      if (expect_ >= 0) ucp_request_cancel(worker_, req_);
      return Status::timeout(what_ +
                             " timed out: the peer did not take part in time (dead, hung or mismatched "
                             "call); abort the job so it can be restarted");
    }
    ucp_request_free(req_);
    req_ = nullptr;
    if (st != UCS_OK)
      return Status::external(what_ + " failed: " + ucs_status_string(st) +
                              " (the peer died or its connection broke); abort the job so it can be restarted");
    if (expect_ >= 0 && static_cast<long long>(info.length) != expect_)
      return Status::invalid_argument(what_ + ": received " + std::to_string(info.length) + " bytes, expected " +
                                      std::to_string(expect_) + "; sender and receiver must agree on the size");
    return true;
  }

 private:
  ucp_worker_h worker_;
  void* req_;
  long long expect_;
  std::string what_;
};

class UcxTransport final : public P2PTransport {
 public:
  ~UcxTransport() override {
    // Teardown is collective: wait (bounded, a dead peer must not hang us) until every rank is done
    // with traffic before endpoints go, and until every rank has destroyed its worker before anyone
    // may create the next one (UCX's shared-memory transports otherwise connect to a peer's
    // already-removed FIFO segment: "shmat failed" / "mm ep failed to connect").
    fence();
    closing_ = true;
    if (worker_) {
      // Flush outstanding sends (bounded), then close endpoints without waiting for the peers.
      ucp_request_param_t p{};
      void* f = ucp_worker_flush_nbx(worker_, &p);
      const auto until = Request::Clock::now() + std::chrono::seconds(5);
      if (UCS_PTR_IS_PTR(f)) {
        while (ucp_request_check_status(f) == UCS_INPROGRESS && Request::Clock::now() < until)
          ucp_worker_progress(worker_);
        ucp_request_free(f);
      }
      eps_.insert(eps_.end(), failed_.begin(), failed_.end());
      for (ucp_ep_h ep : eps_) {
        if (!ep) continue;
        ucp_request_param_t cp{};
        cp.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
        cp.flags = UCP_EP_CLOSE_FLAG_FORCE;
        void* c = ucp_ep_close_nbx(ep, &cp);
        if (UCS_PTR_IS_PTR(c)) {
          while (ucp_request_check_status(c) == UCS_INPROGRESS && Request::Clock::now() < until)
            ucp_worker_progress(worker_);
          ucp_request_free(c);
        }
      }
      ucp_worker_destroy(worker_);
      worker_ = nullptr;
    }
    if (context_) ucp_cleanup(context_);
    context_ = nullptr;
    fence();
    int fin = 0;
    MPI_Finalized(&fin);
    if (comm_ != MPI_COMM_NULL && !fin) MPI_Comm_free(&comm_);
  }

  static Result<std::unique_ptr<Transport>> create(MPI_Comm comm) {
    auto t = std::unique_ptr<UcxTransport>(new UcxTransport());
    MOBULA_MPI(MPI_Comm_dup(comm, &t->comm_));
    MOBULA_MPI(MPI_Comm_set_errhandler(t->comm_, MPI_ERRORS_RETURN));
    comm = t->comm_;
    MOBULA_MPI(MPI_Comm_rank(comm, &t->rank_));
    MOBULA_MPI(MPI_Comm_size(comm, &t->size_));
    const std::string where = transport_where("ucx", t->rank_);
    std::vector<std::byte> mine;
    Status local = t->open_worker(where, mine);
    // Agree before the address exchange: a rank that failed to start UCX must not leave the others
    // waiting in MPI_Allgather.
    int ok = local.is_ok() ? 1 : 0, all_ok = 0;
    MOBULA_MPI(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, comm));
    if (!local) return local;
    if (!all_ok)
      return Status::external("ucx transport: UCX failed to start on another rank of the group (see its log)");
    // Bootstrap: every rank learns every worker address over MPI.
    int mylen = static_cast<int>(mine.size());
    std::vector<int> lens(static_cast<size_t>(t->size_)), displs(static_cast<size_t>(t->size_));
    MOBULA_MPI(MPI_Allgather(&mylen, 1, MPI_INT, lens.data(), 1, MPI_INT, comm));
    int total = 0;
    for (int r = 0; r < t->size_; ++r) displs[static_cast<size_t>(r)] = total, total += lens[static_cast<size_t>(r)];
    std::vector<std::byte> all(static_cast<size_t>(total));
    MOBULA_MPI(MPI_Allgatherv(mine.data(), mylen, MPI_BYTE, all.data(), lens.data(), displs.data(), MPI_BYTE, comm));
    t->eps_.assign(static_cast<size_t>(t->size_), nullptr);
    for (int r = 0; r < t->size_; ++r) {
      ucp_ep_params_t ep{};
      // Peer error handling: a dead peer fails the requests to it (CMA reads of a dead process
      // are otherwise a fatal UCX error that aborts the survivor too).
      // MOBULA_UCX_PEER_ERRORS=0 turns it off (UCX may then pick faster shared-memory protocols).
      ep.field_mask = peer_errors() ? UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                          UCP_EP_PARAM_FIELD_ERR_HANDLER
                                    : UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
      ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
      ep.err_handler.cb = &UcxTransport::on_peer_error;
      ep.err_handler.arg = t.get();
      ep.address = reinterpret_cast<const ucp_address_t*>(all.data() + displs[static_cast<size_t>(r)]);
      MOBULA_UCS(ucp_ep_create(t->worker_, &ep, &t->eps_[static_cast<size_t>(r)]), where);
    }
    return std::unique_ptr<Transport>(std::move(t));
  }

  const char* name() const override { return "ucx"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool supports(MemoryPlace place) const override { return place == MemoryPlace::kHost; }

  Result<RequestPtr> post_send(Buffer buf, int dst, int tag, Request::Clock::time_point deadline) override {
    if (!eps_[static_cast<size_t>(dst)])
      return Status::external(what("send to", dst, tag, buf) +
                              " failed: the connection to that rank failed earlier (dead peer); abort the job");
    ucp_request_param_t p{};
    void* r = ucp_tag_send_nbx(eps_[static_cast<size_t>(dst)], buf.data, buf.bytes(), make_tag(tag, rank_), &p);
    if (UCS_PTR_IS_ERR(r))
      return Status::external(what("send to", dst, tag, buf) + " failed: " + ucs_status_string(UCS_PTR_STATUS(r)));
    return RequestPtr(std::make_unique<UcxRequest>(worker_, r, deadline, -1, what("send to", dst, tag, buf)));
  }
  Result<RequestPtr> post_recv(Buffer buf, int src, int tag, Request::Clock::time_point deadline) override {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    void* r = ucp_tag_recv_nbx(worker_, buf.data, buf.bytes(), make_tag(tag, src), kAllOnes, &p);
    if (UCS_PTR_IS_ERR(r))
      return Status::external(what("recv from", src, tag, buf) + " failed: " + ucs_status_string(UCS_PTR_STATUS(r)));
    return RequestPtr(std::make_unique<UcxRequest>(worker_, r, deadline, static_cast<long long>(buf.bytes()),
                                                   what("recv from", src, tag, buf)));
  }

 private:
  UcxTransport() = default;
  static void on_peer_error(void* arg, ucp_ep_h ep, ucs_status_t status) {
    auto* t = static_cast<UcxTransport*>(arg);
    for (size_t r = 0; r < t->eps_.size(); ++r) {
      if (t->eps_[r] != ep) continue;
      if (!t->closing_)  // at teardown peers force-close their endpoints: expected, not a failure
        spdlog::warn("ucx transport at {}: connection to rank {} failed: {}; its operations fail from now on",
                     transport_where("ucx", t->rank_), r, ucs_status_string(status));
      t->failed_.push_back(ep);  // force-closed at teardown
      t->eps_[r] = nullptr;
    }
  }
  // A barrier over the bootstrap communicator that gives up after 10 s (a peer may be dead).
  void fence() {
    int fin = 0;
    MPI_Finalized(&fin);
    if (comm_ == MPI_COMM_NULL || fin || broken_) return;
    MPI_Request req;
    if (MPI_Ibarrier(comm_, &req) != MPI_SUCCESS) return;
    const auto until = Request::Clock::now() + std::chrono::seconds(10);
    for (int done = 0; !done;) {
      if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || Request::Clock::now() > until) {
        broken_ = true;  // leave the request behind; the group is unusable anyway
        return;
      }
      if (worker_) ucp_worker_progress(worker_);
    }
  }
  Status open_worker(const std::string& where, std::vector<std::byte>& address) {
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_TAG;
    ucp_config_t* config = nullptr;
    MOBULA_UCS(ucp_config_read(nullptr, nullptr, &config), where);
    const ucs_status_t init = ucp_init(&params, config, &context_);
    ucp_config_release(config);
    MOBULA_UCS(init, where);
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    MOBULA_UCS(ucp_worker_create(context_, &wp, &worker_), where);
    ucp_address_t* addr = nullptr;
    size_t len = 0;
    MOBULA_UCS(ucp_worker_get_address(worker_, &addr, &len), where);
    address.assign(reinterpret_cast<std::byte*>(addr), reinterpret_cast<std::byte*>(addr) + len);
    ucp_worker_release_address(worker_, addr);
    return Status::ok();
  }
  std::string what(const char* dir, int peer, int tag, const Buffer& b) const {
    return std::string(dir) + " rank " + std::to_string(peer) + " (tag " + std::to_string(tag) + ", " +
           std::to_string(b.bytes()) + " bytes) at " + transport_where("ucx", rank_);
  }
  MPI_Comm comm_ = MPI_COMM_NULL;  // bootstrap and teardown only
  std::vector<ucp_ep_h> failed_;   // endpoints of dead peers
  bool broken_ = false;
  bool closing_ = false;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::vector<ucp_ep_h> eps_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

Result<std::unique_ptr<Transport>> make_ucx_transport(MPI_Comm comm) {
  return UcxTransport::create(comm);
}

#else

Result<std::unique_ptr<Transport>> make_ucx_transport(MPI_Comm) {
  return Status::invalid_argument(
      "the ucx transport is not built into this mobula (UCX not found); rebuild with MOBULA_WITH_UCX=ON or use "
      "\"mpi\"");
}

#endif

}  // namespace mobula
