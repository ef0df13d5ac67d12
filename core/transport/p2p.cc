#include "core/transport/p2p.h"

#include <cstring>
#include <memory>

#include "core/runtime/mpi.h"

namespace mobula {

namespace {

class DoneRequest : public Request {
 public:
  DoneRequest() : Request(Clock::now()) {}
  Result<bool> test() override { return true; }
};

template <class T>
void sum_in_order(size_t count, const std::vector<const void*>& parts, void* out, bool avg) {
  T* o = static_cast<T*>(out);
  const T* p0 = static_cast<const T*>(parts[0]);
  if (o != p0 && count > 0) std::memcpy(o, p0, count * sizeof(T));
  for (size_t r = 1; r < parts.size(); ++r) {
    const T* p = static_cast<const T*>(parts[r]);
    for (size_t i = 0; i < count; ++i) o[i] += p[i];
  }
  if constexpr (std::is_floating_point_v<T>) {
    if (avg) {
      const T n = static_cast<T>(parts.size());
      for (size_t i = 0; i < count; ++i) o[i] /= n;
    }
  }
}

}  // namespace

RequestPtr done_request() {
  return std::make_unique<DoneRequest>();
}

Status reduce_in_order(DType dtype, size_t count, const std::vector<const void*>& parts, void* out, ReduceOp op) {
  if (parts.empty()) return Status::invalid_argument("reduce_in_order: no inputs");
  const bool avg = op == ReduceOp::kAvg;
  switch (dtype) {
    case DType::kF32:
      sum_in_order<float>(count, parts, out, avg);
      return Status::ok();
    case DType::kF64:
      sum_in_order<double>(count, parts, out, avg);
      return Status::ok();
    case DType::kI32:
      if (avg) break;
      sum_in_order<int32_t>(count, parts, out, false);
      return Status::ok();
    case DType::kI64:
      if (avg) break;
      sum_in_order<int64_t>(count, parts, out, false);
      return Status::ok();
    case DType::kU8:
    case DType::kBF16:
      break;
  }
  return Status::invalid_argument(std::string("all-reduce ") + (avg ? "avg" : "sum") + " of " + dtype_name(dtype) +
                                  " is not supported; use f32/f64 (avg) or f32/f64/i32/i64 (sum)");
}

PhasedRequest::PhasedRequest(Clock::time_point deadline, std::vector<Phase> phases, std::string what)
    : Request(deadline), phases_(std::move(phases)), what_(std::move(what)) {}

Result<bool> PhasedRequest::test() {
  if (!failed_) return failed_;
  for (;;) {
    for (auto& r : reqs_) {
      if (!r) continue;
      auto t = r->test();
      if (!t) {
        failed_ =
            Status(t.status().code() == Status::Code::kTimeout ? Status::timeout(what_ + ": " + t.status().message())
                                                               : Status::external(what_ + ": " + t.status().message()));
        return failed_;
      }
      if (!*t) return false;
      r.reset();
    }
    reqs_.clear();
    if (next_ == phases_.size()) return true;
    if (Status s = phases_[next_++](reqs_); !s) {
      failed_ = s;
      return failed_;
    }
  }
}

Status P2PTransport::check_peer(int peer, const char* what) const {
  if (peer < 0 || peer >= size())
    return Status::invalid_argument(std::string(what) + ": peer " + std::to_string(peer) + " is outside the group of " +
                                    std::to_string(size()) + " ranks at " + transport_where(name(), rank()));
  return Status::ok();
}

Status P2PTransport::check_host(const Buffer& b, const char* what) const {
  if (b.place == MemoryPlace::kDevice && !supports(MemoryPlace::kDevice))
    return Status::invalid_argument(std::string(what) + ": device buffer given to the " + name() +
                                    " transport, which moves host memory in this build; use \"nccl\" or a host "
                                    "buffer");
  if (b.count > 0 && !b.data)
    return Status::invalid_argument(std::string(what) + ": null buffer of " + std::to_string(b.count) + " elements");
  return Status::ok();
}

Result<RequestPtr> P2PTransport::isend(Buffer buf, int dst, const Options& opt) {
  MOBULA_RETURN_IF_ERROR(check_peer(dst, "send"));
  MOBULA_RETURN_IF_ERROR(check_host(buf, "send"));
  if (opt.tag < 0 || opt.tag > kMaxUserTag)
    return Status::invalid_argument("send: tag " + std::to_string(opt.tag) + " outside [0, 65535]");
  return post_send(buf, dst, opt.tag, deadline_of(opt));
}

Result<RequestPtr> P2PTransport::irecv(Buffer buf, int src, const Options& opt) {
  MOBULA_RETURN_IF_ERROR(check_peer(src, "recv"));
  MOBULA_RETURN_IF_ERROR(check_host(buf, "recv"));
  if (opt.tag < 0 || opt.tag > kMaxUserTag)
    return Status::invalid_argument("recv: tag " + std::to_string(opt.tag) + " outside [0, 65535]");
  return post_recv(buf, src, opt.tag, deadline_of(opt));
}

// Binomial tree rooted at `root`: a rank receives from its parent, then sends to its children.
Result<RequestPtr> P2PTransport::ibroadcast(Buffer buf, int root, const Options& opt) {
  MOBULA_RETURN_IF_ERROR(check_peer(root, "broadcast"));
  MOBULA_RETURN_IF_ERROR(check_host(buf, "broadcast"));
  const int tag = next_collective_tag(), n = size(), me = rank();
  if (n == 1 || buf.bytes() == 0) return done_request();
  const auto deadline = deadline_of(opt);
  const int rel = (me - root + n) % n;
  std::vector<PhasedRequest::Phase> phases;
  int mask = 1;
  while (mask < n && !(rel & mask)) mask <<= 1;  // lowest set bit of rel (or >= n for the root)
  if (rel != 0) {
    const int parent = (rel - mask + root) % n;
    phases.push_back([this, buf, parent, tag, deadline](std::vector<RequestPtr>& reqs) -> Status {
      auto r = post_recv(buf, parent, tag, deadline);
      if (!r) return r.status();
      reqs.push_back(std::move(*r));
      return Status::ok();
    });
  }
  phases.push_back([this, buf, rel, mask, n, root, tag, deadline](std::vector<RequestPtr>& reqs) -> Status {
    for (int m = mask >> 1; m > 0; m >>= 1) {
      if (rel + m >= n) continue;
      auto r = post_send(buf, (rel + m + root) % n, tag, deadline);
      if (!r) return r.status();
      reqs.push_back(std::move(*r));
    }
    return Status::ok();
  });
  return RequestPtr(std::make_unique<PhasedRequest>(
      deadline, std::move(phases),
      "broadcast from root " + std::to_string(root) + " at " + transport_where(name(), me)));
}

// Deterministic all-reduce: a direct reduce-scatter (rank r owns chunk r, receives everybody's
// chunk r and sums them in rank order 0, 1, ..., n-1), then a direct all-gather of the chunks.
// Every element is reduced in the same order whatever the chunking, so results do not depend on
// bucket sizes either.
Result<RequestPtr> P2PTransport::iallreduce(Buffer buf, ReduceOp op, const Options& opt) {
  MOBULA_RETURN_IF_ERROR(check_host(buf, "allreduce"));
  const int tag = next_collective_tag(), n = size(), me = rank();
  MOBULA_RETURN_IF_ERROR(reduce_in_order(buf.dtype, 0, {buf.data}, buf.data, op));  // dtype/op check
  if (buf.count == 0) return done_request();
  if (n == 1) {
    MOBULA_RETURN_IF_ERROR(reduce_in_order(buf.dtype, buf.count, {buf.data}, buf.data, op));
    return done_request();
  }
  const auto deadline = deadline_of(opt);
  auto first = [count = buf.count, n](int r) { return count * static_cast<size_t>(r) / static_cast<size_t>(n); };
  const size_t mine = first(me + 1) - first(me), esz = dtype_size(buf.dtype);
  auto scratch = std::make_shared<std::vector<std::byte>>(mine * esz * static_cast<size_t>(n));
  auto part = [scratch, mine, esz](int r) { return scratch->data() + static_cast<size_t>(r) * mine * esz; };
  std::vector<PhasedRequest::Phase> phases;
  phases.push_back([=, this](std::vector<RequestPtr>& reqs) -> Status {
    for (int p = 0; p < n; ++p) {
      if (p == me) continue;
      auto rr = post_recv({part(p), mine, buf.dtype, buf.place}, p, tag, deadline);
      if (!rr) return rr.status();
      reqs.push_back(std::move(*rr));
      auto sr = post_send(buf.slice(first(p), first(p + 1) - first(p)), p, tag, deadline);
      if (!sr) return sr.status();
      reqs.push_back(std::move(*sr));
    }
    return Status::ok();
  });
  phases.push_back([=, this](std::vector<RequestPtr>& reqs) -> Status {
    Buffer own = buf.slice(first(me), mine);
    if (mine > 0) std::memcpy(part(me), own.data, mine * esz);
    std::vector<const void*> parts;
    for (int r = 0; r < n; ++r) parts.push_back(part(r));
    MOBULA_RETURN_IF_ERROR(reduce_in_order(buf.dtype, mine, parts, own.data, op));
    for (int p = 0; p < n; ++p) {
      if (p == me) continue;
      auto rr = post_recv(buf.slice(first(p), first(p + 1) - first(p)), p, tag, deadline);
      if (!rr) return rr.status();
      reqs.push_back(std::move(*rr));
      auto sr = post_send(own, p, tag, deadline);
      if (!sr) return sr.status();
      reqs.push_back(std::move(*sr));
    }
    return Status::ok();
  });
  return RequestPtr(
      std::make_unique<PhasedRequest>(deadline, std::move(phases), "all-reduce at " + transport_where(name(), me)));
}

Result<RequestPtr> P2PTransport::iallgather(Buffer in, Buffer out, const Options& opt) {
  MOBULA_RETURN_IF_ERROR(check_host(in, "allgather"));
  MOBULA_RETURN_IF_ERROR(check_host(out, "allgather"));
  const int tag = next_collective_tag(), n = size(), me = rank();
  if (out.bytes() != in.bytes() * static_cast<size_t>(n) || out.dtype != in.dtype)
    return Status::invalid_argument("allgather: output holds " + std::to_string(out.bytes()) + " bytes, need " +
                                    std::to_string(in.bytes() * static_cast<size_t>(n)) + " (" + std::to_string(n) +
                                    " x input, same dtype)");
  if (in.bytes() > 0) std::memmove(out.slice(in.count * static_cast<size_t>(me), in.count).data, in.data, in.bytes());
  if (n == 1 || in.count == 0) return done_request();
  const auto deadline = deadline_of(opt);
  std::vector<PhasedRequest::Phase> phases;
  phases.push_back([=, this](std::vector<RequestPtr>& reqs) -> Status {
    for (int p = 0; p < n; ++p) {
      if (p == me) continue;
      auto rr = post_recv(out.slice(in.count * static_cast<size_t>(p), in.count), p, tag, deadline);
      if (!rr) return rr.status();
      reqs.push_back(std::move(*rr));
      auto sr = post_send(in, p, tag, deadline);
      if (!sr) return sr.status();
      reqs.push_back(std::move(*sr));
    }
    return Status::ok();
  });
  return RequestPtr(
      std::make_unique<PhasedRequest>(deadline, std::move(phases), "all-gather at " + transport_where(name(), me)));
}

// Dissemination barrier: round k sends an empty message to rank + 2^k and receives from rank - 2^k.
Result<RequestPtr> P2PTransport::ibarrier(const Options& opt) {
  const int tag = next_collective_tag(), n = size(), me = rank();
  if (n == 1) return done_request();
  const auto deadline = deadline_of(opt);
  std::vector<PhasedRequest::Phase> phases;
  for (int k = 1; k < n; k <<= 1) {
    phases.push_back([=, this](std::vector<RequestPtr>& reqs) -> Status {
      auto rr = post_recv({nullptr, 0, DType::kU8, MemoryPlace::kHost}, (me - k + n) % n, tag, deadline);
      if (!rr) return rr.status();
      reqs.push_back(std::move(*rr));
      auto sr = post_send({nullptr, 0, DType::kU8, MemoryPlace::kHost}, (me + k) % n, tag, deadline);
      if (!sr) return sr.status();
      reqs.push_back(std::move(*sr));
      return Status::ok();
    });
  }
  return RequestPtr(
      std::make_unique<PhasedRequest>(deadline, std::move(phases), "barrier at " + transport_where(name(), me)));
}

}  // namespace mobula
