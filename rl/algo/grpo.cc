#include "rl/algo/grpo.h"

#include "core/runtime/time_format.h"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace mobula::rl {

namespace {}  // namespace

std::string completion_text(const Tokenizer& tok, std::vector<int> ids) {
  if (!ids.empty() && ids.back() == tok.eos()) ids.pop_back();
  return tok.decode(ids);
}

Result<Datum> sft_datum(const Tokenizer& tok, const TaskExample& ex) {
  auto p = tok.encode(ex.prompt);
  if (!p) return p.status();
  auto a = tok.encode(ex.answer);
  if (!a) return a.status();
  std::vector<int> seq = *p;
  seq.insert(seq.end(), a->begin(), a->end());
  seq.push_back(tok.eos());
  return completion_datum(seq, p->size());
}

void RolloutStats::add(const RolloutStats& o) {
  reward_sum += o.reward_sum;
  reward_sq_sum += o.reward_sq_sum;
  correct += o.correct;
  samples += o.samples;
  completion_tokens += o.completion_tokens;
  neg_logp_sum += o.neg_logp_sum;
  sample_seconds = std::max(sample_seconds, o.sample_seconds);
  reward_seconds = std::max(reward_seconds, o.reward_seconds);
  version = o.version;
}

Result<std::vector<TaskExample>> grpo_examples(const Task& task, uint64_t seed, int64_t step, int prompts_per_step,
                                               std::span<const int> prompt_ids) {
  std::vector<TaskExample> ex;
  for (int p : prompt_ids) {
    if (p < 0 || p >= prompts_per_step)
      return Status::invalid_argument("grpo: prompt " + std::to_string(p) + " is outside the step's " +
                                      std::to_string(prompts_per_step));
    ex.push_back(task.example(seed, uint64_t(step) * uint64_t(prompts_per_step) + uint64_t(p)));
  }
  return ex;
}

SamplingParams grpo_sampling(const GrpoConfig& cfg, const Tokenizer& tok) {
  SamplingParams sp;
  sp.temperature = cfg.temperature;
  sp.max_new_tokens = cfg.max_new_tokens;
  sp.stop_tokens = {tok.eos()};
  return sp;
}

uint64_t grpo_sample_seed(uint64_t seed, int64_t step, int prompt, int g) {
  return seed * 0x9E3779B97F4A7C15ull + uint64_t(step) * 1000003ull + uint64_t(prompt) * 1009ull + uint64_t(g);
}

Result<Rollouts> grpo_rollouts(const SampleGroupsFn& sample, const Task& task, const Tokenizer& tok,
                               const GrpoConfig& cfg, int64_t step, std::span<const int> prompt_ids) {
  const int G = cfg.group_size;
  auto ex = grpo_examples(task, cfg.seed, step, cfg.prompts_per_step, prompt_ids);
  if (!ex) return ex.status();
  std::vector<std::vector<int>> prompts;
  for (const auto& e : *ex) {
    auto ids = tok.encode(e.prompt);
    if (!ids) return ids.status();
    prompts.push_back(*ids);
  }
  const SamplingParams sp = grpo_sampling(cfg, tok);
  Rollouts out;
  const double ts0 = monotonic_seconds();
  auto samples = sample(prompts, sp);
  if (!samples) return samples.status();
  if (samples->size() != prompts.size() * size_t(G))
    return Status::external("grpo: the sampler returned " + std::to_string(samples->size()) + " completions, not " +
                            std::to_string(prompts.size() * size_t(G)));
  out.stats.sample_seconds = monotonic_seconds() - ts0;
  const double tr0 = monotonic_seconds();
  std::vector<float> rewards;
  for (size_t i = 0; i < prompts.size(); ++i)
    for (int g = 0; g < G; ++g)
      rewards.push_back(task.reward((*ex)[i], completion_text(tok, (*samples)[i * size_t(G) + size_t(g)].tokens)));
  auto adv = group_advantages(rewards, G, cfg.divide_by_std);
  if (!adv) return adv.status();
  out.stats.reward_seconds = monotonic_seconds() - tr0;
  RolloutStats& st = out.stats;
  for (size_t i = 0; i < prompts.size(); ++i)
    for (int g = 0; g < G; ++g) {
      const size_t j = i * size_t(G) + size_t(g);
      const Sample& s = (*samples)[j];
      st.reward_sum += rewards[j];
      st.reward_sq_sum += double(rewards[j]) * rewards[j];
      st.correct += rewards[j] >= 1.0f ? 1 : 0;
      st.samples += 1;
      st.completion_tokens += double(s.tokens.size());
      for (float lp : s.model_logprobs) st.neg_logp_sum -= lp;
      if (s.tokens.empty() || (*adv)[j] == 0.f) continue;  // no learning signal
      RolloutRecord r;
      r.prompt = prompt_ids[i];
      r.sample = g;
      r.seq.assign(prompts[i].begin(), prompts[i].end());
      r.seq.insert(r.seq.end(), s.tokens.begin(), s.tokens.end());
      r.first = static_cast<int32_t>(prompts[i].size());
      r.advantage = (*adv)[j];
      // The behaviour policy is what sampled them (temperature applies, so the sampling log-probs).
      r.logp_old = sp.temperature == 1.0f ? s.model_logprobs : s.logprobs;
      out.records.push_back(std::move(r));
    }
  return out;
}

Datum grpo_datum(const RolloutRecord& r) {
  return completion_datum(r.seq, static_cast<size_t>(r.first), r.logp_old, r.advantage);
}

LossConfig grpo_loss(const GrpoConfig& cfg) {
  LossConfig loss;
  loss.fn = LossFn::kPpo;
  loss.clip_low = cfg.clip_low;
  loss.clip_high = cfg.clip_high;
  loss.kl_coef = cfg.kl_coef;
  return loss;
}

Result<GrpoStepStats> grpo_step(TrainingClient& client, const Task& task, const Tokenizer& tok, const GrpoConfig& cfg,
                                int step) {
  GrpoStepStats st;
  st.step = step;
  std::vector<int> all(size_t(cfg.prompts_per_step));
  for (int p = 0; p < cfg.prompts_per_step; ++p) all[size_t(p)] = p;
  auto ro = grpo_rollouts(
      [&](const std::vector<std::vector<int>>& prompts, const SamplingParams& sp) {
        return client.sample(prompts, cfg.group_size, sp, cfg.seed * 1000003ull + uint64_t(step)).get();
      },
      task, tok, cfg, step, all);
  if (!ro) return ro.status();
  const RolloutStats& rs = ro->stats;
  st.seconds_sample = rs.sample_seconds;
  st.reward_mean = rs.reward_sum / std::max(1.0, rs.samples);
  st.reward_std =
      std::sqrt(std::max(0.0, rs.reward_sq_sum / std::max(1.0, rs.samples) - st.reward_mean * st.reward_mean));
  st.accuracy = rs.correct / std::max(1.0, rs.samples);
  st.completion_tokens = static_cast<long>(rs.completion_tokens);
  if (ro->records.empty()) return st;  // every group had equal rewards: nothing to learn from
  std::vector<Datum> batch;
  for (const auto& r : ro->records) batch.push_back(grpo_datum(r));
  const double t0 = monotonic_seconds();
  auto fb = client.forward_backward(std::move(batch), grpo_loss(cfg)).get();
  if (!fb) return fb.status();
  auto os = client.optim_step(cfg.adam).get();
  if (!os) return os.status();
  st.seconds_train = monotonic_seconds() - t0;
  st.loss = fb->stats.loss;
  st.clip_fraction = fb->stats.clip_fraction;
  st.kl = fb->stats.kl;
  st.grad_norm = os->grad_norm;
  return st;
}

Result<double> evaluate(TrainingClient& client, const Task& task, const Tokenizer& tok, int n, int max_new_tokens) {
  std::vector<TaskExample> ex;
  std::vector<std::vector<int>> prompts;
  for (int i = 0; i < n; ++i) {
    ex.push_back(task.eval_example(uint64_t(i)));
    auto ids = tok.encode(ex.back().prompt);
    if (!ids) return ids.status();
    prompts.push_back(*ids);
  }
  SamplingParams sp;
  sp.temperature = 0;
  sp.max_new_tokens = max_new_tokens;
  sp.stop_tokens = {tok.eos()};
  auto out = client.sample(prompts, 1, sp, 0).get();
  if (!out) return out.status();
  double correct = 0;
  for (int i = 0; i < n; ++i) correct += task.reward(ex[size_t(i)], completion_text(tok, (*out)[size_t(i)].tokens));
  return correct / n;
}

Result<double> evaluate_params(Sampler<>& sampler, const Kokkos::View<float*>& params, const Task& task,
                               const Tokenizer& tok, int n, int max_new_tokens) {
  SamplingParams sp;
  sp.temperature = 0;
  sp.max_new_tokens = max_new_tokens;
  sp.stop_tokens = {tok.eos()};
  const int rows = sampler.max_rows();
  double correct = 0;
  for (int i0 = 0; i0 < n; i0 += rows) {
    const int m = std::min(rows, n - i0);
    std::vector<TaskExample> ex;
    std::vector<std::vector<int>> prompts;
    for (int i = 0; i < m; ++i) {
      ex.push_back(task.eval_example(uint64_t(i0 + i)));
      auto ids = tok.encode(ex.back().prompt);
      if (!ids) return ids.status();
      prompts.push_back(*ids);
    }
    auto out = sampler.sample(params, prompts, std::vector<uint64_t>(size_t(m), 0), sp);
    if (!out) return out.status();
    for (int i = 0; i < m; ++i) correct += task.reward(ex[size_t(i)], completion_text(tok, (*out)[size_t(i)].tokens));
  }
  return correct / n;
}

}  // namespace mobula::rl
