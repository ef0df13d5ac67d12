// Building blocks shared by the backends (not for algorithm code: use transport.h).
//
//  * P2PTransport: a Transport whose backend provides tagged point-to-point messages with an
//    internal tag space; the collectives it does not implement natively are built here from those
//    messages (deterministic all-reduce, binomial broadcast, direct all-gather, dissemination
//    barrier).
//  * PhasedRequest: a request made of phases; each phase posts point-to-point requests (and may do
//    local work) once every request of the previous phase has completed.
//  * Internal tags: user tags are [0, kMaxUserTag]; collective number k uses tag
//    kFirstCollectiveTag + k % kCollectiveTags. Collectives are called in the same order on every
//    rank (contract), so every rank numbers them alike.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/transport/transport.h"

namespace mobula {

constexpr int kFirstCollectiveTag = kMaxUserTag + 1;
constexpr int kCollectiveTags = 16384;

class PhasedRequest : public Request {
 public:
  // Posts the phase's requests into `reqs` (may be none: a purely local phase).
  using Phase = std::function<Status(std::vector<RequestPtr>& reqs)>;
  PhasedRequest(Clock::time_point deadline, std::vector<Phase> phases, std::string what);
  Result<bool> test() override;

 private:
  std::vector<Phase> phases_;
  size_t next_ = 0;
  std::vector<RequestPtr> reqs_;
  std::string what_;
  Status failed_;
};

class P2PTransport : public Transport {
 public:
  // Backend hooks: tagged messages with an absolute deadline; tag may exceed kMaxUserTag.
  virtual Result<RequestPtr> post_send(Buffer buf, int dst, int tag, Request::Clock::time_point deadline) = 0;
  virtual Result<RequestPtr> post_recv(Buffer buf, int src, int tag, Request::Clock::time_point deadline) = 0;

  Result<RequestPtr> isend(Buffer buf, int dst, const Options& opt = {}) override;
  Result<RequestPtr> irecv(Buffer buf, int src, const Options& opt = {}) override;
  Result<RequestPtr> ibroadcast(Buffer buf, int root, const Options& opt = {}) override;
  Result<RequestPtr> iallreduce(Buffer buf, ReduceOp op, const Options& opt = {}) override;
  Result<RequestPtr> iallgather(Buffer in, Buffer out, const Options& opt = {}) override;
  Result<RequestPtr> ibarrier(const Options& opt = {}) override;

 protected:
  int next_collective_tag() { return kFirstCollectiveTag + static_cast<int>(collectives_++ % kCollectiveTags); }
  Status check_peer(int peer, const char* what) const;
  Status check_host(const Buffer& b, const char* what) const;

 private:
  unsigned long long collectives_ = 0;
};

// Sums n buffers of `count` elements of `dtype` into `out` in the order parts[0] + parts[1] + ...
// (+ then / n for kAvg). Local; `out` may alias parts[0] only.
Status reduce_in_order(DType dtype, size_t count, const std::vector<const void*>& parts, void* out, ReduceOp op);

// Deadline for an operation started now with `opt`.
inline Request::Clock::time_point deadline_of(const Options& opt) {
  return Request::Clock::now() + opt.timeout;
}

// A request that is already complete (zero-byte or single-rank operations).
RequestPtr done_request();

}  // namespace mobula
