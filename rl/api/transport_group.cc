#include "rl/api/transport_group.h"

#include "core/transport/gradients.h"

namespace mobula::rl {

Status TransportGroup::sum(std::span<float> v) {
  return allreduce_bucketed(t_, {v.data(), v.size(), DType::kF32, MemoryPlace::kHost}, ReduceOp::kSum, bucket_bytes_);
}

Status TransportGroup::sum(std::span<double> v) {
  return t_.allreduce({v.data(), v.size(), DType::kF64, MemoryPlace::kHost}, ReduceOp::kSum);
}

Status TransportGroup::sum_shards(int shards, const ShardValueFn<float>& value, std::span<float> out) {
  return mobula::sum_shards<float>(t_, shards, value, out, {}, "gradients");
}

Status TransportGroup::sum_shards(int shards, const ShardValueFn<double>& value, std::span<double> out) {
  return mobula::sum_shards<double>(t_, shards, value, out);
}

}  // namespace mobula::rl
