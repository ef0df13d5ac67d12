// Policy-gradient losses as per-token weights for Gpt::backward (which accumulates
// d(sum_i w_i * logp_i)/dtheta): for a loss L(logp), w_i = dL/dlogp_i. So cross-entropy, importance
// sampling, PPO-clip and the KL penalty are all just different w (Tinker's loss_fn choices).
//
// Conventions: all spans have one entry per token position; mask 0 = not trained (prompt, padding);
// losses are means over the masked tokens of the batch (n = sum of mask).
#pragma once

#include <span>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::rl {

struct LossStats {
  double loss = 0;           // value of the loss (mean over masked tokens)
  double clip_fraction = 0;  // PPO: fraction of masked tokens whose ratio was clipped
  double kl = 0;             // mean k3 KL estimate to the reference (when given)
  double mean_ratio = 1;     // mean importance ratio exp(logp - logp_old)
  long tokens = 0;           // masked tokens
};

// L = -(1/n) sum mask * logp.
Result<LossStats> cross_entropy_weights(std::span<const float> logp, std::span<const float> mask, std::span<float> w);

// L = -(1/n) sum mask * ratio * A, ratio = exp(logp - logp_old) (no clipping).
Result<LossStats> importance_sampling_weights(std::span<const float> logp, std::span<const float> logp_old,
                                              std::span<const float> adv, std::span<const float> mask,
                                              std::span<float> w);

// PPO-clip: L = -(1/n) sum mask * min(ratio A, clip(ratio, 1-eps_low, 1+eps_high) A)
//           + kl_coef * (1/n) sum mask * k3(ref, logp)       (when logp_ref is not empty)
// k3(ref, logp) = exp(ref - logp) - (ref - logp) - 1 >= 0 (Schulman's unbiased, positive estimator).
Result<LossStats> ppo_weights(std::span<const float> logp, std::span<const float> logp_old, std::span<const float> adv,
                              std::span<const float> mask, float eps_low, float eps_high,
                              std::span<const float> logp_ref, float kl_coef, std::span<float> w);

// GRPO advantages: rewards of `groups` groups of `group_size` samples (group-major); each sample's
// advantage is (r - mean of its group) / (std of its group + eps), or without the division when
// divide_by_std is false (Dr. GRPO). A group with identical rewards gets zero advantages.
Result<std::vector<float>> group_advantages(std::span<const float> rewards, int group_size, bool divide_by_std,
                                            float eps = 1e-6f);

}  // namespace mobula::rl
