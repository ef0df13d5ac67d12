// LoRA adapters (Hu et al. 2021) on a shared, frozen Gpt base: every attention and MLP projection
// W (OC, IC) of every layer gets a low-rank delta, y = x W^T + b + (alpha / r) (x A^T) B^T with
// A (r, IC) and B (OC, r). The four projections of a layer are qkv (3C x C), attproj (C x C),
// fc (H x C) and fcproj (C x H).
//
// Memory: an adapter's parameters (and gradients) are ONE flat buffer each with the tensor table
// below as named views (the llm.c layout of the base model), so AdamW, safetensors files and the
// service's checkpoints treat an adapter like a small model.
//
// Multi-LoRA batching: Gpt::set_lora() names, for row segments of the next forward/backward
// batch, which adapter each segment uses. The base projections run once over the whole batch
// (one GEMM per projection); every segment adds its own low-rank delta. Rows outside every
// segment see the base model alone.
//
// Determinism: the delta kernels reduce in a fixed order per position (forward, input gradient)
// and per adapter parameter over the segment's positions in order (A and B gradients), so an
// adapter's outputs and gradients are the same bits whatever other segments share the batch, as
// long as the segment's own rows are the same (tested against running each adapter alone).
//
// Contract: local, not thread-safe (like Gpt); an adapter must outlive the forward/backward pair
// that uses it.
#pragma once

#include <Kokkos_Core.hpp>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "rl/model/gpt.h"

namespace mobula::rl {

struct LoraConfig {
  int rank = 8;         // r, 1..kMaxLoraRank
  float alpha = 16.0f;  // the delta is scaled by alpha / r
  uint64_t seed = 0;    // initialisation of A (B starts at zero: a new adapter is the base model)
  float scale() const { return alpha / static_cast<float>(rank); }
  Status validate() const;
};

inline constexpr int kMaxLoraRank = 64;

// The four adapted projections of a layer, in buffer order.
enum class LoraTarget { kQkv = 0, kAttProj = 1, kFc = 2, kFcProj = 3 };
inline constexpr int kLoraTargets = 4;

// Tensor table of an adapter for a base config: "h.<l>.<target>.lora_A" (r, IC) and
// "h.<l>.<target>.lora_B" (OC, r), target in {qkv, attproj, fc, fcproj}; A decays (AdamW weight
// decay), B too (both are matrices).
std::vector<TensorInfo> lora_tensors(const GptConfig& base, int rank);

template <class Exec = Kokkos::DefaultExecutionSpace>
class LoraAdapter {
 public:
  using Mem = typename Exec::memory_space;
  using Buffer = Kokkos::View<float*, Mem>;

  static Result<LoraAdapter> create(const GptConfig& base, const LoraConfig& cfg);

  const LoraConfig& config() const { return cfg_; }
  const GptConfig& base() const { return base_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  size_t num_params() const { return params.extent(0); }

  Buffer params;  // (num_params)
  Buffer grads;   // (num_params)

  // A ~ U(-1/sqrt(IC), 1/sqrt(IC)) (PEFT's kaiming-uniform bound) from cfg.seed, B = 0.
  void init();
  void zero_grad() { Kokkos::deep_copy(grads, 0.0f); }

  // Offsets (floats) of target t's A and B in layer l.
  size_t a_offset(int l, LoraTarget t) const { return offsets_[size_t(l) * kLoraTargets + size_t(t)].first; }
  size_t b_offset(int l, LoraTarget t) const { return offsets_[size_t(l) * kLoraTargets + size_t(t)].second; }

  // W' = W + scale * B A for every adapted projection of `base_params` (a copy of the base
  // model's flat buffer, on the host): one model with the adapter folded in (save_weights_for_sampler).
  void merge_into(std::span<float> base_params) const;

 private:
  LoraAdapter() = default;
  GptConfig base_;
  LoraConfig cfg_;
  std::vector<TensorInfo> tensors_;
  std::vector<std::pair<size_t, size_t>> offsets_;  // (layer, target) -> (A, B)
};

extern template class LoraAdapter<Kokkos::DefaultExecutionSpace>;

}  // namespace mobula::rl
