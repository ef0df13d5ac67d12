// A training batch through the model: padding to shape buckets, microbatches, per-token loss
// weights, backward. Shared by the local TrainingClient and the SPMD trainer role.
#pragma once

#include <span>
#include <vector>

#include "rl/algo/losses.h"
#include "rl/model/gpt.h"
#include "rl/optim/adamw.h"

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
  int shard = 0;  // SPMD client with shards (ClientOptions::shards): its shard of the step's batch
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

// The datum that trains on seq[first..]: inputs seq[0..n-2], targets seq[1..n-1], weight 1 on the
// positions that predict seq[first..] (first >= 1). When logp_old is given (one per trained
// token, the behaviour policy's) it fills logprobs_old and every trained position gets `advantage`;
// otherwise both stay empty (cross-entropy).
Datum completion_datum(std::span<const int> seq, size_t first, std::span<const float> logp_old = {},
                       float advantage = 0.0f);

// Checks one datum against the model's shape (length, vocabulary) and what `loss` needs
// (backward) or forward needs (one target per token).
Status check_datum(const Datum& d, size_t index, const LossConfig& loss, const GptConfig& model, bool backward);

// Per-token weights for Gpt::backward of the loss's TOKEN SUM over these positions (the loss
// function's mean-normalised weights times the positions' token count), and the loss's stats.
// ref may be empty (no KL term).
Result<LossStats> token_sum_weights(const LossConfig& loss, std::span<const float> logp, std::span<const float> mask,
                                    std::span<const float> old, std::span<const float> adv, std::span<const float> ref,
                                    std::span<float> w);

// Forward + backward of `batch` in microbatches of at most model.max_batch() rows. Gradients of the
// loss's TOKEN SUM accumulate into model.grads (the caller divides by all tokens before the
// optimizer step); *tokens receives the number of trained tokens. The returned stats are means.
Result<ForwardBackwardOutput> forward_backward_batch(Gpt<>& model, std::span<const Datum> batch, const LossConfig& loss,
                                                     double* tokens);

// Log-probs of every datum's target tokens (one per position) under the model; no backward.
Result<std::vector<std::vector<float>>> forward_batch(Gpt<>& model, std::span<const Datum> batch);

// The optimizer step that goes with forward_backward_batch: divides the accumulated gradient token
// sums by `tokens` (all trained tokens since the last step, over every replica) and applies `opt`
// with its current config. Returns the gradient norm before clipping. The gradients are left
// scaled; the caller zeroes them before the next accumulation.
float step_token_mean(Gpt<>& model, AdamW<>& opt, double tokens);
// The same on any flat parameter/gradient pair laid out for `opt` (a LoRA adapter's).
float step_token_mean(const AdamW<>::Buffer& params, const AdamW<>::Buffer& grads, AdamW<>& opt, double tokens);

}  // namespace mobula::rl
