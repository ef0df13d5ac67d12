// Verifiable tasks for RL: deterministic prompt streams and exact rewards.
//
// Contract: example(seed, i) is a pure function of (seed, i), so a restarted job re-creates exactly
// the same prompt stream from its data cursor. Held-out eval examples are disjoint from every
// training stream by construction (a hash of the problem decides its split).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "core/runtime/status.h"

namespace mobula::rl {

struct TaskExample {
  std::string prompt;  // e.g. "37+45="
  std::string answer;  // e.g. "82"
};

class Task {
 public:
  virtual ~Task() = default;
  virtual std::string name() const = 0;
  // Every character prompts and answers use (for the tokenizer).
  virtual std::string alphabet() const = 0;
  virtual TaskExample example(uint64_t seed, uint64_t index) const = 0;
  virtual TaskExample eval_example(uint64_t index) const = 0;
  // A plausible wrong answer (addition: off by one; reverse: first two digits swapped).
  virtual std::string wrong_answer(const TaskExample& ex) const = 0;
  // Warm-start data from a noisy labeler: example(seed, index) whose answer is replaced by
  // wrong_answer() for `noise_percent` % of the indices (decided by a hash, deterministic). RL with
  // the exact verifier then has something to fix beyond what supervised data taught.
  TaskExample warm_start_example(uint64_t seed, uint64_t index, int noise_percent) const;
  // 1 for an exactly correct completion (the text before the stop token), else 0.
  virtual float reward(const TaskExample& ex, std::string_view completion) const {
    return completion == ex.answer ? 1.0f : 0.0f;
  }
};

// "addition" (a+b= with `digits`-digit operands) or "reverse" (digit string of `digits` chars).
Result<std::unique_ptr<Task>> make_task(std::string_view name, int digits);

}  // namespace mobula::rl
