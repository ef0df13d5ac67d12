// The GradientGroup of a SPMD TrainingClient over a mobula Transport (the trainer group): float
// sums go through the bucketed all-reduce, double sums (loss statistics) through one all-reduce.
// Both sum in rank order on host buffers, so every member ends with the same bits.
#pragma once

#include <cstddef>

#include "core/transport/transport.h"
#include "rl/api/training_client.h"

namespace mobula::rl {

class TransportGroup final : public GradientGroup {
 public:
  // `t` spans exactly the trainer group and outlives this object.
  explicit TransportGroup(Transport& t, size_t bucket_bytes = size_t{4} << 20) : t_(t), bucket_bytes_(bucket_bytes) {}
  Status sum(std::span<float> values) override;
  Status sum(std::span<double> values) override;
  int member() const override { return t_.rank(); }
  int members() const override { return t_.size(); }
  Status sum_shards(int shards, const ShardValueFn<float>& value, std::span<float> out) override;
  Status sum_shards(int shards, const ShardValueFn<double>& value, std::span<double> out) override;

 private:
  Transport& t_;
  size_t bucket_bytes_;
};

}  // namespace mobula::rl
