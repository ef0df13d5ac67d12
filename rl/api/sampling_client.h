// The sampling half of the Tinker-style API (Tinker's SamplingClient): sample() with the weights of
// the newest published version. The rollout group runs one per rank; its weights arrive from the
// trainers' save_weights_for_sampler (weight sync) and are installed with set_weights().
//
// Contract
//  * Calls run on the caller's thread in submission order; the futures are ready on return (the
//    same contract as TrainingClient's SPMD backend, so roles read alike).
//  * sample() uses the weights of the last set_weights(); before any it fails.
//  * Deterministic: seeds[i] drives sample i (prompt i / n, completion i % n); equal inputs give
//    bitwise-equal samples.
//  * No MPI types (see training_client.h).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "rl/api/training_client.h"
#include "rl/model/sampler.h"

namespace mobula::rl {

class SamplingClient {
 public:
  // max_rows: most sequences sampled at once (prompts x num_samples of one call).
  static Result<std::unique_ptr<SamplingClient>> create(const GptConfig& cfg, int max_rows);

  // Installs weights (a copy; `params` may be reused afterwards) as `version`.
  Status set_weights(std::span<const float> params, int64_t version);
  int64_t version() const { return version_; }

  // num_samples completions per prompt, the prompt's KV cache computed once and shared;
  // seeds.size() == prompts.size() * num_samples.
  Future<std::vector<Sample>> sample(const std::vector<std::vector<int>>& prompts, int num_samples,
                                     const SamplingParams& params, const std::vector<uint64_t>& seeds);

  const GptConfig& config() const { return cfg_; }

 private:
  SamplingClient(const GptConfig& cfg, Sampler<> s) : cfg_(cfg), sampler_(std::move(s)) {}
  GptConfig cfg_;
  Sampler<> sampler_;
  Kokkos::View<float*> params_;
  int64_t version_ = -1;
};

}  // namespace mobula::rl
