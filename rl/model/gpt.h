// A GPT-style decoder-only transformer (pre-LayerNorm blocks, causal multi-head attention, GELU
// MLP, learned positions, output head tied to the token embedding), fp32.
//
// Memory (llm.c layout): parameters, gradients (and the optimizer's moments, rl/optim) each live
// in ONE flat buffer with the tensor table below as named views, so checkpointing, all-reduce and
// weight sync move one buffer. Activations are allocated once for (max_batch, max_seq): any
// (B <= max_batch, T <= max_seq) reuses them (shape bucketing pads T up to bucket_length()).
//
// Contract
//  * Local to the calling rank; not thread-safe (one model per thread).
//  * forward() then backward(): backward differentiates sum_{b,t} w[b,t] * logp[b,t] of the last
//    forward and ACCUMULATES into grads (microbatching = several forward/backward pairs, then the
//    optimizer step); zero_grad() clears. Cross-entropy, importance sampling and PPO-clip are all a
//    choice of w (rl/algo).
//  * Host spans in, host spans out; internally Views in Exec's memory space.
#pragma once

#include <Kokkos_Core.hpp>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "rl/model/config.h"

namespace mobula::rl {

struct TensorInfo {
  std::string name;   // "wte", "h.0.qkvw", ...
  size_t offset = 0;  // in floats, into the flat buffer
  std::vector<int> shape;
  bool decay = false;  // AdamW weight decay applies (matrices, not biases/LayerNorm)
  size_t size() const {
    size_t n = 1;
    for (int d : shape) n *= static_cast<size_t>(d);
    return n;
  }
};

// The parameter table of a config (names, shapes, offsets); same order as the flat buffer.
std::vector<TensorInfo> gpt_tensors(const GptConfig& cfg);

// Where every parameter tensor starts in the flat buffer (in floats), read off the table once:
// per-layer tensors give layer 0's offset, layer l's is that + l * layer_stride. Used by the
// training model and the sampler alike, so neither looks tensors up by name on a hot path.
struct GptOffsets {
  size_t wte, wpe, ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb, lnfw, lnfb;
  size_t layer_stride;
  size_t count;  // floats in the whole buffer
};
GptOffsets gpt_offsets(const GptConfig& cfg);

// Smallest bucket >= t from {8, 16, 32, 64, 128, ...} capped at max_seq.
int bucket_length(int t, int max_seq);

template <class Exec>
class LoraAdapter;  // rl/model/lora.h

// Rows [row0, row0 + rows) of the next batch use `adapter` (null: the base model alone).
template <class Exec>
struct LoraSegment {
  int row0 = 0;
  int rows = 0;
  LoraAdapter<Exec>* adapter = nullptr;
};

template <class Exec = Kokkos::DefaultExecutionSpace>
class Gpt {
 public:
  using Mem = typename Exec::memory_space;
  using Buffer = Kokkos::View<float*, Mem>;

  // recompute: activation recomputation (gradient checkpointing): keep only each layer's input and
  // recompute its internals during backward. Less memory, bitwise the same results.
  static Result<Gpt> create(const GptConfig& cfg, int max_batch, bool recompute = false);
  bool recompute() const { return recompute_; }
  size_t activation_floats() const { return acts_.extent(0); }

  const GptConfig& config() const { return cfg_; }
  int max_batch() const { return max_batch_; }
  size_t num_params() const { return num_params_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* tensor(const std::string& name) const;

  Buffer params;  // (num_params)
  Buffer grads;   // (num_params)

  // GPT-2 initialisation from `seed` (deterministic, independent of the backend).
  void init(uint64_t seed);
  void zero_grad();

  // tokens, targets: (B,T) row-major; targets[b,t] < 0 masks position t (no loss, logp 0).
  // logp (B,T) and entropy (B,T, optional) are written on the host.
  Status forward(std::span<const int> tokens, std::span<const int> targets, int B, int T, std::span<float> logp,
                 std::span<float> entropy = {});
  // Accumulates d(sum w*logp)/dparams of the last forward into grads. w: (B,T).
  Status backward(std::span<const float> w);

  // Multi-LoRA (rl/model/lora.h): the row segments of the next forward/backward pairs and their
  // adapters, kept until the next call (copied; the adapters must outlive their use); empty: the
  // base model alone. Fails when an adapter was made for another base config or segments overlap.
  // backward() accumulates every segment's adapter gradients into that adapter's grads.
  Status set_lora(std::span<const LoraSegment<Exec>> segments);
  // Frozen base (LoRA fine-tuning): backward() computes no base gradient (input gradients still
  // flow to the adapters), and the base's matmuls run row-invariant kernels
  // (rl/model/decode_kernels.h) on weights packed here, so that a row's outputs and gradients do
  // not depend on the other rows of the batch (a BLAS GEMM's do: its blocking follows the row
  // count). Call it once the weights are final; changing params afterwards needs another call.
  void set_frozen_base(bool frozen);
  bool frozen_base() const { return frozen_; }

  // Last forward's logits (B,T,V), copied to the host (tests, golden checks).
  std::vector<float> logits_host() const;

 private:
  Gpt() = default;
  struct P;  // parameter pointers
  P param_ptrs(float* base) const;
  void layer_forward(int l, int B, int T);
  // Adds the LoRA deltas of every segment to a projection's output / its gradients (no-ops
  // without segments).
  void lora_forward(int l, int target, float* out, const float* inp, int IC, int OC, int T);
  void lora_backward(int l, int target, float* dinp, const float* dout, const float* inp, int IC, int OC, int T);
  // Projection `target` (0..3: qkv, attproj, fc, fcproj; 4: the output head) of layer l: BLAS, or
  // the packed row-invariant kernels when frozen; then the LoRA deltas.
  void proj_forward(int l, int target, float* out, const float* inp, const float* W, const float* bias, int IC, int OC,
                    int B, int T);
  void proj_backward(int l, int target, float* dinp, float* dW, float* db, const float* dout, const float* inp,
                     const float* W, int IC, int OC, int B, int T);
  // Row-invariant matmul weights: W (out, in) packed in panels (out % 16 == 0) or copied.
  struct RowMat {
    Buffer w;
    int out = 0, in = 0;
    bool panels = false;
  };
  std::vector<RowMat> fwd_, bwd_;                 // per (layer, target) and the head: W and W^T
  size_t rowmat_index(int l, int target) const {  // the head (target 4) is last
    return target == 4 ? fwd_.size() - 1 : size_t(l) * 4 + size_t(target);
  }
  RowMat pack_rowmat(const float* W, int OC, int IC, bool transpose);
  void rowmat(const RowMat& m, float* out, const float* inp, const float* bias, long N);

  GptConfig cfg_;
  int max_batch_ = 0;
  bool recompute_ = false;
  size_t num_params_ = 0;
  std::vector<TensorInfo> tensors_;
  GptOffsets off_{};
  Buffer acts_;     // activations, sized for (max_batch, max_seq)
  Buffer scratch_;  // attention scratch and activation gradients
  Kokkos::View<int*, Mem> tokens_, targets_;
  Kokkos::View<float*, Mem> wvec_;
  int B_ = 0, T_ = 0;  // shape of the last forward; 0 = none
  bool frozen_ = false;
  std::vector<LoraSegment<Exec>> lora_;
  Buffer lora_scratch_;  // (2, max_batch * max_seq, max rank): tmp and dtmp of lora_backward
};

extern template class Gpt<Kokkos::DefaultExecutionSpace>;

}  // namespace mobula::rl
