// JSON <-> the training API's types for the service (docs/serve.md, "Requests"). Every parse
// returns a one-line error naming the field ("data[3].weights: ...") for a 400 reply.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "rl/algo/batch.h"
#include "rl/model/lora.h"
#include "rl/model/sampler.h"
#include "rl/optim/adamw.h"

namespace mobula::serve {

// body.data: [{"tokens", "target_tokens", "weights", "logprobs_old"?, "advantages"?}], at most
// max_rows, each checked against the model (length, vocabulary) and the loss's needs.
Result<std::vector<rl::Datum>> parse_data(const nlohmann::json& body, const rl::LossConfig& loss,
                                          const rl::GptConfig& model, int max_rows, bool backward);
// body.loss: {"fn": "cross_entropy" | "importance_sampling" | "ppo", "clip_low", "clip_high",
// "kl_coef"}; absent = cross-entropy.
Result<rl::LossConfig> parse_loss(const nlohmann::json& body);
// body: {"lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip"} (Tinker's AdamParams).
Result<rl::AdamWConfig> parse_adam(const nlohmann::json& body);

struct SampleRequest {
  std::vector<std::vector<int>> prompts;
  int num_samples = 1;
  rl::SamplingParams params;
  uint64_t seed = 0;
};
// body: {"prompts": [[ids]], "num_samples", "max_tokens", "temperature", "top_k", "top_p",
// "stop": [ids], "seed"}; prompts x num_samples <= max_rows, prompt + max_tokens <= max_seq.
Result<SampleRequest> parse_sample(const nlohmann::json& body, const rl::GptConfig& model, int max_rows);
// create_adapter's body: {"rank", "alpha", "seed"}, the service's defaults where absent.
Result<rl::LoraConfig> parse_lora(const nlohmann::json& body, int default_rank, double default_alpha);
// body.name: 1..64 characters of [A-Za-z0-9_.-], not starting with '.'.
Result<std::string> parse_name(const nlohmann::json& body);

nlohmann::json to_json(const rl::ForwardBackwardOutput& out, bool with_stats);
nlohmann::json to_json(const std::vector<rl::Sample>& samples);

}  // namespace mobula::serve
