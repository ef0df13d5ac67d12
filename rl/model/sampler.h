// Batched autoregressive generation with a KV cache.
//
//  * Per-sequence RNG streams: the random number used for a sequence's i-th new token is a hash of
//    (its seed, i) — a sequence's tokens depend only on its seed, the weights and its prompt, not
//    on which other sequences share the batch.
//  * Prefix sharing: sample_groups(prompts, G) prefills each distinct prompt once, then copies its
//    KV entries to the G rows that continue it (a GRPO group).
//  * temperature (0 = greedy), top-k (0 = off), top-p (1 = off), max_new_tokens, stop tokens.
//  * Returns the new tokens with their log-probabilities under the sampling distribution (after
//    temperature/top-k/top-p) and under the model itself (temperature 1, untruncated).
//
// Contract: local, not thread-safe. Rows that finish (stop token, max_new_tokens, or the cache
// capacity max_len) leave the batch; finished_by_length says which ended without a stop token.
#pragma once

#include <Kokkos_Core.hpp>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "rl/model/config.h"
#include "rl/model/gpt.h"

namespace mobula::rl {

namespace kernels {
struct PrefetchStream;
}

struct SamplingParams {
  float temperature = 1.0f;
  int top_k = 0;
  float top_p = 1.0f;
  int max_new_tokens = 32;
  std::vector<int> stop_tokens;
};

struct Sample {
  std::vector<int> tokens;            // new tokens (the stop token included when hit)
  std::vector<float> logprobs;        // under the sampling distribution
  std::vector<float> model_logprobs;  // under the model at temperature 1
  bool finished_by_length = false;
};

// One request of Sampler::sample_many: `group` completions of each prompt (row p * group + g),
// seeds[i] driving row i, its own sampling params, and its LoRA adapter (rl/model/lora.h; null:
// the base alone), which must outlive the call.
template <class Exec = Kokkos::DefaultExecutionSpace>
struct SampleBatch {
  std::vector<std::vector<int>> prompts;
  int group = 1;
  std::vector<uint64_t> seeds;
  SamplingParams params;
  LoraAdapter<Exec>* adapter = nullptr;
};

template <class Exec = Kokkos::DefaultExecutionSpace>
class Sampler {
 public:
  using Mem = typename Exec::memory_space;
  using Buffer = Kokkos::View<float*, Mem>;

  // max_rows: most sequences in flight; max_len: prompt + new tokens capacity (<= cfg.max_seq).
  static Result<Sampler> create(const GptConfig& cfg, int max_rows, int max_len);

  // One row per prompt; seeds[i] drives row i.
  Result<std::vector<Sample>> sample(const Buffer& params, const std::vector<std::vector<int>>& prompts,
                                     const std::vector<uint64_t>& seeds, const SamplingParams& sp);
  // `group` rows per prompt (row p*group + g), the prompt's KV computed once; seeds: prompts*group.
  Result<std::vector<Sample>> sample_groups(const Buffer& params, const std::vector<std::vector<int>>& prompts,
                                            int group, const std::vector<uint64_t>& seeds, const SamplingParams& sp);

  // Several requests in one batch (multi-LoRA serving): their rows decode side by side, every
  // projection adding each row's own adapter delta to the shared base matmul. A row's tokens
  // depend only on its prompt, seed, params and weights (base + its adapter), not on the other
  // requests (tested). The rows of all requests together <= max_rows.
  Result<std::vector<std::vector<Sample>>> sample_many(const Buffer& params, std::span<const SampleBatch<Exec>> reqs);

  // Host backends: the decode matmuls prefetch their next weights and the K and V rows that the next
  // attention reads (on by default; hints, the results are the same either way). Off: benchmarks.
  void set_prefetch(bool on) { prefetch_ = on; }
  // Frozen weights (a LoRA service's base): the panels are packed once per parameter buffer and
  // reused while calls pass the same buffer, instead of repacked at every call. The caller must not
  // change that buffer's contents while this is on.
  void set_fixed_weights(bool on) {
    fixed_weights_ = on;
    packed_from_ = nullptr;
  }

  int max_rows() const { return max_rows_; }
  int max_len() const { return max_len_; }
  // Number of decode steps (row-steps) computed by the last call, for tests of prefix sharing.
  long last_row_steps() const { return row_steps_; }
  // Where the last call's time went: `total_s` in all, of which `pick_s` on the host choosing the
  // `picked` tokens from their logits (softmax, top-k/top-p, log-probs); the rest is the model's
  // steps. For benchmarks: the host side should stay a few us a token (it once took 27, docs/perf.md).
  struct Timing {
    double total_s = 0, pick_s = 0;
    long picked = 0;
  };
  const Timing& last_timing() const { return timing_; }

 private:
  Sampler() = default;
  // One token for each of R rows: input tok[r] at position pos[r], KV cache slot slot[r]; logits
  // (R,V) land in logits_h_. Without `logits` (prefill), only the K and V entries are computed: the
  // last layer stops after storing them.
  void step(const Buffer& params, int R, bool logits = true);
  // Adds the LoRA deltas of the step's rows (runs of equal row_lora_) to projection `target` of
  // layer l.
  void lora_rows(int l, int target, float* out, const float* inp, int IC, int OC, int R);
  std::vector<LoraAdapter<Exec>*> row_lora_;  // (max_rows) the adapter of each row of a step
  // Copies prompt k's prefix KV into the other rows of its group; prompt(k) = (slot, group, length - 1).
  template <class F>
  void share_prefixes(size_t prompts, F&& prompt);

  GptConfig cfg_;
  int max_rows_ = 0, max_len_ = 0;
  Buffer kcache_, vcache_;  // (L, max_rows, NH, max_len, hs)
  Buffer work_;             // per-step activations
  Kokkos::View<int*, Mem> tok_, pos_, slot_;
  typename Kokkos::View<int*, Mem>::HostMirror tok_h_, pos_h_, slot_h_;
  Buffer logits_;
  typename Buffer::HostMirror logits_h_;
  // Host backends: the layers' weight matrices packed into panels (kernels::pack_panels) at the
  // offsets they have in the parameter buffer, repacked at every sample call (the weights change
  // between calls); decode matmuls then skip BLAS's per-call packing. The output head (wte) too when
  // vocab % 16 == 0 (head_panels_). Empty: kernels::matmul_forward_rows on the host (odd sizes), BLAS
  // on a GPU. Either host path gives a row the same result whatever rows share its batch.
  Buffer panels_;
  bool head_panels_ = false;
  void pack(const Buffer& params);
  // The next attention's K/V rows (layer l + 1, or layer 0 of the next step) for the R rows in flight
  // at step(): started on kv_pf_ before the matmuls that precede that attention.
  void plan_kv_prefetch(int l, int R);
  bool prefetch_ = true;
  bool fixed_weights_ = false;
  const float* packed_from_ = nullptr;  // with fixed_weights_: the buffer panels_ hold
  std::shared_ptr<kernels::PrefetchStream> kv_pf_;
  long row_steps_ = 0;
  Timing timing_;
  GptOffsets off_{};
};

extern template class Sampler<Kokkos::DefaultExecutionSpace>;

// Picks a token from logits (V) with the sampling params and a uniform u in [0,1); returns it and
// its log-probability under the sampling distribution. Exposed for tests.
std::pair<int, float> pick_token(const float* logits, int V, const SamplingParams& sp, double u);
// Uniform [0,1) for (seed, index): splitmix64 of the pair.
double stream_uniform(uint64_t seed, uint64_t index);

}  // namespace mobula::rl
