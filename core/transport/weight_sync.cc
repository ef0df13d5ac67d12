#include "core/transport/weight_sync.h"

#include <algorithm>
#include <deque>
#include <string>

#include "core/metrics/registry.h"
#include "core/runtime/mpi.h"

namespace mobula {

namespace {
constexpr int kHeaderTag = 65000;
constexpr int kBucketTag = 65001;

Status keep(Status& first, Status s) {
  if (!s && first) first = s;
  return first;
}
}  // namespace

WeightStore::WeightStore(size_t count) : count_(count), current_(std::make_shared<VersionedWeights>()) {}

std::shared_ptr<const VersionedWeights> WeightStore::current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

std::shared_ptr<VersionedWeights> WeightStore::take_back() {
  // Reuse the back buffer (double buffering) unless a reader still holds it; then allocate.
  std::shared_ptr<VersionedWeights> b = std::move(back_);
  if (!b || b.use_count() != 1) b = std::make_shared<VersionedWeights>();
  b->params.resize(count_);
  return b;
}

void WeightStore::publish(std::shared_ptr<VersionedWeights> w) {
  std::lock_guard<std::mutex> lock(mu_);
  auto old = std::const_pointer_cast<VersionedWeights>(current_);
  current_ = std::move(w);
  if (old && old->version >= 0) back_ = std::move(old);
}

Status sync_weights(Transport& t, const WeightGroups& groups, std::span<const float> params, WeightStore* store,
                    int64_t version, const WeightSyncOptions& opt) {
  const int me = t.rank();
  const bool trainer = std::count(groups.trainers.begin(), groups.trainers.end(), me) > 0;
  const bool rollout = std::count(groups.rollouts.begin(), groups.rollouts.end(), me) > 0;
  const std::string where = transport_where(t.name(), me);
  if (groups.trainers.empty() || groups.rollouts.empty() || trainer == rollout)
    return Status::invalid_argument("sync_weights at " + where +
                                    ": need at least one trainer and one rollout rank, and this rank in exactly one "
                                    "of the two groups");
  if (opt.bucket_bytes < sizeof(float) || opt.bucket_bytes > (size_t{1} << 30))
    return Status::invalid_argument("sync_weights: bucket_bytes must be in [4, 1 GiB]");
  if (rollout && !store) return Status::invalid_argument("sync_weights at " + where + ": rollout rank without store");
  const size_t count = trainer ? params.size() : store->count();
  metrics::FlowTimer timer("weights", static_cast<double>(count * sizeof(float)));
  const size_t per = opt.bucket_bytes / sizeof(float);
  const size_t nbuckets = (count + per - 1) / per;
  const size_t T = groups.trainers.size(), R = groups.rollouts.size();
  const size_t window = static_cast<size_t>(std::max(1, opt.in_flight));
  Options o;
  o.timeout = opt.timeout;
  Status first;

  if (trainer) {
    const size_t ti =
        static_cast<size_t>(std::find(groups.trainers.begin(), groups.trainers.end(), me) - groups.trainers.begin());
    int64_t header[3] = {version, static_cast<int64_t>(count), static_cast<int64_t>(per)};
    std::vector<RequestPtr> hdr;
    o.tag = kHeaderTag;
    for (int r : groups.rollouts) {
      auto s = t.isend(host_buffer(header, 3), r, o);
      if (!s) return s.status();
      hdr.push_back(std::move(*s));
    }
    o.tag = kBucketTag;
    std::deque<std::vector<RequestPtr>> running;  // one entry per bucket: its sends to every rollout
    auto retire = [&] {
      keep(first, wait_all(running.front()));
      running.pop_front();
    };
    for (size_t k = ti; k < nbuckets && first; k += T) {
      if (running.size() == window) retire();
      const Buffer b = host_buffer(params.data() + k * per, std::min(per, count - k * per));
      std::vector<RequestPtr> sends;
      for (size_t i = 0; i < R && first; ++i) {
        auto s = t.isend(b, groups.rollouts[(k + i) % R], o);  // rotate so rollouts are fed evenly
        if (!s)
          keep(first, s.status());
        else
          sends.push_back(std::move(*s));
      }
      running.push_back(std::move(sends));
    }
    while (!running.empty()) retire();
    keep(first, wait_all(hdr));
    return first;
  }

  // Rollout: headers first, all must agree.
  std::vector<int64_t> headers(3 * T);
  {
    std::vector<RequestPtr> hdr;
    o.tag = kHeaderTag;
    for (size_t i = 0; i < T; ++i) {
      auto r = t.irecv(host_buffer(headers.data() + 3 * i, 3), groups.trainers[i], o);
      if (!r) return r.status();
      hdr.push_back(std::move(*r));
    }
    MOBULA_RETURN_IF_ERROR(wait_all(hdr));
  }
  Status mismatch;
  for (size_t i = 0; i < T && mismatch; ++i) {
    const int64_t* h = headers.data() + 3 * i;
    if (h[1] != static_cast<int64_t>(count) || h[2] != static_cast<int64_t>(per))
      return Status::invalid_argument(
          "sync_weights at " + where + ": trainer rank " + std::to_string(groups.trainers[i]) + " sends " +
          std::to_string(h[1]) + " floats in buckets of " + std::to_string(h[2]) + ", this rollout expects " +
          std::to_string(count) + " in buckets of " + std::to_string(per) +
          "; all ranks must use the same model and options (the group is now out of step: abort the job)");
    if (h[0] != version)
      mismatch =
          Status::invalid_argument("sync_weights at " + where + ": trainer rank " + std::to_string(groups.trainers[i]) +
                                   " sends version " + std::to_string(h[0]) + ", this rollout expects version " +
                                   std::to_string(version) + "; the buckets were received and dropped");
  }
  std::shared_ptr<VersionedWeights> back = store->take_back();
  o.tag = kBucketTag;
  std::deque<RequestPtr> running;
  size_t posted = 0;
  auto post = [&] {
    const size_t k = posted++;
    auto r =
        t.irecv(host_buffer(back->params.data() + k * per, std::min(per, count - k * per)), groups.trainers[k % T], o);
    if (!r) return keep(first, r.status());
    running.push_back(std::move(*r));
    return first;
  };
  while (posted < nbuckets && running.size() < window && first) post();
  while (!running.empty()) {
    keep(first, running.front()->wait());
    running.pop_front();
    if (posted < nbuckets && first) post();
  }
  if (!first) {
    store->broken_.push_back(std::move(back));  // a failed receive may still land in it: never reuse
    return first;
  }
  if (!mismatch) {
    store->back_ = std::move(back);  // drained, not published
    return mismatch;
  }
  back->version = version;
  store->publish(std::move(back));
  return Status::ok();
}

}  // namespace mobula
