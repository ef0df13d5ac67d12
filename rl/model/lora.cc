#include "rl/model/lora.h"

#include <cmath>

namespace mobula::rl {

namespace {

const char* const kTargetNames[kLoraTargets] = {"qkv", "attproj", "fc", "fcproj"};

// (out, in) features of target t.
std::pair<int, int> target_shape(const GptConfig& c, int t) {
  const int C = c.d_model, H = c.hidden();
  switch (t) {
    case 0:
      return {3 * C, C};
    case 1:
      return {C, C};
    case 2:
      return {H, C};
    default:
      return {C, H};
  }
}

// splitmix64: the same uniform stream on every platform.
struct Uniform {
  uint64_t state;
  double operator()() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (static_cast<double>(z >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  }
};

}  // namespace

Status LoraConfig::validate() const {
  if (rank < 1 || rank > kMaxLoraRank)
    return Status::invalid_argument("lora.rank: " + std::to_string(rank) + " outside 1.." +
                                    std::to_string(kMaxLoraRank));
  if (!(alpha > 0.0f) || !std::isfinite(alpha))
    return Status::invalid_argument("lora.alpha: must be a positive finite number");
  return Status::ok();
}

std::vector<TensorInfo> lora_tensors(const GptConfig& base, int rank) {
  std::vector<TensorInfo> t;
  size_t off = 0;
  for (int l = 0; l < base.layers; ++l) {
    for (int k = 0; k < kLoraTargets; ++k) {
      const auto [oc, ic] = target_shape(base, k);
      const std::string p = "h." + std::to_string(l) + "." + kTargetNames[k] + ".";
      TensorInfo a{p + "lora_A", off, {rank, ic}, true};
      off += a.size();
      TensorInfo b{p + "lora_B", off, {oc, rank}, true};
      off += b.size();
      t.push_back(std::move(a));
      t.push_back(std::move(b));
    }
  }
  return t;
}

template <class Exec>
Result<LoraAdapter<Exec>> LoraAdapter<Exec>::create(const GptConfig& base, const LoraConfig& cfg) {
  MOBULA_RETURN_IF_ERROR(base.validate());
  MOBULA_RETURN_IF_ERROR(cfg.validate());
  LoraAdapter a;
  a.base_ = base;
  a.cfg_ = cfg;
  a.tensors_ = lora_tensors(base, cfg.rank);
  for (size_t i = 0; i < a.tensors_.size(); i += 2)
    a.offsets_.emplace_back(a.tensors_[i].offset, a.tensors_[i + 1].offset);
  const size_t n = a.tensors_.back().offset + a.tensors_.back().size();
  a.params = Buffer("lora_params", n);
  a.grads = Buffer("lora_grads", n);
  a.init();
  return a;
}

template <class Exec>
void LoraAdapter<Exec>::init() {
  auto h = Kokkos::create_mirror_view(params);
  Uniform u{cfg_.seed * 0x2545F4914F6CDD1Dull + 7};
  for (const auto& t : tensors_) {
    const bool is_a = t.name.ends_with("lora_A");
    const double bound = 1.0 / std::sqrt(static_cast<double>(t.shape[1]));
    for (size_t i = 0; i < t.size(); ++i) h(t.offset + i) = is_a ? static_cast<float>((2.0 * u() - 1.0) * bound) : 0.0f;
  }
  Kokkos::deep_copy(params, h);
  zero_grad();
}

template <class Exec>
void LoraAdapter<Exec>::merge_into(std::span<float> base_params) const {
  auto h = Kokkos::create_mirror_view(params);
  Kokkos::deep_copy(h, params);
  const GptOffsets o = gpt_offsets(base_);
  const size_t w_off[kLoraTargets] = {o.qkvw, o.attprojw, o.fcw, o.fcprojw};
  const int r = cfg_.rank;
  const float s = cfg_.scale();
  for (int l = 0; l < base_.layers; ++l) {
    for (int k = 0; k < kLoraTargets; ++k) {
      const auto [oc, ic] = target_shape(base_, k);
      const float* A = h.data() + a_offset(l, LoraTarget(k));
      const float* B = h.data() + b_offset(l, LoraTarget(k));
      float* W = base_params.data() + w_off[k] + size_t(l) * o.layer_stride;
      for (int i = 0; i < oc; ++i)
        for (int c = 0; c < ic; ++c) {
          float d = 0.f;
          for (int j = 0; j < r; ++j) d += B[size_t(i) * r + j] * A[size_t(j) * ic + c];
          W[size_t(i) * ic + c] += s * d;
        }
    }
  }
}

template class LoraAdapter<Kokkos::DefaultExecutionSpace>;

}  // namespace mobula::rl
