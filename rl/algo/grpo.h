// GRPO on the TrainingClient API: the algorithm as ordinary sequential code (the single-controller
// design); data movement is the API's business. Used by the local loop and, with the SPMD backend,
// by the trainer/rollout roles.
#pragma once

#include <cstdint>
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
