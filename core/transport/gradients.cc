#include "core/transport/gradients.h"

#include <algorithm>
#include <deque>

#include "core/metrics/registry.h"

namespace mobula {

Status allreduce_bucketed(Transport& t, Buffer buf, ReduceOp op, size_t bucket_bytes, const Options& opt,
                          int in_flight) {
  const size_t per = std::max<size_t>(1, bucket_bytes / dtype_size(buf.dtype));
  const size_t window = static_cast<size_t>(std::max(1, in_flight));
  std::deque<RequestPtr> running;
  Status first;
  auto retire = [&] {
    Status s = running.front()->wait();
    running.pop_front();
    if (!s && first) first = s;
  };
  metrics::FlowTimer timer("gradients", static_cast<double>(buf.count * dtype_size(buf.dtype)));
  if (buf.count == 0) {
    auto r = t.iallreduce(buf, op, opt);  // keeps every rank's collective numbering in step
    return r ? (*r)->wait() : r.status();
  }
  for (size_t at = 0; at < buf.count && first; at += per) {
    if (running.size() == window) retire();
    if (!first) break;
    auto r = t.iallreduce(buf.slice(at, std::min(per, buf.count - at)), op, opt);
    if (!r) {
      first = r.status();
      break;
    }
    running.push_back(std::move(*r));
  }
  while (!running.empty()) retire();
  return first;
}

}  // namespace mobula
