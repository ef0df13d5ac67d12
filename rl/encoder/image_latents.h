// Images of a dataset through the VAE encoder (rl/encoder/vae_encoder.h): what an embed rank, a
// trainer (latent-pretrain inline) or a curation worker runs. The encoder is the spec's
// ([latent] base_channels, downsamples, encoder_weights; random weights from job.seed when none),
// the dataset the spec's data.dir.
//
// Contract: local, not thread-safe (one per thread). A sample's latent depends on the sample only
// (its id keys the sampling noise; the encoder is row-independent), never on the batch around it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/runtime/spec.h"
#include "core/runtime/status.h"
#include "io/image_shards.h"
#include "rl/encoder/vae_encoder.h"

namespace mobula::rl {

class ImageLatents {
 public:
  static Result<ImageLatents> create(const JobSpec& spec);
  // The spec's encoder (validated) without building it: its latent_floats() is a latent's width.
  static Result<VaeEncoderConfig> encoder_config(const JobSpec& spec);
  int latent_floats() const { return floats_; }
  uint64_t dataset_size() const { return ds_->size(); }
  io::ImageDataset& dataset() { return *ds_; }
  // Artificially slow: sleep `ms` per batch (heterogeneous hardware in the benchmark and tests).
  void slow_down(int ms) { delay_ms_ = ms; }

  // Sampled latents z = mean + sigma * eps of `ids` into out (ids.size() * latent_floats()).
  Status make(std::span<const uint64_t> ids, float* out);
  // The latent means of `ids` (the encoder's deterministic embedding) into out.
  Status means(std::span<const uint64_t> ids, float* out);

 private:
  Status encode(std::span<const uint64_t> ids);  // images_ -> mean_, logvar_
  std::unique_ptr<io::ImageDataset> ds_;
  std::unique_ptr<VaeEncoder<>> enc_;
  uint64_t seed_ = 0;
  int size_ = 0, floats_ = 0, delay_ms_ = 0;
  std::vector<float> images_, mean_, logvar_;
  std::vector<uint64_t> seeds_;
};

}  // namespace mobula::rl
