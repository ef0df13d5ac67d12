#include "core/queue/mpi_queue.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <vector>

#include "core/queue/codec.h"
#include "core/runtime/mpi.h"

namespace mobula::queue {

namespace {

constexpr int kRequestTag = 7101, kReplyTag = 7102;

enum : uint8_t {
  kOpEnqueue = 1,
  kOpLease,
  kOpRenew,
  kOpAck,
  kOpFail,
  kOpExpire,
  kOpStats,
  kOpDead,
  kOpRevive,
  kOpDrain,
  kOpResume
};

Body& put_lease(Body& b, const Lease& l) {
  return b.str(l.task_id).str(l.payload).u32(uint32_t(l.attempt)).u64(l.token);
}
bool get_lease(Parse& p, Lease* l) {
  uint32_t attempt = 0;
  if (!p.str(&l->task_id) || !p.str(&l->payload) || !p.u32(&attempt) || !p.u64(&l->token)) return false;
  l->attempt = static_cast<int>(attempt);
  return true;
}

// A reply: u8 status code, str message, then the body.
std::string reply(const Status& st, const std::string& body = "") {
  Body b;
  b.u8(uint8_t(st.code())).str(st.message());
  return b.bytes() + body;
}

Status status_of(uint8_t code, const std::string& msg) {
  switch (static_cast<Status::Code>(code)) {
    case Status::Code::kOk:
      return Status::ok();
    case Status::Code::kInvalidSpec:
      return Status::invalid_spec(msg);
    case Status::Code::kInvalidArgument:
      return Status::invalid_argument(msg);
    case Status::Code::kNotFound:
      return Status::not_found(msg);
    case Status::Code::kIo:
      return Status::io(msg);
    case Status::Code::kTimeout:
      return Status::timeout(msg);
    default:
      return Status::external(msg);
  }
}

Result<std::string> recv_message(MPI_Comm comm, const MPI_Status& probed) {
  int n = 0;
  MOBULA_MPI(MPI_Get_count(&probed, MPI_BYTE, &n));
  std::string buf(static_cast<size_t>(n), '\0');
  MOBULA_MPI(MPI_Recv(buf.data(), n, MPI_BYTE, probed.MPI_SOURCE, probed.MPI_TAG, comm, MPI_STATUS_IGNORE));
  return buf;
}

}  // namespace

// ---- server ---------------------------------------------------------------------------------------

Result<std::unique_ptr<QueueServer>> QueueServer::start(MPI_Comm comm, TaskQueue& queue, const ServerOptions& o) {
  MPI_Comm dup = MPI_COMM_NULL;
  MOBULA_MPI(MPI_Comm_dup(comm, &dup));
  std::unique_ptr<QueueServer> s(new QueueServer(dup, queue, o));
  s->thread_ = std::thread([p = s.get()] { p->loop(); });
  return s;
}

QueueServer::~QueueServer() {
  if (Status st = stop(); !st.is_ok()) spdlog::error("queue server: {}", st.message());
}

Status QueueServer::stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  return error_;
}

void QueueServer::loop() {
  auto last_expire = std::chrono::steady_clock::now(), last_request = last_expire;
  while (!stop_) {
    int flag = 0;
    MPI_Status probed;
    if (MPI_Iprobe(MPI_ANY_SOURCE, kRequestTag, comm_, &flag, &probed) != MPI_SUCCESS) {
      error_ = Status::external("queue server: MPI_Iprobe failed");
      return;
    }
    if (flag) {
      auto req = recv_message(comm_, probed);
      if (!req) {
        error_ = req.status();
        return;
      }
      const std::string out = handle(*req);
      ++requests_;
      last_request = std::chrono::steady_clock::now();
      if (MPI_Send(out.data(), int(out.size()), MPI_BYTE, probed.MPI_SOURCE, kReplyTag, comm_) != MPI_SUCCESS) {
        error_ = Status::external("queue server: MPI_Send of a reply failed");
        return;
      }
      continue;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now - last_expire >= std::chrono::duration<double>(o_.expire_every_s)) {
      last_expire = now;
      auto n = q_.expire_leases();
      if (!n) spdlog::error("queue server: {}", n.status().message());
      if (n && *n > 0) spdlog::warn("queue: {} lease(s) expired; their tasks go back", *n);
      std::error_code ec;
      if (!o_.drain_file.empty() && std::filesystem::exists(o_.drain_file, ec)) {
        if (Status d = q_.drain(); !d.is_ok()) spdlog::error("queue server: {}", d.message());
      }
    }
    // Busy: a worker's next request comes within microseconds, so yield for a while after the last
    // one; idle: sleep, and leave the core to the workers.
    if (now - last_request < std::chrono::microseconds(o_.spin_us))
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(o_.idle_sleep_us));
  }
}

std::string QueueServer::handle(const std::string& request) {
  Parse p(request);
  uint8_t op = 0;
  if (!p.u8(&op)) return reply(Status::invalid_argument("queue server: empty request"));
  const Status malformed = Status::invalid_argument("queue server: malformed request (op " + std::to_string(op) + ")");
  Lease l;
  switch (op) {
    case kOpEnqueue: {
      uint32_t n = 0;
      if (!p.u32(&n)) return reply(malformed);
      std::vector<TaskSpec> tasks(n);
      for (auto& t : tasks)
        if (!p.str(&t.id) || !p.str(&t.payload)) return reply(malformed);
      auto r = q_.enqueue(tasks);
      return r ? reply(Status::ok(), Body().u64(uint64_t(*r)).bytes()) : reply(r.status());
    }
    case kOpLease: {
      std::string worker;
      uint32_t max = 0;
      if (!p.str(&worker) || !p.u32(&max)) return reply(malformed);
      auto r = q_.lease(worker, int(max));
      if (!r) return reply(r.status());
      Body b;
      b.u32(uint32_t(r->size()));
      for (const auto& x : *r) put_lease(b, x);
      return reply(Status::ok(), b.bytes());
    }
    case kOpRenew:
    case kOpAck:
    case kOpFail: {
      std::string error;
      if (!get_lease(p, &l) || (op == kOpFail && !p.str(&error))) return reply(malformed);
      return reply(op == kOpRenew ? q_.renew(l) : op == kOpAck ? q_.ack(l) : q_.fail(l, error));
    }
    case kOpExpire:
    case kOpRevive: {
      auto r = op == kOpExpire ? q_.expire_leases() : q_.requeue_dead();
      return r ? reply(Status::ok(), Body().u64(uint64_t(*r)).bytes()) : reply(r.status());
    }
    case kOpStats: {
      auto r = q_.stats();
      if (!r) return reply(r.status());
      return reply(Status::ok(), Body()
                                     .u64(uint64_t(r->pending))
                                     .u64(uint64_t(r->leased))
                                     .u64(uint64_t(r->done))
                                     .u64(uint64_t(r->dead))
                                     .u8(r->draining ? 1 : 0)
                                     .bytes());
    }
    case kOpDead: {
      auto r = q_.dead();
      if (!r) return reply(r.status());
      Body b;
      b.u32(uint32_t(r->size()));
      for (const auto& d : *r) b.str(d.id).str(d.payload).str(d.error).u32(uint32_t(d.attempts));
      return reply(Status::ok(), b.bytes());
    }
    case kOpDrain:
      return reply(q_.drain());
    case kOpResume:
      return reply(q_.resume());
    default:
      return reply(Status::invalid_argument("queue server: unknown op " + std::to_string(op)));
  }
}

// ---- client ---------------------------------------------------------------------------------------

Result<std::unique_ptr<MpiQueueClient>> MpiQueueClient::connect(MPI_Comm comm, int server,
                                                                std::chrono::milliseconds timeout) {
  MPI_Comm dup = MPI_COMM_NULL;
  MOBULA_MPI(MPI_Comm_dup(comm, &dup));
  return std::unique_ptr<MpiQueueClient>(new MpiQueueClient(dup, server, timeout));
}

MpiQueueClient::~MpiQueueClient() {
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

Result<std::string> MpiQueueClient::call(const std::string& request) {
  std::lock_guard<std::mutex> lk(mu_);
  MOBULA_MPI(MPI_Send(request.data(), int(request.size()), MPI_BYTE, server_, kRequestTag, comm_));
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  MPI_Status probed;
  const auto sent = std::chrono::steady_clock::now();
  for (int flag = 0;;) {
    MOBULA_MPI(MPI_Iprobe(server_, kReplyTag, comm_, &flag, &probed));
    if (flag) break;
    const auto t = std::chrono::steady_clock::now();
    if (t >= deadline)
      return Status::timeout("queue: no reply from the queue server (rank " + std::to_string(server_) + ") within " +
                             std::to_string(timeout_.count() / 1000) + " s");
    // A reply usually takes microseconds: yield first, then sleep (a blocking MPI_Recv would spin).
    if (t - sent < std::chrono::milliseconds(1))
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  auto msg = recv_message(comm_, probed);
  if (!msg) return msg.status();
  Parse p(*msg);
  uint8_t code = 0;
  std::string text;
  if (!p.u8(&code) || !p.str(&text)) return Status::external("queue: malformed reply from the queue server");
  MOBULA_RETURN_IF_ERROR(status_of(code, text));
  return msg->substr(msg->size() - p.left());
}

Status MpiQueueClient::call_status(const std::string& request) {
  auto r = call(request);
  return r ? Status::ok() : r.status();
}

Result<int64_t> MpiQueueClient::call_count(const std::string& request) {
  auto r = call(request);
  if (!r) return r.status();
  Parse p(*r);
  uint64_t n = 0;
  if (!p.u64(&n)) return Status::external("queue: malformed reply from the queue server");
  return static_cast<int64_t>(n);
}

Result<int64_t> MpiQueueClient::enqueue(const std::vector<TaskSpec>& tasks) {
  Body b;
  b.u8(kOpEnqueue).u32(uint32_t(tasks.size()));
  for (const auto& t : tasks) b.str(t.id).str(t.payload);
  return call_count(b.bytes());
}

Result<std::vector<Lease>> MpiQueueClient::lease(const std::string& worker, int max) {
  auto r = call(Body().u8(kOpLease).str(worker).u32(uint32_t(std::max(0, max))).bytes());
  if (!r) return r.status();
  Parse p(*r);
  uint32_t n = 0;
  if (!p.u32(&n)) return Status::external("queue: malformed lease reply");
  std::vector<Lease> out(n);
  for (auto& l : out)
    if (!get_lease(p, &l)) return Status::external("queue: malformed lease reply");
  return out;
}

Status MpiQueueClient::renew(const Lease& l) {
  Body b;
  b.u8(kOpRenew);
  return call_status(put_lease(b, l).bytes());
}

Status MpiQueueClient::ack(const Lease& l) {
  Body b;
  b.u8(kOpAck);
  return call_status(put_lease(b, l).bytes());
}

Status MpiQueueClient::fail(const Lease& l, const std::string& error) {
  Body b;
  b.u8(kOpFail);
  return call_status(put_lease(b, l).str(error).bytes());
}

Result<int64_t> MpiQueueClient::expire_leases() {
  return call_count(Body().u8(kOpExpire).bytes());
}

Result<QueueStats> MpiQueueClient::stats() {
  auto r = call(Body().u8(kOpStats).bytes());
  if (!r) return r.status();
  Parse p(*r);
  uint64_t v[4] = {0, 0, 0, 0};
  uint8_t draining = 0;
  for (auto& x : v)
    if (!p.u64(&x)) return Status::external("queue: malformed stats reply");
  if (!p.u8(&draining)) return Status::external("queue: malformed stats reply");
  QueueStats s;
  s.pending = int64_t(v[0]), s.leased = int64_t(v[1]), s.done = int64_t(v[2]), s.dead = int64_t(v[3]);
  s.draining = draining != 0;
  return s;
}

Result<std::vector<DeadTask>> MpiQueueClient::dead() {
  auto r = call(Body().u8(kOpDead).bytes());
  if (!r) return r.status();
  Parse p(*r);
  uint32_t n = 0;
  if (!p.u32(&n)) return Status::external("queue: malformed reply");
  std::vector<DeadTask> out(n);
  for (auto& d : out) {
    uint32_t attempts = 0;
    if (!p.str(&d.id) || !p.str(&d.payload) || !p.str(&d.error) || !p.u32(&attempts))
      return Status::external("queue: malformed reply");
    d.attempts = int(attempts);
  }
  return out;
}

Result<int64_t> MpiQueueClient::requeue_dead() {
  return call_count(Body().u8(kOpRevive).bytes());
}

Status MpiQueueClient::resume() {
  return call_status(Body().u8(kOpResume).bytes());
}

Status MpiQueueClient::drain() {
  return call_status(Body().u8(kOpDrain).bytes());
}

}  // namespace mobula::queue
