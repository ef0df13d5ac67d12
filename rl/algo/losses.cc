#include "rl/algo/losses.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace mobula::rl {

namespace {
Status check_sizes(std::initializer_list<size_t> sizes, const char* what) {
  const size_t n = *sizes.begin();
  for (size_t s : sizes)
    if (s != n)
      return Status::invalid_argument(std::string(what) + ": every per-token span must have the same length (" +
                                      std::to_string(n) + " vs " + std::to_string(s) + ")");
  return Status::ok();
}
double masked_count(std::span<const float> mask) {
  double n = 0;
  for (float m : mask) n += m;
  return n;
}
}  // namespace

Result<LossStats> cross_entropy_weights(std::span<const float> logp, std::span<const float> mask, std::span<float> w) {
  if (Status s = check_sizes({logp.size(), mask.size(), w.size()}, "cross_entropy"); !s) return s;
  LossStats st;
  const double n = masked_count(mask);
  st.tokens = static_cast<long>(n);
  for (size_t i = 0; i < logp.size(); ++i) {
    w[i] = n > 0 ? static_cast<float>(-mask[i] / n) : 0.f;
    st.loss -= n > 0 ? mask[i] * logp[i] / n : 0.0;
  }
  return st;
}

Result<LossStats> importance_sampling_weights(std::span<const float> logp, std::span<const float> logp_old,
                                              std::span<const float> adv, std::span<const float> mask,
                                              std::span<float> w) {
  if (Status s = check_sizes({logp.size(), logp_old.size(), adv.size(), mask.size(), w.size()}, "importance_sampling");
      !s)
    return s;
  LossStats st;
  const double n = masked_count(mask);
  st.tokens = static_cast<long>(n);
  double ratio_sum = 0;
  for (size_t i = 0; i < logp.size(); ++i) {
    const double ratio = std::exp(double(logp[i]) - logp_old[i]);
    const double g = n > 0 ? -mask[i] * ratio * adv[i] / n : 0.0;  // dL/dlogp = -ratio*A/n
    w[i] = static_cast<float>(g);
    st.loss += g;  // L = -(1/n) sum ratio*A has the same value as its derivative here
    ratio_sum += mask[i] * ratio;
  }
  st.mean_ratio = n > 0 ? ratio_sum / n : 1.0;
  return st;
}

Result<LossStats> ppo_weights(std::span<const float> logp, std::span<const float> logp_old, std::span<const float> adv,
                              std::span<const float> mask, float eps_low, float eps_high,
                              std::span<const float> logp_ref, float kl_coef, std::span<float> w) {
  if (Status s = check_sizes({logp.size(), logp_old.size(), adv.size(), mask.size(), w.size()}, "ppo"); !s) return s;
  if (!logp_ref.empty() && logp_ref.size() != logp.size())
    return Status::invalid_argument("ppo: logp_ref must be empty or have one entry per token");
  if (eps_low < 0 || eps_high < 0) return Status::invalid_argument("ppo: clip ranges must be >= 0");
  LossStats st;
  const double n = masked_count(mask);
  st.tokens = static_cast<long>(n);
  double clipped = 0, ratio_sum = 0, kl_sum = 0;
  for (size_t i = 0; i < logp.size(); ++i) {
    if (mask[i] == 0 || n == 0) {
      w[i] = 0.f;
      continue;
    }
    const double m = mask[i];
    const double ratio = std::exp(double(logp[i]) - logp_old[i]);
    const double a = adv[i];
    const double unclipped = ratio * a;
    const double clipped_ratio = std::clamp(ratio, 1.0 - eps_low, 1.0 + eps_high);
    const double clipped_obj = clipped_ratio * a;
    // The min picks the clipped branch (zero gradient) only when it is strictly smaller.
    const bool use_clipped = clipped_obj < unclipped;
    double g = use_clipped ? 0.0 : -m * ratio * a / n;
    st.loss -= m * std::min(unclipped, clipped_obj) / n;
    clipped += use_clipped ? m : 0.0;
    ratio_sum += m * ratio;
    if (!logp_ref.empty()) {
      const double d = double(logp_ref[i]) - logp[i];
      const double k3 = std::exp(d) - d - 1.0;
      st.loss += kl_coef * m * k3 / n;
      kl_sum += m * k3;
      g += kl_coef * m * (1.0 - std::exp(d)) / n;  // d k3 / d logp = 1 - exp(ref - logp)
    }
    w[i] = static_cast<float>(g);
  }
  st.clip_fraction = n > 0 ? clipped / n : 0;
  st.mean_ratio = n > 0 ? ratio_sum / n : 1;
  st.kl = n > 0 ? kl_sum / n : 0;
  return st;
}

Result<std::vector<float>> group_advantages(std::span<const float> rewards, int group_size, bool divide_by_std,
                                            float eps) {
  if (group_size < 1 || rewards.size() % static_cast<size_t>(group_size) != 0)
    return Status::invalid_argument("group_advantages: " + std::to_string(rewards.size()) +
                                    " rewards are not a whole number of groups of " + std::to_string(group_size));
  std::vector<float> adv(rewards.size());
  for (size_t g0 = 0; g0 < rewards.size(); g0 += static_cast<size_t>(group_size)) {
    double mean = 0;
    for (int k = 0; k < group_size; ++k) mean += rewards[g0 + size_t(k)];
    mean /= group_size;
    double var = 0;
    for (int k = 0; k < group_size; ++k) var += (rewards[g0 + size_t(k)] - mean) * (rewards[g0 + size_t(k)] - mean);
    const double sd = group_size > 1 ? std::sqrt(var / (group_size - 1)) : 0.0;  // unbiased, as in GRPO
    for (int k = 0; k < group_size; ++k) {
      const double d = rewards[g0 + size_t(k)] - mean;
      adv[g0 + size_t(k)] = static_cast<float>(divide_by_std ? d / (sd + eps) : d);
    }
  }
  return adv;
}

}  // namespace mobula::rl
