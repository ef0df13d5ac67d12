// A training batch through the model: padding to shape buckets, microbatches, per-token loss
// weights, backward. Shared by the local TrainingClient and the SPMD trainer role.
#pragma once

#include <vector>

#include "rl/algo/losses.h"
#include "rl/model/gpt.h"

namespace mobula::rl {

// One training sequence. tokens are the model inputs; target_tokens[t] is the token that should
// follow position t (usually tokens shifted by one); weights[t] (0/1 mask) says which positions
// are trained. For importance_sampling / ppo: logprobs_old and advantages per position; optional
// logprobs_ref for the KL penalty.
struct Datum {
  std::vector<int> tokens;
  std::vector<int> target_tokens;
  std::vector<float> weights;
  std::vector<float> logprobs_old;
  std::vector<float> advantages;
  std::vector<float> logprobs_ref;
};

enum class LossFn { kCrossEntropy, kImportanceSampling, kPpo };

struct LossConfig {
  LossFn fn = LossFn::kCrossEntropy;
  float clip_low = 0.2f, clip_high = 0.2f;  // ppo
  float kl_coef = 0.0f;                     // ppo, with Datum::logprobs_ref
};

struct ForwardBackwardOutput {
  LossStats stats;
  std::vector<std::vector<float>> logprobs;  // per datum, per position (current policy)
};

// Forward + backward of `batch` in microbatches of at most model.max_batch() rows. Gradients of the
// loss's TOKEN SUM accumulate into model.grads (the caller divides by all tokens before the
// optimizer step); *tokens receives the number of trained tokens. The returned stats are means.
Result<ForwardBackwardOutput> forward_backward_batch(Gpt<>& model, const std::vector<Datum>& batch,
                                                     const LossConfig& loss, double* tokens);

}  // namespace mobula::rl
