// AdamW (decoupled weight decay) over a flat parameter buffer, global-norm gradient clipping, and
// a warmup + cosine learning-rate schedule. Moments live in two flat buffers (m, v) with the same
// layout as the parameters, so checkpoints and resharding treat them like the parameters.
//
// Contract: local, not thread-safe; step() reads grads and updates params, m, v in place.
// Deterministic for the same inputs on the same backend.
#pragma once

#include <Kokkos_Core.hpp>
#include <vector>

#include "rl/model/gpt.h"

namespace mobula::rl {

struct AdamWConfig {
  float lr = 1e-3f;  // peak learning rate
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // applied to tensors with decay = true (matrices and embeddings)
  float grad_clip = 1.0f;     // global L2 norm; <= 0 disables
  int warmup_steps = 0;       // linear warmup from 0
  int total_steps = 0;        // cosine decay to min_lr_ratio * lr at total_steps; 0 = constant
  float min_lr_ratio = 0.1f;
};

// Learning rate of `step` (0-based) under the schedule.
float lr_at(const AdamWConfig& c, int step);

template <class Exec = Kokkos::DefaultExecutionSpace>
class AdamW {
 public:
  using Mem = typename Exec::memory_space;
  using Buffer = Kokkos::View<float*, Mem>;

  AdamW(const AdamWConfig& cfg, const std::vector<TensorInfo>& tensors, size_t n);

  // One update with lr_at(cfg, steps_done()); returns the gradient norm before clipping.
  float step(Buffer params, Buffer grads);

  int steps_done() const { return t_; }
  void set_steps_done(int t) { t_ = t; }  // for resume
  const AdamWConfig& config() const { return cfg_; }
  void set_config(const AdamWConfig& c) { cfg_ = c; }
  Buffer m, v;  // first and second moments, (n)

 private:
  AdamWConfig cfg_;
  Kokkos::View<float*, Mem> decay_;  // (n) 1 where weight decay applies
  int t_ = 0;
};

extern template class AdamW<Kokkos::DefaultExecutionSpace>;

}  // namespace mobula::rl
