#include "rl/algo/batch.h"

#include <algorithm>
#include <string>

namespace mobula::rl {

Datum completion_datum(std::span<const int> seq, size_t first, std::span<const float> logp_old, float advantage) {
  Datum d;
  d.tokens.assign(seq.begin(), seq.end() - 1);
  d.target_tokens.assign(seq.begin() + 1, seq.end());
  const size_t T = d.tokens.size();
  d.weights.assign(T, 0.f);
  for (size_t t = first - 1; t < T; ++t) d.weights[t] = 1.f;
  if (!logp_old.empty()) {
    d.logprobs_old.assign(T, 0.f);
    d.advantages.assign(T, 0.f);
    for (size_t k = 0; k < logp_old.size(); ++k) {
      d.logprobs_old[first - 1 + k] = logp_old[k];
      d.advantages[first - 1 + k] = advantage;
    }
  }
  return d;
}

Status check_datum(const Datum& d, size_t index, const LossConfig& loss, const GptConfig& model, bool backward) {
  const size_t T = d.tokens.size();
  const std::string at = (backward ? "forward_backward: datum " : "forward: datum ") + std::to_string(index) + ": ";
  if (T == 0 || static_cast<int>(T) > model.max_seq)
    return Status::invalid_argument(at + std::to_string(T) + " tokens; need 1.." + std::to_string(model.max_seq));
  if (d.target_tokens.size() != T || (backward && d.weights.size() != T))
    return Status::invalid_argument(at + "target_tokens and weights must have one entry per token");
  for (size_t t = 0; t < T; ++t) {
    if (d.tokens[t] < 0 || d.tokens[t] >= model.vocab || d.target_tokens[t] >= model.vocab)
      return Status::invalid_argument(at + "token or target at position " + std::to_string(t) +
                                      " outside the vocabulary [0, " + std::to_string(model.vocab) + ")");
  }
  if (!backward) return Status::ok();
  if (loss.fn != LossFn::kCrossEntropy && (d.logprobs_old.size() != T || d.advantages.size() != T))
    return Status::invalid_argument(at + "importance_sampling/ppo need logprobs_old and advantages per token");
  if (!d.logprobs_ref.empty() && d.logprobs_ref.size() != T)
    return Status::invalid_argument(at + "logprobs_ref must be empty or have one entry per token");
  return Status::ok();
}

Result<LossStats> token_sum_weights(const LossConfig& loss, std::span<const float> lp, std::span<const float> mask,
                                    std::span<const float> old, std::span<const float> adv, std::span<const float> ref,
                                    std::span<float> w) {
  Result<LossStats> st = Status::invalid_argument("unreachable");
  switch (loss.fn) {
    case LossFn::kCrossEntropy:
      st = cross_entropy_weights(lp, mask, w);
      break;
    case LossFn::kImportanceSampling:
      st = importance_sampling_weights(lp, old, adv, mask, w);
      break;
    case LossFn::kPpo:
      st = ppo_weights(lp, old, adv, mask, loss.clip_low, loss.clip_high, ref, loss.kl_coef, w);
      break;
  }
  if (!st) return st;
  const double n = static_cast<double>(st->tokens);
  for (auto& x : w) x = static_cast<float>(x * n);
  return st;
}

Result<ForwardBackwardOutput> forward_backward_batch(Gpt<>& model, std::span<const Datum> batch, const LossConfig& loss,
                                                     double* tokens) {
  const int Tmax = model.config().max_seq;
  double n_total = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const Datum& d = batch[i];
    MOBULA_RETURN_IF_ERROR(check_datum(d, i, loss, model.config(), true));
    for (float w : d.weights) n_total += w;
  }
  ForwardBackwardOutput out;
  out.logprobs.resize(batch.size());
  const size_t mb = static_cast<size_t>(model.max_batch());
  double loss_sum = 0, clip_sum = 0, kl_sum = 0, ratio_sum = 0;
  for (size_t b0 = 0; b0 < batch.size(); b0 += mb) {
    const size_t B = std::min(mb, batch.size() - b0);
    size_t maxlen = 0;
    for (size_t k = 0; k < B; ++k) maxlen = std::max(maxlen, batch[b0 + k].tokens.size());
    const int T = bucket_length(static_cast<int>(maxlen), Tmax);  // shape bucketing
    const size_t N = B * size_t(T);
    std::vector<int> tok(N, 0), tgt(N, -1);
    std::vector<float> mask(N, 0.f), old(N, 0.f), adv(N, 0.f), ref, w(N, 0.f), lp(N);
    bool with_ref = loss.fn == LossFn::kPpo && loss.kl_coef != 0;
    for (size_t k = 0; k < B && with_ref; ++k) with_ref = !batch[b0 + k].logprobs_ref.empty();
    if (with_ref) ref.assign(N, 0.f);
    for (size_t k = 0; k < B; ++k) {
      const Datum& d = batch[b0 + k];
      for (size_t t = 0; t < d.tokens.size(); ++t) {
        const size_t i = k * size_t(T) + t;
        tok[i] = d.tokens[t];
        tgt[i] = d.target_tokens[t];
        mask[i] = d.weights[t];
        if (loss.fn != LossFn::kCrossEntropy) old[i] = d.logprobs_old[t], adv[i] = d.advantages[t];
        if (with_ref) ref[i] = d.logprobs_ref[t];
      }
    }
    MOBULA_RETURN_IF_ERROR(model.forward(tok, tgt, int(B), T, lp));
    // The loss functions normalise by this microbatch's tokens; gradients accumulate as SUMS over
    // tokens and optim_step divides by every token since the last step, so two forward_backward
    // calls equal one call on the concatenated batch.
    Result<LossStats> st = token_sum_weights(loss, lp, mask, old, adv, ref, w);
    if (!st) return st.status();
    const double n_mb = static_cast<double>(st->tokens);
    MOBULA_RETURN_IF_ERROR(model.backward(w));
    loss_sum += st->loss * n_mb;
    clip_sum += st->clip_fraction * n_mb;
    kl_sum += st->kl * n_mb;
    ratio_sum += st->mean_ratio * n_mb;
    for (size_t k = 0; k < B; ++k) {
      const size_t T0 = batch[b0 + k].tokens.size();
      out.logprobs[b0 + k].assign(lp.begin() + long(k * size_t(T)), lp.begin() + long(k * size_t(T) + T0));
    }
  }
  out.stats.tokens = static_cast<long>(n_total);
  if (n_total > 0) {
    out.stats.loss = loss_sum / n_total;
    out.stats.clip_fraction = clip_sum / n_total;
    out.stats.kl = kl_sum / n_total;
    out.stats.mean_ratio = ratio_sum / n_total;
  }
  *tokens = n_total;
  return out;
}

Result<std::vector<std::vector<float>>> forward_batch(Gpt<>& model, std::span<const Datum> batch) {
  const int Tmax = model.config().max_seq;
  std::vector<std::vector<float>> out(batch.size());
  const size_t mb = static_cast<size_t>(model.max_batch());
  for (size_t b0 = 0; b0 < batch.size(); b0 += mb) {
    const size_t B = std::min(mb, batch.size() - b0);
    size_t maxlen = 0;
    for (size_t k = 0; k < B; ++k) {
      const Datum& d = batch[b0 + k];
      MOBULA_RETURN_IF_ERROR(check_datum(d, b0 + k, {}, model.config(), false));
      maxlen = std::max(maxlen, d.tokens.size());
    }
    const int T = bucket_length(static_cast<int>(maxlen), Tmax);
    const size_t N = B * size_t(T);
    std::vector<int> tok(N, 0), tgt(N, -1);
    std::vector<float> lp(N);
    for (size_t k = 0; k < B; ++k) {
      const Datum& d = batch[b0 + k];
      std::copy(d.tokens.begin(), d.tokens.end(), tok.begin() + long(k * size_t(T)));
      std::copy(d.target_tokens.begin(), d.target_tokens.end(), tgt.begin() + long(k * size_t(T)));
    }
    MOBULA_RETURN_IF_ERROR(model.forward(tok, tgt, int(B), T, lp));
    for (size_t k = 0; k < B; ++k)
      out[b0 + k].assign(lp.begin() + long(k * size_t(T)),
                         lp.begin() + long(k * size_t(T) + batch[b0 + k].tokens.size()));
  }
  return out;
}

float step_token_mean(const AdamW<>::Buffer& params, const AdamW<>::Buffer& grads, AdamW<>& opt, double tokens) {
  const float scale = static_cast<float>(1.0 / tokens);
  float* g = grads.data();
  Kokkos::parallel_for(
      "scale_grads", Kokkos::RangePolicy<>(0, grads.extent(0)), KOKKOS_LAMBDA(long i) { g[i] *= scale; });
  return opt.step(params, grads);
}

float step_token_mean(Gpt<>& model, AdamW<>& opt, double tokens) {
  return step_token_mean(model.params, model.grads, opt, tokens);
}

}  // namespace mobula::rl
