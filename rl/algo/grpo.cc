#include "rl/algo/grpo.h"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace mobula::rl {

namespace {
double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

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

Result<GrpoStepStats> grpo_step(TrainingClient& client, const Task& task, const Tokenizer& tok, const GrpoConfig& cfg,
                                int step) {
  GrpoStepStats st;
  st.step = step;
  const int P = cfg.prompts_per_step, G = cfg.group_size;
  std::vector<TaskExample> ex;
  std::vector<std::vector<int>> prompts;
  for (int p = 0; p < P; ++p) {
    ex.push_back(task.example(cfg.seed, uint64_t(step) * uint64_t(P) + uint64_t(p)));
    auto ids = tok.encode(ex.back().prompt);
    if (!ids) return ids.status();
    prompts.push_back(*ids);
  }
  SamplingParams sp;
  sp.temperature = cfg.temperature;
  sp.max_new_tokens = cfg.max_new_tokens;
  sp.stop_tokens = {tok.eos()};
  double t0 = now();
  auto samples = client.sample(prompts, G, sp, cfg.seed * 1000003ull + uint64_t(step)).get();
  if (!samples) return samples.status();
  st.seconds_sample = now() - t0;
  std::vector<float> rewards(size_t(P) * G);
  for (int p = 0; p < P; ++p)
    for (int g = 0; g < G; ++g) {
      const Sample& s = (*samples)[size_t(p * G + g)];
      rewards[size_t(p * G + g)] = task.reward(ex[size_t(p)], completion_text(tok, s.tokens));
    }
  auto adv = group_advantages(rewards, G, cfg.divide_by_std);
  if (!adv) return adv.status();
  double sum = 0, sq = 0;
  for (float r : rewards) sum += r, sq += double(r) * r;
  st.reward_mean = sum / rewards.size();
  st.reward_std = std::sqrt(std::max(0.0, sq / rewards.size() - st.reward_mean * st.reward_mean));
  st.accuracy = st.reward_mean;  // rewards are exact 0/1
  // One datum per completion: prompt + completion; trained positions are the completion's tokens;
  // the behaviour policy is what sampled them (temperature applies, so the sampling log-probs).
  std::vector<Datum> batch;
  for (int p = 0; p < P; ++p)
    for (int g = 0; g < G; ++g) {
      const Sample& s = (*samples)[size_t(p * G + g)];
      if (s.tokens.empty()) continue;
      std::vector<int> seq = prompts[size_t(p)];
      seq.insert(seq.end(), s.tokens.begin(), s.tokens.end());
      batch.push_back(completion_datum(seq, prompts[size_t(p)].size(),
                                       cfg.temperature == 1.0f ? s.model_logprobs : s.logprobs,
                                       (*adv)[size_t(p * G + g)]));
      st.completion_tokens += static_cast<long>(s.tokens.size());
    }
  LossConfig loss;
  loss.fn = LossFn::kPpo;
  loss.clip_low = cfg.clip_low;
  loss.clip_high = cfg.clip_high;
  loss.kl_coef = cfg.kl_coef;
  t0 = now();
  auto fb = client.forward_backward(std::move(batch), loss).get();
  if (!fb) return fb.status();
  auto os = client.optim_step(cfg.adam).get();
  if (!os) return os.status();
  st.seconds_train = now() - t0;
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
