#include "core/metrics/aggregate.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "core/runtime/mpi.h"

namespace mobula::metrics {

namespace {

constexpr int kTagSnapshot = 1;
constexpr int kTagFinal = 2;

using Clock = std::chrono::steady_clock;

}  // namespace

struct Aggregator::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  int size = 1;
  std::string role;
  std::chrono::duration<double> interval{1.0};
  Clock::time_point last_send{};
  bool broken = false;  // an MPI call failed: metrics stop, the job goes on

  // Sender side: the snapshot in flight (its buffer must live until the send completes).
  std::string out;
  MPI_Request req = MPI_REQUEST_NULL;

  // Coordinator side.
  mutable std::mutex mu;
  struct Entry {
    std::string role;
    nlohmann::json families;
    Clock::time_point at;
  };
  std::map<int, Entry> latest;
  std::set<int> finals;

  void fail(const char* what, int rc) {
    if (!broken)
      spdlog::warn("metrics: {}; metrics aggregation stops, the job goes on",
                   ::mobula::mpi_error(rc, what, __FILE__, __LINE__).message());
    broken = true;
  }

  std::string payload() const { return nlohmann::json{{"role", role}, {"families", registry().snapshot()}}.dump(); }

  // Non-blocking: false while the previous snapshot is still in flight.
  bool send_done() {
    if (req == MPI_REQUEST_NULL) return true;
    int done = 0;
    if (int rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE); rc != MPI_SUCCESS) {
      fail("MPI_Test", rc);
      return false;
    }
    return done != 0;
  }

  void send(int tag) {
    out = payload();
    if (int rc = MPI_Isend(out.data(), static_cast<int>(out.size()), MPI_CHAR, 0, tag, comm, &req); rc != MPI_SUCCESS)
      fail("MPI_Isend", rc);
    last_send = Clock::now();
  }

  void drain() {
    for (;;) {
      int flag = 0;
      MPI_Status st;
      if (int rc = MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm, &flag, &st); rc != MPI_SUCCESS)
        return fail("MPI_Iprobe", rc);
      if (!flag) return;
      int n = 0;
      if (int rc = MPI_Get_count(&st, MPI_CHAR, &n); rc != MPI_SUCCESS) return fail("MPI_Get_count", rc);
      std::string buf(static_cast<size_t>(n), '\0');
      if (int rc = MPI_Recv(buf.data(), n, MPI_CHAR, st.MPI_SOURCE, st.MPI_TAG, comm, MPI_STATUS_IGNORE);
          rc != MPI_SUCCESS)
        return fail("MPI_Recv", rc);
      auto j = nlohmann::json::parse(buf, nullptr, false);
      if (j.is_discarded() || !j.is_object()) {
        spdlog::warn("metrics: rank {} sent a snapshot that is not JSON; ignored", st.MPI_SOURCE);
        continue;
      }
      std::lock_guard lock(mu);
      latest[st.MPI_SOURCE] = Entry{j.value("role", ""), j.value("families", nlohmann::json::array()), Clock::now()};
      if (st.MPI_TAG == kTagFinal) finals.insert(st.MPI_SOURCE);
    }
  }
};

Aggregator::Aggregator(std::unique_ptr<Impl> impl, int rank) : impl_(std::move(impl)), rank_(rank) {}

Aggregator::~Aggregator() {
  int finalized = 0;
  if (MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized && impl_->comm != MPI_COMM_NULL) {
    if (impl_->req != MPI_REQUEST_NULL) (void)MPI_Request_free(&impl_->req);
    (void)MPI_Comm_free(&impl_->comm);
  }
}

Result<std::unique_ptr<Aggregator>> Aggregator::create(MPI_Comm comm, std::string role, double interval_s) {
  auto impl = std::make_unique<Impl>();
  int rank = 0;
  MOBULA_MPI(MPI_Comm_dup(comm, &impl->comm));
  MOBULA_MPI(MPI_Comm_rank(impl->comm, &rank));
  MOBULA_MPI(MPI_Comm_size(impl->comm, &impl->size));
  impl->role = std::move(role);
  impl->interval = std::chrono::duration<double>(interval_s);
  return std::unique_ptr<Aggregator>(new Aggregator(std::move(impl), rank));
}

void Aggregator::tick() {
  Impl& m = *impl_;
  if (m.broken) return;
  if (coordinator()) return m.drain();
  if (Clock::now() - m.last_send < m.interval || !m.send_done()) return;
  m.send(kTagSnapshot);
}

Status Aggregator::finish(std::chrono::milliseconds timeout) {
  Impl& m = *impl_;
  if (m.broken) return Status::external("metrics: aggregation stopped after an MPI error (logged above)");
  const auto deadline = Clock::now() + timeout;
  if (!coordinator()) {
    while (!m.send_done()) {
      if (m.broken) return Status::external("metrics: an MPI call failed (logged above)");
      if (Clock::now() > deadline) return Status::timeout("metrics: the coordinator did not take a snapshot in time");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    m.send(kTagFinal);
    while (!m.send_done()) {
      if (m.broken) return Status::external("metrics: an MPI call failed (logged above)");
      if (Clock::now() > deadline) return Status::timeout("metrics: the coordinator did not take the last snapshot");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return Status::ok();
  }
  for (;;) {
    m.drain();
    if (m.broken) return Status::external("metrics: an MPI call failed (logged above)");
    {
      std::lock_guard lock(m.mu);
      if (static_cast<int>(m.finals.size()) >= m.size - 1) return Status::ok();
    }
    if (Clock::now() > deadline) {
      std::lock_guard lock(m.mu);
      return Status::timeout("metrics: " + std::to_string(m.size - 1 - static_cast<int>(m.finals.size())) +
                             " rank(s) sent no last snapshot in time");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

std::vector<RankSnapshot> Aggregator::snapshots() const {
  const Impl& m = *impl_;
  std::vector<RankSnapshot> out;
  out.push_back(RankSnapshot{rank_, m.role, 0.0, registry().snapshot()});
  const auto now = Clock::now();
  std::lock_guard lock(m.mu);
  for (const auto& [r, e] : m.latest)
    out.push_back(RankSnapshot{r, e.role, std::chrono::duration<double>(now - e.at).count(), e.families});
  return out;
}

struct MetricsServer::Impl {
  httplib::Server server;
  std::thread thread;
  std::string address;
  int port = 0;
};

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() {
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

std::string MetricsServer::url() const {
  return "http://" + impl_->address + ":" + std::to_string(impl_->port) + "/metrics";
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(const std::string& address, int port,
                                                            const Aggregator& aggregator) {
  auto impl = std::make_unique<Impl>();
  impl->address = address;
  impl->server.Get("/metrics", [&aggregator](const httplib::Request&, httplib::Response& res) {
    res.set_content(aggregator.exposition(), "text/plain; version=0.0.4; charset=utf-8");
  });
  if (port < 0) {
    impl->port = impl->server.bind_to_any_port(address);
    if (impl->port <= 0)
      return Status::external("metrics: cannot listen on " + address + " (any port); check metrics.address");
  } else {
    if (!impl->server.bind_to_port(address, port))
      return Status::external("metrics: cannot listen on " + address + ":" + std::to_string(port) +
                              " (in use?); choose another metrics.port, -1 for any free port, or 0 to turn it off");
    impl->port = port;
  }
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->server.listen_after_bind(); });
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

}  // namespace mobula::metrics
