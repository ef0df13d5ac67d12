#include "rl/encoder/image_latents.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "core/runtime/hash.h"
#include "io/image_codecs.h"

namespace mobula::rl {

Result<VaeEncoderConfig> ImageLatents::encoder_config(const JobSpec& spec) {
  VaeEncoderConfig cfg;
  cfg.image = spec.data.size;
  cfg.base_channels = spec.latent.base_channels;
  cfg.downsamples = spec.latent.downsamples;
  cfg.groups = spec.latent.base_channels % 8 == 0 ? 8 : 4;
  if (Status v = cfg.validate(); !v.is_ok())
    return Status::invalid_spec(spec.where("latent.base_channels") + ": encoder: " + v.message());
  return cfg;
}

Result<ImageLatents> ImageLatents::create(const JobSpec& spec) {
  ImageLatents m;
  auto ds = io::ImageDataset::open(spec.data.dir);
  if (!ds) return ds.status();
  m.ds_ = std::make_unique<io::ImageDataset>(std::move(ds).value());
  auto config = encoder_config(spec);
  if (!config) return config.status();
  const VaeEncoderConfig& cfg = *config;
  auto enc = VaeEncoder<>::create(cfg);
  if (!enc) return enc.status();
  m.enc_ = std::make_unique<VaeEncoder<>>(std::move(enc).value());
  if (spec.latent.encoder_weights.empty()) {
    m.enc_->init_random(uint64_t(spec.seed) ^ 0x656e636f646572ULL);
  } else {
    MOBULA_RETURN_IF_ERROR(m.enc_->load(spec.latent.encoder_weights));
  }
  m.seed_ = uint64_t(spec.seed);
  m.size_ = spec.data.size;
  m.floats_ = static_cast<int>(cfg.latent_floats());
  return m;
}

Status ImageLatents::encode(std::span<const uint64_t> ids) {
  const int B = static_cast<int>(ids.size());
  const size_t px = size_t(size_) * size_t(size_);
  images_.resize(size_t(B) * 3 * px);
  for (int b = 0; b < B; ++b) {
    auto bytes = ds_->read(ids[size_t(b)]);
    if (!bytes) return bytes.status();
    auto img = io::decode_image(*bytes);
    if (!img) return img.status();
    if (img->width != size_ || img->height != size_ || img->channels != 3)
      return Status::invalid_argument("sample " + std::to_string(ids[size_t(b)]) + " of " + ds_->dir() + " is " +
                                      std::to_string(img->width) + "x" + std::to_string(img->height) + "x" +
                                      std::to_string(img->channels) + ", not " + std::to_string(size_) + "x" +
                                      std::to_string(size_) + "x3 (data.size)");
    float* dst = images_.data() + size_t(b) * 3 * px;  // HWC bytes -> CHW in [-1, 1]
    for (size_t p = 0; p < px; ++p)
      for (size_t c = 0; c < 3; ++c) dst[c * px + p] = float(img->pixels[p * 3 + c]) * (2.0f / 255.0f) - 1.0f;
  }
  mean_.resize(size_t(B) * size_t(floats_));
  logvar_.resize(mean_.size());
  MOBULA_RETURN_IF_ERROR(enc_->encode(images_.data(), B, mean_.data(), logvar_.data()));
  if (delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
  return Status::ok();
}

Status ImageLatents::make(std::span<const uint64_t> ids, float* out) {
  MOBULA_RETURN_IF_ERROR(encode(ids));
  const int B = static_cast<int>(ids.size());
  seeds_.resize(size_t(B));
  for (int b = 0; b < B; ++b) seeds_[size_t(b)] = splitmix64(seed_ ^ splitmix64(ids[size_t(b)] + 0x6c6174656e74ULL));
  enc_->sample(mean_.data(), logvar_.data(), B, seeds_.data(), out);
  return Status::ok();
}

Status ImageLatents::means(std::span<const uint64_t> ids, float* out) {
  MOBULA_RETURN_IF_ERROR(encode(ids));
  std::copy(mean_.begin(), mean_.end(), out);
  return Status::ok();
}

}  // namespace mobula::rl
