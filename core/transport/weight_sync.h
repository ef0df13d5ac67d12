// Weight sync: the trainers' flat parameter block to every rollout rank, stamped with a version.
//
// Algorithm: the block is cut into buckets of WeightSyncOptions::bucket_bytes; bucket k is sent by
// trainer k % T (the sources are spread over all trainer ranks, not trainer 0 alone: OpenRLHF#533)
// straight to every rollout rank. A trainer keeps up to `in_flight` of its buckets on the wire and a
// rollout keeps `in_flight` receives posted, so bucket k+1 travels while bucket k lands. Before the
// buckets each trainer sends every rollout a small header (version, element count, bucket size);
// a rollout checks all headers agree with each other and with its own expectations before any byte
// lands.
//
// Contract
//  * sync_weights() is collective over the trainer and rollout ranks of the transport's group
//    (other ranks of the group do not call it). Trainers pass `params` (same count everywhere; the
//    trainers' copies are assumed identical, as after a data-parallel step) and no store; rollouts
//    pass their WeightStore and an empty span. Every participant passes the same groups, version
//    and options.
//  * Rollouts receive into the store's back buffer and publish it in one step when every bucket has
//    arrived: a reader of WeightStore::current() sees either the old version or the new one, never a
//    mix. On failure nothing is published.
//  * WeightStore is thread-safe for current() against sync_weights() (samplers may read while the
//    next version arrives); sync_weights() itself runs on one thread per rank.
//  * Each message gets opt.timeout from its start; a dead or hung peer gives Status::timeout.
//  * Uses the transport's user tags 65000 (headers) and 65001 (buckets): do not use them for other
//    point-to-point traffic on the same transport while a sync runs.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "core/transport/transport.h"

namespace mobula {

struct WeightGroups {
  std::vector<int> trainers;  // ranks of the transport's group that send
  std::vector<int> rollouts;  // ranks that receive
};

struct WeightSyncOptions {
  size_t bucket_bytes = size_t{16} << 20;
  int in_flight = 4;
  std::chrono::milliseconds timeout{120000};
};

struct VersionedWeights {
  int64_t version = -1;  // -1: nothing received yet
  std::vector<float> params;
};

// A rollout rank's weights: the published version and a back buffer for the next one.
class WeightStore {
 public:
  explicit WeightStore(size_t count);
  // The published weights (never half-updated). Holding the pointer keeps that version alive.
  std::shared_ptr<const VersionedWeights> current() const;
  size_t count() const { return count_; }

 private:
  friend Status sync_weights(Transport&, const WeightGroups&, std::span<const float>, WeightStore*, int64_t,
                             const WeightSyncOptions&);
  std::shared_ptr<VersionedWeights> take_back();  // a buffer nobody reads
  void publish(std::shared_ptr<VersionedWeights> w);

  size_t count_;
  mutable std::mutex mu_;
  std::shared_ptr<const VersionedWeights> current_;
  std::shared_ptr<VersionedWeights> back_;
  // Buffers of failed syncs: a timed-out receive may still land in them, so they are never freed.
  std::vector<std::shared_ptr<VersionedWeights>> broken_;
};

Status sync_weights(Transport& t, const WeightGroups& groups, std::span<const float> params, WeightStore* store,
                    int64_t version, const WeightSyncOptions& opt = {});

}  // namespace mobula
