// A small convolutional VAE encoder (forward only), fp32, NCHW, PyTorch conventions (Conv2d weights
// (OC,IC,kH,kW), nn.GroupNorm, SiLU), so a torch.nn module with the same names loads the same file:
//
//   conv_in                 3x3 pad 1              in_channels -> C_0
//   for l in 0 .. D-1 (D = downsamples), at resolution S_l = image / 2^l:
//     down.l.norm           GroupNorm(groups, C_l, eps 1e-6), then SiLU
//     down.l.conv           3x3 pad 1              C_l -> C_l
//     down.l.downsample     3x3 stride 2 pad 1     C_l -> C_{l+1}, S_l -> S_l / 2
//   norm_out                GroupNorm(groups, C_D, eps 1e-6), then SiLU
//   conv_out                3x3 pad 1              C_D -> 2 * latent_channels
//   mean = channels [0, L), logvar = channels [L, 2L) clamped to [-30, 20] (as diffusers)
//
// C_0 = base_channels, C_{l+1} = min(2 C_l, 4 base_channels). The default config maps 64x64x3
// images to 8x8x4 latents (C = 32, 64, 128, 128).
//
// Parameters live in ONE flat float buffer with the table below as named views (same order):
//
//   name                          shape
//   conv_in.weight                (C_0, in_channels, 3, 3)
//   conv_in.bias                  (C_0)
//   down.l.norm.weight            (C_l)
//   down.l.norm.bias              (C_l)
//   down.l.conv.weight            (C_l, C_l, 3, 3)
//   down.l.conv.bias              (C_l)
//   down.l.downsample.weight      (C_{l+1}, C_l, 3, 3)
//   down.l.downsample.bias        (C_{l+1})
//   norm_out.weight               (C_D)
//   norm_out.bias                 (C_D)
//   conv_out.weight               (2 latent_channels, C_D, 3, 3)
//   conv_out.bias                 (2 latent_channels)
//
// Weights are safetensors (docs/formats/safetensors.md): one F32 tensor per entry above, metadata
// {"format": "mobula-vae-encoder", "format_version": "1", "in_channels", "image", "base_channels",
// "downsamples", "groups", "latent_channels"}. tests/model/golden/make_encoder_golden.py is an
// executable definition of the architecture (float64 NumPy, or torch.nn.functional).
//
// Contract
//  * Local to the calling rank; not thread-safe (one encoder per thread).
//  * Host pointers in, host pointers out; internally Views in Exec's memory space. Workspaces are
//    allocated by the first encode() of a batch size larger than any before, then reused.
//  * Deterministic: an image's mean/logvar are bitwise the same whatever batch (size, position) it
//    is encoded in; sample() draws noise from a counter-based RNG keyed by (seed, element), so z
//    depends only on the sample's seed and its moments.
#pragma once

#include <Kokkos_Core.hpp>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/runtime/status.h"
#include "rl/model/gpt.h"  // TensorInfo

namespace mobula::rl {

struct VaeEncoderConfig {
  int in_channels = 3;      // image channels
  int image = 64;           // image height = width; divisible by 2^downsamples
  int base_channels = 32;   // C_0; divisible by groups
  int downsamples = 3;      // D: stride-2 convolutions
  int groups = 8;           // GroupNorm groups
  int latent_channels = 4;  // L

  // C_l for l = 0 .. downsamples.
  int channels(int level) const;
  // Latent height = width: image / 2^downsamples.
  int latent_size() const { return image >> downsamples; }
  // Floats of one image's mean (or logvar, or z): L * latent_size^2.
  size_t latent_floats() const;
  // Floats of one input image: in_channels * image^2.
  size_t image_floats() const;
  // One-line error naming the offending field, or OK.
  Status validate() const;
  std::string to_string() const;
};

// The parameter table of a config (names, shapes, offsets); same order as the flat buffer.
std::vector<TensorInfo> vae_encoder_tensors(const VaeEncoderConfig& cfg);

// Reads the config stored in an encoder weights file (its __metadata__).
Result<VaeEncoderConfig> read_vae_encoder_config(const std::string& path);

template <class Exec = Kokkos::DefaultExecutionSpace>
class VaeEncoder {
 public:
  using Mem = typename Exec::memory_space;
  using Buffer = Kokkos::View<float*, Mem>;

  static Result<VaeEncoder> create(const VaeEncoderConfig& cfg);

  const VaeEncoderConfig& config() const { return cfg_; }
  size_t num_params() const { return num_params_; }
  // The flat parameter buffer (in Exec's memory space) as a span, and as the View itself.
  std::span<float> params() { return {params_.data(), params_.extent(0)}; }
  std::span<const float> params() const { return {params_.data(), params_.extent(0)}; }
  const Buffer& param_buffer() const { return params_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* tensor(const std::string& name) const;

  // Deterministic from `seed` (independent of the backend): conv weights normal with standard
  // deviation 1/sqrt(fan_in), fan_in = IC*3*3; conv biases 0; GroupNorm weights 1, biases 0.
  void init_random(uint64_t seed);

  // Every tensor of the table must be in the file as F32 with the table's shape; other tensors are
  // ignored; config fields in the file's metadata, where present, must match (image excepted: the
  // encoder is fully convolutional). On error the parameters are unchanged.
  Status load(const std::string& safetensors_path);
  // Writes every tensor and the config metadata, atomically (io::write_safetensors).
  Status save(const std::string& safetensors_path) const;

  // images: (B, in_channels, image, image), values in [-1, 1]. mean, logvar: (B, L, h, w) with
  // h = w = latent_size(). All host memory.
  Status encode(const float* images, int B, float* mean, float* logvar);

  // z = mean + exp(0.5 logvar) * eps, eps ~ N(0,1) from kernels::counter_normal(seeds[b], element
  // index within sample b). mean, logvar, z: (B, L, h, w); seeds: (B). All host memory; B < 1
  // does nothing.
  void sample(const float* mean, const float* logvar, int B, const uint64_t* seeds, float* z);

 private:
  VaeEncoder() = default;
  struct Level {  // offsets into params_ of one downsampling level
    size_t norm_w, norm_b, conv_w, conv_b, down_w, down_b;
  };
  void reserve(int B);

  VaeEncoderConfig cfg_;
  size_t num_params_ = 0;
  std::vector<TensorInfo> tensors_;
  size_t conv_in_w_ = 0, conv_in_b_ = 0, norm_out_w_ = 0, norm_out_b_ = 0, conv_out_w_ = 0, conv_out_b_ = 0;
  std::vector<Level> levels_;
  Buffer params_;     // (num_params)
  int capacity_ = 0;  // batch size the workspaces are sized for
  Buffer ws_;         // encode workspace (layout in vae_encoder.cc)
  int sample_capacity_ = 0;
  Buffer sample_ws_;  // (3, capacity, latent_floats): mean, logvar, z
  Kokkos::View<uint64_t*, Mem> seeds_;
};

extern template class VaeEncoder<Kokkos::DefaultExecutionSpace>;

}  // namespace mobula::rl
