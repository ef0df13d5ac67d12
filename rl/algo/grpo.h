// GRPO on the TrainingClient API: the algorithm as ordinary sequential code (the single-controller
// design); data movement is the API's business. Used by the local loop and, with the SPMD backend,
// by the trainer/rollout roles.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "rl/api/training_client.h"
#include "rl/model/tokenizer.h"
#include "rl/tasks/task.h"

namespace mobula::rl {

struct GrpoConfig {
  int prompts_per_step = 8;
  int group_size = 8;  // completions per prompt
  int max_new_tokens = 6;
  float temperature = 1.0f;
  bool divide_by_std = true;
  float clip_low = 0.2f, clip_high = 0.28f;
  float kl_coef = 0.0f;
  AdamParams adam;
  uint64_t seed = 0;  // prompt stream and sampling seeds derive from (seed, step)
};

// One completion with a learning signal (a non-zero advantage), as a rollout rank produces it and a
// trainer trains on it; (prompt, sample) place it in the step's global batch.
struct RolloutRecord {
  int32_t prompt = 0;        // index of its prompt in the step, 0 .. prompts_per_step-1
  int32_t sample = 0;        // index in the prompt's group, 0 .. group_size-1
  std::vector<int32_t> seq;  // prompt + completion
  int32_t first = 0;         // index in seq of the first completion token
  float advantage = 0;
  std::vector<float> logp_old;  // behaviour log-probs of the completion tokens
};

// What a batch of rollouts saw; sums, so the parts of several rollout ranks add up.
struct RolloutStats {
  double reward_sum = 0, reward_sq_sum = 0, correct = 0, samples = 0, completion_tokens = 0;
  double neg_logp_sum = 0;  // -log p of the sampled tokens under the model: sum / tokens estimates entropy
  double sample_seconds = 0, reward_seconds = 0;
  double version = 0;               // policy version the batch was sampled with
  void add(const RolloutStats& o);  // sums; the seconds and the version of the slowest / last part
};

struct Rollouts {
  std::vector<RolloutRecord> records;  // in (prompt, sample) order
  RolloutStats stats;
};

// Samples `prompts` (already encoded, the task's examples `ex`), G each; the caller picks the seeds.
using SampleGroupsFn =
    std::function<Result<std::vector<Sample>>(const std::vector<std::vector<int>>& prompts, const SamplingParams&)>;

// The prompts of `step` with the given global indices: task.example(seed, step * P + p).
Result<std::vector<TaskExample>> grpo_examples(const Task& task, uint64_t seed, int64_t step, int prompts_per_step,
                                               std::span<const int> prompt_ids);
// The sampling parameters of the config (stop at eos).
SamplingParams grpo_sampling(const GrpoConfig& cfg, const Tokenizer& tok);
// The seed of completion g of prompt p at `step`: a function of the global indices only, so a
// completion is the same whichever rollout rank samples it.
uint64_t grpo_sample_seed(uint64_t seed, int64_t step, int prompt, int g);

// One GRPO rollout over `prompt_ids` of `step`: sample G completions each, reward them with the
// task's verifier, group-normalise the advantages, keep the completions with a learning signal.
Result<Rollouts> grpo_rollouts(const SampleGroupsFn& sample, const Task& task, const Tokenizer& tok,
                               const GrpoConfig& cfg, int64_t step, std::span<const int> prompt_ids);

// The training datum of a record and the PPO-clip loss of the config.
Datum grpo_datum(const RolloutRecord& r);
LossConfig grpo_loss(const GrpoConfig& cfg);

struct GrpoStepStats {
  int step = 0;
  double reward_mean = 0, reward_std = 0;
  double accuracy = 0;  // fraction of completions with reward 1
  double loss = 0, clip_fraction = 0, kl = 0, grad_norm = 0;
  long completion_tokens = 0;
  double seconds_sample = 0, seconds_train = 0;
};

// One synchronous (on-policy) GRPO step: sample G completions for each of P prompts of the task
// stream at `step`, reward them, group-normalise advantages, one PPO-clip update.
Result<GrpoStepStats> grpo_step(TrainingClient& client, const Task& task, const Tokenizer& tok, const GrpoConfig& cfg,
                                int step);

// Greedy accuracy on the first n held-out examples.
Result<double> evaluate(TrainingClient& client, const Task& task, const Tokenizer& tok, int n, int max_new_tokens);

// Greedy accuracy of `params` on the first n held-out examples, sampled in chunks of the sampler's rows.
Result<double> evaluate_params(Sampler<>& sampler, const Kokkos::View<float*>& params, const Task& task,
                               const Tokenizer& tok, int n, int max_new_tokens);

// The text of a completion: its tokens up to (not including) a final eos, decoded.
std::string completion_text(const Tokenizer& tok, std::vector<int> ids);

// Supervised datum: prompt + answer + eos, training the answer and eos positions.
Result<Datum> sft_datum(const Tokenizer& tok, const TaskExample& ex);

}  // namespace mobula::rl
