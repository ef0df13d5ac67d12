#include "core/objects/object_store.h"

#include <sched.h>
#include <spdlog/spdlog.h>

#include <array>
#include <climits>
#include <cstring>
#include <string>

#include "core/metrics/registry.h"
#include "core/runtime/environment.h"
#include "core/runtime/mpi.h"

namespace mobula {

namespace {
// Objects this rank holds for others (put, not yet released by every holder): the queue depth of
// the rollout -> trainer flow.
metrics::Gauge& live_gauge() {
  static metrics::Gauge& g = metrics::registry().gauge("mobula_object_store_objects", "Objects held for consumers");
  return g;
}
}  // namespace

namespace {

constexpr int kRequestTag = 1;
constexpr int kFirstReplyTag = 100;
enum Kind : uint64_t { kGet = 1, kRetain = 2, kRelease = 3 };
enum Reply : int64_t { kOk = 0, kUnknown = 1 };

using Clock = std::chrono::steady_clock;

// Tests `req` until done or `deadline`; true when complete.
bool test_until(MPI_Request* req, Clock::time_point deadline, MPI_Status* st) {
  for (long spins = 0;; ++spins) {
    int done = 0;
    if (MPI_Test(req, &done, st) != MPI_SUCCESS) return false;
    if (done) return true;
    if (Clock::now() > deadline) return false;
    if (spins > 256) sched_yield();
  }
}

// Cancels a receive; true when its buffer is free again (cancelled or completed).
bool cancel_recv(MPI_Request* req) {
  if (*req == MPI_REQUEST_NULL) return true;
  MPI_Cancel(req);
  MPI_Status st;
  if (test_until(req, Clock::now() + std::chrono::milliseconds(200), &st)) return true;
  MPI_Request_free(req);  // matched and still running (owner died mid-transfer): leave it to MPI
  return false;
}

void put_u8(std::vector<std::byte>& o, uint8_t v) {
  o.push_back(static_cast<std::byte>(v));
}
template <class T>
void put_le(std::vector<std::byte>& o, T v) {
  using U = std::make_unsigned_t<T>;
  U u = static_cast<U>(v);
  for (size_t i = 0; i < sizeof(T); ++i) o.push_back(static_cast<std::byte>((u >> (8 * i)) & 0xFF));
}
template <class T>
bool get_le(std::span<const std::byte>& in, T* v) {
  if (in.size() < sizeof(T)) return false;
  using U = std::make_unsigned_t<T>;
  U u = 0;
  for (size_t i = 0; i < sizeof(T); ++i) u |= static_cast<U>(static_cast<U>(in[i]) << (8 * i));
  *v = static_cast<T>(u);
  in = in.subspan(sizeof(T));
  return true;
}

}  // namespace

size_t TensorMeta::count() const {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

Tensor Tensor::allocate(const TensorMeta& meta) {
  auto owned = std::make_shared<std::vector<std::byte>>(meta.bytes());
  return {meta, {owned->data(), meta.count(), meta.dtype, MemoryPlace::kHost}, owned};
}

size_t ObjectRef::bytes() const {
  size_t b = 0;
  for (const auto& t : tensors) b += t.bytes();
  return b;
}

std::vector<std::byte> ObjectRef::serialize() const {
  std::vector<std::byte> o;
  for (char c : {'M', 'O', 'B', 'R'}) put_u8(o, static_cast<uint8_t>(c));
  put_u8(o, 1);  // format version
  put_u8(o, place == MemoryPlace::kDevice ? 1 : 0);
  put_le<int32_t>(o, owner);
  put_le<uint64_t>(o, id);
  put_le<uint32_t>(o, static_cast<uint32_t>(tensors.size()));
  for (const auto& t : tensors) {
    put_u8(o, static_cast<uint8_t>(t.dtype));
    put_u8(o, static_cast<uint8_t>(t.shape.size()));
    for (int64_t d : t.shape) put_le<int64_t>(o, d);
  }
  return o;
}

Result<ObjectRef> ObjectRef::parse(std::span<const std::byte> in) {
  auto bad = [](const std::string& why) {
    return Status::invalid_argument("object ref: " + why + "; the bytes are not an ObjectRef::serialize() result");
  };
  if (in.size() < 6 || std::memcmp(in.data(), "MOBR", 4) != 0) return bad("bad magic");
  if (static_cast<uint8_t>(in[4]) != 1) return bad("unknown format version " + std::to_string(int(in[4])));
  ObjectRef r;
  const auto place = static_cast<uint8_t>(in[5]);
  if (place > 1) return bad("bad memory place");
  r.place = place ? MemoryPlace::kDevice : MemoryPlace::kHost;
  in = in.subspan(6);
  uint32_t n = 0;
  if (!get_le(in, &r.owner) || !get_le(in, &r.id) || !get_le(in, &n)) return bad("truncated header");
  if (r.owner < 0) return bad("negative owner rank");
  if (n > 65536) return bad("too many tensors (" + std::to_string(n) + ")");
  for (uint32_t i = 0; i < n; ++i) {
    uint8_t dt = 0, nd = 0;
    if (!get_le(in, &dt) || !get_le(in, &nd)) return bad("truncated tensor");
    if (dt > static_cast<uint8_t>(DType::kBF16)) return bad("bad dtype " + std::to_string(dt));
    if (nd > 8) return bad("more than 8 dimensions");
    TensorMeta m;
    m.dtype = static_cast<DType>(dt);
    for (uint8_t d = 0; d < nd; ++d) {
      int64_t x = 0;
      if (!get_le(in, &x)) return bad("truncated shape");
      if (x < 0 || x > (int64_t{1} << 40)) return bad("bad dimension " + std::to_string(x));
      m.shape.push_back(x);
    }
    r.tensors.push_back(std::move(m));
  }
  if (!in.empty()) return bad(std::to_string(in.size()) + " trailing bytes");
  return r;
}

Result<std::unique_ptr<ObjectStore>> ObjectStore::create(MPI_Comm comm, const ObjectStoreOptions& opt) {
  int level = 0;
  MOBULA_MPI(MPI_Query_thread(&level));
  if (level < MPI_THREAD_MULTIPLE)
    return Status::external("object store: MPI was initialised without MPI_THREAD_MULTIPLE (level " +
                            std::to_string(level) + "); initialise through mobula::Environment");
  std::unique_ptr<ObjectStore> s(new ObjectStore());
  s->opt_ = opt;
  MOBULA_MPI(MPI_Comm_dup(comm, &s->comm_));
  MOBULA_MPI(MPI_Comm_set_errhandler(s->comm_, MPI_ERRORS_RETURN));
  MOBULA_MPI(MPI_Comm_rank(s->comm_, &s->rank_));
  MOBULA_MPI(MPI_Comm_size(s->comm_, &s->size_));
  void* ub = nullptr;
  int flag = 0;
  // MPI_TAG_UB is defined on MPI_COMM_WORLD (split communicators do not carry it).
  MOBULA_MPI(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag));
  const int tag_ub = flag ? *static_cast<int*>(ub) : 32767;
  s->reply_tags_ = std::min(1 << 20, (tag_ub - kFirstReplyTag - 2) / 2);
  if (s->reply_tags_ < 64) return Status::external("object store: MPI_TAG_UB " + std::to_string(tag_ub) + " too small");
  s->server_ = std::thread([p = s.get()] { p->serve(); });
  return s;
}

ObjectStore::~ObjectStore() {
  if (Status st = shutdown(); !st) spdlog::warn("object store shutdown: {}", st.message());
}

std::string ObjectStore::where() const {
  int world = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world);
  return "rank " + std::to_string(rank_) + " of the object store (world rank " + std::to_string(world) + ", host " +
         host_name() + ")";
}

std::chrono::milliseconds ObjectStore::or_default(std::chrono::milliseconds t) const {
  return t.count() > 0 ? t : opt_.timeout;
}

int ObjectStore::next_reply_tag() {
  const uint32_t k = reply_seq_.fetch_add(1) % static_cast<uint32_t>(reply_tags_);
  return kFirstReplyTag + 2 * static_cast<int>(k);
}

Status ObjectStore::shutdown() {
  if (shut_) return Status::ok();
  shut_ = true;
  int fin = 0;
  MPI_Finalized(&fin);
  Status result;
  bool fenced = false;
  if (!fin) {
    MPI_Request req;
    if (MPI_Ibarrier(comm_, &req) == MPI_SUCCESS) {
      MPI_Status st;
      fenced = test_until(&req, Clock::now() + opt_.timeout, &st);
    }
    if (!fenced)
      result = Status::timeout("object store shutdown at " + where() +
                               ": not every rank arrived in time (a peer died or hung); abort the job");
  }
  stop_ = true;
  if (server_.joinable()) server_.join();
  if (fenced && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  return result;
}

void ObjectStore::drop_holder(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = objects_.find(id);
  if (it == objects_.end()) return;
  if (--it->second->holders <= 0) {
    objects_.erase(it);
    live_gauge().set(static_cast<double>(objects_.size()));
    freed_.notify_all();
  }
}

// The server thread: answers get/retain/release requests for this rank's objects. Sends run
// non-blocking from the stored buffers (kept alive by the in-flight list even if the object is
// freed meanwhile). Spins while there is work, backs off with short sleeps when idle.
void ObjectStore::serve() {
  struct InFlight {
    MPI_Request req;
    std::shared_ptr<Object> obj;
    std::shared_ptr<std::array<int64_t, 2>> header;
  };
  std::vector<InFlight> sends;
  std::array<uint64_t, 3> msg{};
  MPI_Request incoming;
  if (int rc = MPI_Irecv(msg.data(), 3, MPI_UINT64_T, MPI_ANY_SOURCE, kRequestTag, comm_, &incoming);
      rc != MPI_SUCCESS) {
    spdlog::error("{}", mpi_error(rc, "MPI_Irecv", __FILE__, __LINE__).message());
    return;
  }
  auto send_header = [&](int dst, int tag, int64_t code, int64_t n, std::shared_ptr<Object> obj) {
    auto h = std::make_shared<std::array<int64_t, 2>>(std::array<int64_t, 2>{code, n});
    MPI_Request r;
    if (int rc = MPI_Isend(h->data(), 2, MPI_INT64_T, dst, tag, comm_, &r); rc != MPI_SUCCESS) {
      spdlog::error("{}", mpi_error(rc, "MPI_Isend", __FILE__, __LINE__).message());
      return;
    }
    sends.push_back({r, std::move(obj), std::move(h)});
  };
  int idle_rounds = 0;
  while (!stop_.load(std::memory_order_relaxed)) {
    bool busy = false;
    for (size_t i = 0; i < sends.size();) {
      int done = 0;
      MPI_Test(&sends[i].req, &done, MPI_STATUS_IGNORE);
      if (done) {
        sends[i] = std::move(sends.back());
        sends.pop_back();
      } else {
        ++i;
      }
    }
    busy = !sends.empty();
    int got = 0;
    MPI_Status st;
    if (serving_.load(std::memory_order_relaxed)) MPI_Test(&incoming, &got, &st);
    if (got) {
      busy = true;
      const int src = st.MPI_SOURCE, tag = static_cast<int>(msg[2]);
      const uint64_t id = msg[1];
      std::shared_ptr<Object> obj;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = objects_.find(id);
        if (it != objects_.end()) obj = it->second;
        if (obj && msg[0] == kRetain) ++obj->holders;
      }
      if (msg[0] == kRelease) {
        drop_holder(id);
      } else if (msg[0] == kRetain) {
        send_header(src, tag, obj ? kOk : kUnknown, 0, nullptr);
      } else if (msg[0] == kGet) {
        send_header(src, tag, obj ? kOk : kUnknown, obj ? static_cast<int64_t>(obj->tensors.size()) : 0, obj);
        for (size_t i = 0; obj && i < obj->tensors.size(); ++i) {
          const Buffer& b = obj->tensors[i].buf;
          MPI_Request r;
          if (int rc = MPI_Isend(b.data, static_cast<int>(b.bytes()), MPI_BYTE, src, tag + 1, comm_, &r);
              rc != MPI_SUCCESS) {
            spdlog::error("{}", mpi_error(rc, "MPI_Isend", __FILE__, __LINE__).message());
            break;
          }
          sends.push_back({r, obj, nullptr});
        }
      } else {
        spdlog::warn("object store at {}: ignoring a request of unknown kind {} from rank {}", where(), msg[0], src);
      }
      if (int rc = MPI_Irecv(msg.data(), 3, MPI_UINT64_T, MPI_ANY_SOURCE, kRequestTag, comm_, &incoming);
          rc != MPI_SUCCESS) {
        spdlog::error("{}", mpi_error(rc, "MPI_Irecv", __FILE__, __LINE__).message());
        return;
      }
    }
    if (busy) {
      idle_rounds = 0;
    } else if (++idle_rounds > 64) {
      std::this_thread::sleep_for(std::chrono::microseconds(opt_.idle_sleep_us));
    }
  }
  cancel_recv(&incoming);
  const auto until = Clock::now() + std::chrono::seconds(2);
  for (auto& s : sends) {
    MPI_Status st;
    if (!test_until(&s.req, until, &st)) MPI_Request_free(&s.req);  // its object is never freed: leaked
    if (s.req != MPI_REQUEST_NULL) {
      std::lock_guard<std::mutex> lock(mu_);
      graveyard_.push_back(s.obj);
    }
  }
}

Result<ObjectRef> ObjectStore::put(std::vector<Tensor> tensors, int holders) {
  if (holders < 1) return Status::invalid_argument("put: holders must be >= 1");
  ObjectRef ref;
  ref.owner = rank_;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    const std::string which = "put: tensor " + std::to_string(i);
    if (t.buf.place != MemoryPlace::kHost)
      return Status::invalid_argument(which +
                                      " is in device memory; the object store moves host memory (copy it to the "
                                      "host first)");
    if (t.buf.dtype != t.meta.dtype || t.buf.bytes() != t.meta.bytes())
      return Status::invalid_argument(which + ": buffer (" + std::to_string(t.buf.bytes()) + " bytes of " +
                                      dtype_name(t.buf.dtype) + ") does not match its shape and dtype (" +
                                      std::to_string(t.meta.bytes()) + " bytes of " + dtype_name(t.meta.dtype) + ")");
    if (t.buf.bytes() > static_cast<size_t>(INT_MAX))
      return Status::invalid_argument(which + " exceeds 2 GiB; split it into several tensors");
    if (t.buf.bytes() > 0 && !t.buf.data) return Status::invalid_argument(which + ": null data");
    ref.tensors.push_back(t.meta);
  }
  auto obj = std::make_shared<Object>();
  obj->tensors = std::move(tensors);
  obj->holders = holders;
  std::lock_guard<std::mutex> lock(mu_);
  if (shut_) return Status::invalid_argument("put after shutdown");
  ref.id = next_id_++;
  objects_[ref.id] = std::move(obj);
  live_gauge().set(static_cast<double>(objects_.size()));
  return ref;
}

Status ObjectStore::transfer(const ObjectRef& ref, std::span<const Buffer> dst, std::chrono::milliseconds timeout,
                             std::shared_ptr<void> keep_on_timeout) {
  double bytes = 0;
  for (const Buffer& b : dst) bytes += static_cast<double>(b.bytes());
  metrics::FlowTimer timer("objects", bytes);
  const std::string what =
      "get of object " + std::to_string(ref.id) + " owned by rank " + std::to_string(ref.owner) + " at " + where();
  if (ref.owner < 0 || ref.owner >= size_)
    return Status::invalid_argument(what + ": owner outside the store's " + std::to_string(size_) + " ranks");
  if (dst.size() != ref.tensors.size())
    return Status::invalid_argument(what + ": " + std::to_string(dst.size()) + " destinations for " +
                                    std::to_string(ref.tensors.size()) + " tensors");
  for (size_t i = 0; i < dst.size(); ++i) {
    if (dst[i].bytes() != ref.tensors[i].bytes() || dst[i].place != MemoryPlace::kHost)
      return Status::invalid_argument(what + ": destination " + std::to_string(i) + " holds " +
                                      std::to_string(dst[i].bytes()) + " bytes, the tensor " +
                                      std::to_string(ref.tensors[i].bytes()) + " (host memory needed)");
  }
  if (ref.owner == rank_) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = objects_.find(ref.id);
    if (it == objects_.end())
      return Status::not_found(what + ": the object was freed or never existed (released too early?)");
    for (size_t i = 0; i < dst.size(); ++i) {
      const Buffer& b = it->second->tensors[i].buf;
      if (b.bytes() != dst[i].bytes()) return Status::invalid_argument(what + ": ref does not match the object");
      if (b.bytes() > 0) std::memcpy(dst[i].data, b.data, b.bytes());
    }
    return Status::ok();
  }
  const int tag = next_reply_tag();
  const auto deadline = Clock::now() + timeout;
  auto header = std::make_shared<std::array<int64_t, 2>>();
  MPI_Request hreq;
  MOBULA_MPI(MPI_Irecv(header->data(), 2, MPI_INT64_T, ref.owner, tag, comm_, &hreq));
  std::vector<MPI_Request> data(dst.size(), MPI_REQUEST_NULL);
  for (size_t i = 0; i < dst.size(); ++i)
    MOBULA_MPI(MPI_Irecv(dst[i].data, static_cast<int>(dst[i].bytes()), MPI_BYTE, ref.owner, tag + 1, comm_, &data[i]));
  std::array<uint64_t, 3> req = {kGet, ref.id, static_cast<uint64_t>(tag)};
  MOBULA_MPI(MPI_Send(req.data(), 3, MPI_UINT64_T, ref.owner, kRequestTag, comm_));
  auto give_up = [&](Status s) {
    bool clean = cancel_recv(&hreq);
    for (auto& r : data) clean = cancel_recv(&r) && clean;
    if (!clean) {
      std::lock_guard<std::mutex> lock(mu_);
      graveyard_.push_back(header);
      if (keep_on_timeout) graveyard_.push_back(keep_on_timeout);
    }
    return s;
  };
  auto timed_out = [&](const char* stage) {
    return Status::timeout(what + ": no " + stage + " from the owner within " + std::to_string(timeout.count()) +
                           " ms; the owner is dead or hung: abort the job so the restart logic takes over");
  };
  MPI_Status st;
  if (!test_until(&hreq, deadline, &st)) return give_up(timed_out("answer"));
  if ((*header)[0] != kOk)
    return give_up(Status::not_found(what + ": the owner says the object was freed or never existed (released "
                                            "too early, or a stale ref)"));
  for (auto& r : data)
    if (!test_until(&r, deadline, &st)) return give_up(timed_out("data"));
  return Status::ok();
}

Result<std::vector<Tensor>> ObjectStore::get(const ObjectRef& ref, std::chrono::milliseconds timeout) {
  std::vector<Tensor> out;
  auto all = std::make_shared<std::vector<std::shared_ptr<void>>>();
  std::vector<Buffer> dst;
  for (const auto& m : ref.tensors) {
    out.push_back(Tensor::allocate(m));
    dst.push_back(out.back().buf);
    all->push_back(out.back().keep);
  }
  MOBULA_RETURN_IF_ERROR(transfer(ref, dst, or_default(timeout), all));
  return out;
}

Status ObjectStore::get_into(const ObjectRef& ref, std::span<const Buffer> dst, std::chrono::milliseconds timeout) {
  return transfer(ref, dst, or_default(timeout), nullptr);
}

Status ObjectStore::retain(const ObjectRef& ref, std::chrono::milliseconds timeout) {
  const std::string what =
      "retain of object " + std::to_string(ref.id) + " owned by rank " + std::to_string(ref.owner) + " at " + where();
  if (ref.owner < 0 || ref.owner >= size_) return Status::invalid_argument(what + ": owner outside the store");
  if (ref.owner == rank_) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = objects_.find(ref.id);
    if (it == objects_.end()) return Status::not_found(what + ": the object was freed or never existed");
    ++it->second->holders;
    return Status::ok();
  }
  const int tag = next_reply_tag();
  auto header = std::make_shared<std::array<int64_t, 2>>();
  MPI_Request hreq;
  MOBULA_MPI(MPI_Irecv(header->data(), 2, MPI_INT64_T, ref.owner, tag, comm_, &hreq));
  std::array<uint64_t, 3> req = {kRetain, ref.id, static_cast<uint64_t>(tag)};
  MOBULA_MPI(MPI_Send(req.data(), 3, MPI_UINT64_T, ref.owner, kRequestTag, comm_));
  MPI_Status st;
  if (!test_until(&hreq, Clock::now() + or_default(timeout), &st)) {
    if (!cancel_recv(&hreq)) {
      std::lock_guard<std::mutex> lock(mu_);
      graveyard_.push_back(header);
    }
    return Status::timeout(what + ": the owner did not answer in time (dead or hung); abort the job");
  }
  if ((*header)[0] != kOk) return Status::not_found(what + ": the object was freed or never existed");
  return Status::ok();
}

Status ObjectStore::release(const ObjectRef& ref) {
  if (ref.owner < 0 || ref.owner >= size_) return Status::invalid_argument("release: owner outside the store");
  if (ref.owner == rank_) {
    drop_holder(ref.id);
    return Status::ok();
  }
  std::array<uint64_t, 3> req = {kRelease, ref.id, 0};
  MOBULA_MPI(MPI_Send(req.data(), 3, MPI_UINT64_T, ref.owner, kRequestTag, comm_));
  return Status::ok();
}

Status ObjectStore::free(const ObjectRef& ref) {
  if (ref.owner != rank_)
    return Status::invalid_argument("free of object " + std::to_string(ref.id) + " at " + where() +
                                    ": only the owner (rank " + std::to_string(ref.owner) +
                                    ") frees; other ranks release()");
  std::lock_guard<std::mutex> lock(mu_);
  if (objects_.erase(ref.id) == 0)
    return Status::not_found("free of object " + std::to_string(ref.id) + ": already freed or never existed");
  live_gauge().set(static_cast<double>(objects_.size()));
  freed_.notify_all();
  return Status::ok();
}

Status ObjectStore::wait_freed(const ObjectRef& ref, std::chrono::milliseconds timeout) {
  if (ref.owner != rank_)
    return Status::invalid_argument("wait_freed of object " + std::to_string(ref.id) + " at " + where() +
                                    ": only the owner (rank " + std::to_string(ref.owner) + ") can wait for it");
  std::unique_lock<std::mutex> lock(mu_);
  const bool gone = freed_.wait_for(lock, or_default(timeout), [&] { return objects_.count(ref.id) == 0; });
  if (gone) return Status::ok();
  return Status::timeout("wait_freed of object " + std::to_string(ref.id) + " at " + where() + ": still " +
                         std::to_string(objects_.at(ref.id)->holders) +
                         " holder(s) after the timeout; a consumer did not release it (or died)");
}

size_t ObjectStore::live_objects() const {
  std::lock_guard<std::mutex> lock(mu_);
  return objects_.size();
}

}  // namespace mobula
