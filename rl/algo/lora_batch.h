// Multi-LoRA forward/backward: the requests of several adapters in one pass over a frozen base
// model (rl/model/lora.h). The multi-tenant service (serve/) batches its clients' forward_backward
// and forward calls through this.
//
// Chunks: every request's data are cut into chunks of `chunk_rows` rows, in order; a pass packs
// whole chunks of several requests (at most model.max_batch() rows) and runs ONE forward and ONE
// backward over them, each chunk with its adapter. Losses, statistics and gradients are computed per
// chunk and accumulated per request in chunk order, so a request's results are the same bits
// whether it ran alone or beside other adapters' requests (tested), which the service's replay
// after a crash relies on.
#pragma once

#include <span>
#include <vector>

#include "rl/algo/batch.h"
#include "rl/model/lora.h"

namespace mobula::rl {

struct LoraWork {
  LoraAdapter<>* adapter = nullptr;  // not null
  std::span<const Datum> data;
  LossConfig loss;
  bool backward = true;  // false: forward only (log-probs, no gradients)
};

struct LoraWorkResult {
  Result<ForwardBackwardOutput> out = Status::invalid_argument("not run");
  double tokens = 0;  // trained tokens (the gradient token sum's count)
};

// Runs every work item; gradients (the loss's token SUM, as forward_backward_batch) accumulate into
// each adapter's grads. A work item whose data are malformed gets its error and runs nothing; the
// others run. chunk_rows in 1..model.max_batch(). `model` should be frozen (set_frozen_base).
std::vector<LoraWorkResult> forward_backward_lora(Gpt<>& model, std::span<const LoraWork> work, int chunk_rows);

// AdamW step of one adapter on its accumulated gradients (divided by `tokens`), like
// step_token_mean; returns the gradient norm before clipping. Zeroes the gradients afterwards.
float lora_step(LoraAdapter<>& adapter, AdamW<>& opt, double tokens);

}  // namespace mobula::rl
