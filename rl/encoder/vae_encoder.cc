#include "rl/encoder/vae_encoder.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "io/safetensors.h"
#include "rl/encoder/kernels.h"
#include "rl/model/config.h"

namespace mobula::rl {

namespace {

constexpr int kKernel = 3;  // every convolution is 3x3, pad 1
constexpr const char* kFormat = "mobula-vae-encoder";

using HostIn = Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
using HostOut = Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

std::string shape_string(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// The config fields as metadata keys (image last: it is not a property of the weights).
std::vector<std::pair<const char*, int VaeEncoderConfig::*>> config_fields() {
  return {{"in_channels", &VaeEncoderConfig::in_channels},         {"base_channels", &VaeEncoderConfig::base_channels},
          {"downsamples", &VaeEncoderConfig::downsamples},         {"groups", &VaeEncoderConfig::groups},
          {"latent_channels", &VaeEncoderConfig::latent_channels}, {"image", &VaeEncoderConfig::image}};
}

Result<int> parse_int(const std::string& path, const std::string& key, const std::string& v) {
  size_t used = 0;
  int x = 0;
  try {
    x = std::stoi(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != v.size()) return Status::io(path + ": __metadata__." + key + ": not an integer: " + v);
  return x;
}

// Encode workspace for a batch of B: input, two activation buffers (ping-pong), one im2col matrix
// (one sample at a time), conv_out's moments, the outputs, GroupNorm statistics.
struct Ws {
  size_t img, act0, act1, col, moments, mean, logvar, gn_mean, gn_rstd, total;
};

Ws ws_layout(const VaeEncoderConfig& c, int B) {
  size_t max_act = 0, max_col = 0;
  auto conv = [&](int IC, int in, int OC, int stride) {
    const int out = kernels::conv2d_out_size(in, kKernel, stride, 1);
    max_col = std::max(max_col, size_t(IC) * kKernel * kKernel * out * out);
    max_act = std::max(max_act, size_t(OC) * out * out);
    return out;
  };
  int S = conv(c.in_channels, c.image, c.channels(0), 1);
  for (int l = 0; l < c.downsamples; ++l) {
    conv(c.channels(l), S, c.channels(l), 1);
    S = conv(c.channels(l), S, c.channels(l + 1), 2);
  }
  conv(c.channels(c.downsamples), S, 2 * c.latent_channels, 1);
  Ws w{};
  Offsets off;
  w.img = off.take(size_t(B) * c.image_floats());
  w.act0 = off.take(size_t(B) * max_act);
  w.act1 = off.take(size_t(B) * max_act);
  w.col = off.take(max_col);
  w.moments = off.take(size_t(B) * 2 * c.latent_floats());
  w.mean = off.take(size_t(B) * c.latent_floats());
  w.logvar = off.take(size_t(B) * c.latent_floats());
  w.gn_mean = off.take(size_t(B) * c.groups);
  w.gn_rstd = off.take(size_t(B) * c.groups);
  w.total = off.total;
  return w;
}

}  // namespace

int VaeEncoderConfig::channels(int level) const {
  int c = base_channels;
  for (int l = 0; l < level; ++l) c = std::min(2 * c, 4 * base_channels);
  return c;
}

size_t VaeEncoderConfig::latent_floats() const {
  return size_t(latent_channels) * latent_size() * latent_size();
}

size_t VaeEncoderConfig::image_floats() const {
  return size_t(in_channels) * image * image;
}

Status VaeEncoderConfig::validate() const {
  auto bad = [](const std::string& k, const std::string& m) {
    return Status::invalid_argument("encoder." + k + ": " + m);
  };
  if (in_channels < 1) return bad("in_channels", std::to_string(in_channels) + " must be at least 1");
  if (downsamples < 0 || downsamples > 16) return bad("downsamples", std::to_string(downsamples) + " must be in 0..16");
  if (image < 1 || image % (1 << downsamples) != 0)
    return bad("image", std::to_string(image) +
                            " must be a positive multiple of 2^downsamples = " + std::to_string(1 << downsamples));
  if (groups < 1) return bad("groups", std::to_string(groups) + " must be at least 1");
  if (base_channels < 1 || base_channels % groups != 0)
    return bad("groups", std::to_string(groups) + " must divide base_channels (" + std::to_string(base_channels) +
                             "), so that it divides every level's channel count");
  if (latent_channels < 1) return bad("latent_channels", std::to_string(latent_channels) + " must be at least 1");
  // GEMM dimensions are int: the largest im2col matrix (and activation) must fit.
  const int64_t big = int64_t(kKernel) * kKernel * 4 * base_channels * int64_t(image) * image;
  if (big > int64_t(1) << 30 || int64_t(in_channels) * kKernel * kKernel * image * image > int64_t(1) << 30)
    return bad("image", std::to_string(image) + " x base_channels " + std::to_string(base_channels) +
                            " is too large: an im2col matrix would exceed 2^30 floats");
  return Status::ok();
}

std::string VaeEncoderConfig::to_string() const {
  return "in_channels " + std::to_string(in_channels) + ", image " + std::to_string(image) + ", base_channels " +
         std::to_string(base_channels) + ", downsamples " + std::to_string(downsamples) + ", groups " +
         std::to_string(groups) + ", latent_channels " + std::to_string(latent_channels);
}

std::vector<TensorInfo> vae_encoder_tensors(const VaeEncoderConfig& c) {
  std::vector<TensorInfo> t;
  size_t off = 0;
  auto add = [&](std::string name, std::vector<int> shape) {
    const bool decay = shape.size() == 4;  // conv kernels, not biases/GroupNorm
    TensorInfo ti{std::move(name), off, std::move(shape), decay};
    off += ti.size();
    t.push_back(std::move(ti));
  };
  auto conv = [&](const std::string& p, int OC, int IC) {
    add(p + ".weight", {OC, IC, kKernel, kKernel});
    add(p + ".bias", {OC});
  };
  conv("conv_in", c.channels(0), c.in_channels);
  for (int l = 0; l < c.downsamples; ++l) {
    const std::string p = "down." + std::to_string(l) + ".";
    const int C = c.channels(l);
    add(p + "norm.weight", {C});
    add(p + "norm.bias", {C});
    conv(p + "conv", C, C);
    conv(p + "downsample", c.channels(l + 1), C);
  }
  const int CD = c.channels(c.downsamples);
  add("norm_out.weight", {CD});
  add("norm_out.bias", {CD});
  conv("conv_out", 2 * c.latent_channels, CD);
  return t;
}

Result<VaeEncoderConfig> read_vae_encoder_config(const std::string& path) {
  auto f = io::read_safetensors(path);
  if (!f) return f.status();
  auto fmt = f->metadata.find("format");
  if (fmt == f->metadata.end() || fmt->second != kFormat)
    return Status::io(path + ": __metadata__.format: " +
                      (fmt == f->metadata.end() ? std::string("missing") : "'" + fmt->second + "'") + ", expected '" +
                      kFormat + "' (not a VAE encoder weights file?)");
  VaeEncoderConfig c;
  for (const auto& [k, field] : config_fields()) {
    auto it = f->metadata.find(k);
    if (it == f->metadata.end()) return Status::io(path + ": __metadata__." + k + ": missing");
    auto v = parse_int(path, k, it->second);
    if (!v) return v.status();
    c.*field = *v;
  }
  if (Status s = c.validate(); !s) return Status::io(path + ": " + s.message());
  return c;
}

template <class Exec>
Result<VaeEncoder<Exec>> VaeEncoder<Exec>::create(const VaeEncoderConfig& cfg) {
  if (Status s = cfg.validate(); !s) return s;
  VaeEncoder e;
  e.cfg_ = cfg;
  e.tensors_ = vae_encoder_tensors(cfg);
  e.num_params_ = e.tensors_.back().offset + e.tensors_.back().size();
  auto at = [&](const std::string& n) { return e.tensor(n)->offset; };  // every name below is in the table
  e.conv_in_w_ = at("conv_in.weight");
  e.conv_in_b_ = at("conv_in.bias");
  for (int l = 0; l < cfg.downsamples; ++l) {
    const std::string p = "down." + std::to_string(l) + ".";
    e.levels_.push_back(Level{at(p + "norm.weight"), at(p + "norm.bias"), at(p + "conv.weight"), at(p + "conv.bias"),
                              at(p + "downsample.weight"), at(p + "downsample.bias")});
  }
  e.norm_out_w_ = at("norm_out.weight");
  e.norm_out_b_ = at("norm_out.bias");
  e.conv_out_w_ = at("conv_out.weight");
  e.conv_out_b_ = at("conv_out.bias");
  e.params_ = Buffer("vae_encoder_params", e.num_params_);
  return e;
}

template <class Exec>
const TensorInfo* VaeEncoder<Exec>::tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

template <class Exec>
void VaeEncoder<Exec>::init_random(uint64_t seed) {
  std::vector<float> h(num_params_, 0.0f);
  const uint64_t key = kernels::splitmix64_mix(seed ^ 0x5641452D656E6331ull);  // "VAE-enc1"
  for (const auto& t : tensors_) {
    if (t.shape.size() == 4) {
      const double fan_in = double(t.shape[1]) * t.shape[2] * t.shape[3];
      const float sd = float(1.0 / std::sqrt(fan_in));
      for (size_t i = 0; i < t.size(); ++i) h[t.offset + i] = sd * kernels::counter_normal(key, t.offset + i);
    } else if (t.name.ends_with("norm.weight") || t.name == "norm_out.weight") {
      std::fill_n(h.begin() + long(t.offset), t.size(), 1.0f);
    }
  }
  Kokkos::deep_copy(params_, HostIn(h.data(), h.size()));
}

template <class Exec>
Status VaeEncoder<Exec>::load(const std::string& path) {
  auto f = io::read_safetensors(path);
  if (!f) return f.status();
  for (const auto& [k, field] : config_fields()) {
    if (std::string(k) == "image") continue;  // not a property of the weights
    auto it = f->metadata.find(k);
    if (it == f->metadata.end()) continue;
    auto v = parse_int(path, k, it->second);
    if (!v) return v.status();
    if (*v != cfg_.*field)
      return Status::invalid_argument(path + ": __metadata__." + k + " is " + it->second + ", the encoder's is " +
                                      std::to_string(cfg_.*field) +
                                      "; create the encoder from read_vae_encoder_config() of this file");
  }
  std::vector<float> h(num_params_);
  for (const auto& t : tensors_) {
    const std::vector<int64_t> want(t.shape.begin(), t.shape.end());
    auto it = f->tensors.find(t.name);
    if (it == f->tensors.end())
      return Status::io(path + ": " + t.name + ": tensor missing (expected F32 " + shape_string(want) + " for " +
                        cfg_.to_string() + ")");
    if (it->second.dtype != "F32")
      return Status::io(path + ": " + t.name + ": dtype " + it->second.dtype + ", expected F32");
    if (it->second.shape != want)
      return Status::io(path + ": " + t.name + ": shape " + shape_string(it->second.shape) +
                        " in the file, the encoder expects " + shape_string(want) + " (" + cfg_.to_string() + ")");
    const auto v = it->second.as_f32();
    std::copy(v.begin(), v.end(), h.begin() + long(t.offset));
  }
  Kokkos::deep_copy(params_, HostIn(h.data(), h.size()));
  return Status::ok();
}

template <class Exec>
Status VaeEncoder<Exec>::save(const std::string& path) const {
  auto h = Kokkos::create_mirror_view(params_);
  Kokkos::deep_copy(h, params_);
  io::StFile f;
  f.metadata = {{"format", kFormat}, {"format_version", "1"}};
  for (const auto& [k, field] : config_fields()) f.metadata[k] = std::to_string(cfg_.*field);
  for (const auto& t : tensors_)
    f.tensors[t.name] = io::StTensor::f32(std::vector<int64_t>(t.shape.begin(), t.shape.end()), h.data() + t.offset);
  return io::write_safetensors(path, f);
}

template <class Exec>
void VaeEncoder<Exec>::reserve(int B) {
  if (B <= capacity_) return;
  ws_ = Buffer("vae_encoder_ws", ws_layout(cfg_, B).total);
  capacity_ = B;
}

template <class Exec>
Status VaeEncoder<Exec>::encode(const float* images, int B, float* mean, float* logvar) {
  namespace K = kernels;
  if (B < 1) return Status::invalid_argument("VaeEncoder::encode: batch size " + std::to_string(B) + " must be >= 1");
  if (!images || !mean || !logvar)
    return Status::invalid_argument("VaeEncoder::encode: images, mean and logvar must not be null");
  reserve(B);
  const Ws w = ws_layout(cfg_, capacity_);
  auto range = [](size_t at, size_t n) { return std::pair<size_t, size_t>(at, at + n); };
  const size_t n_img = size_t(B) * cfg_.image_floats(), n_lat = size_t(B) * cfg_.latent_floats();
  Kokkos::deep_copy(Kokkos::subview(ws_, range(w.img, n_img)), HostIn(images, n_img));

  float* ws = ws_.data();
  const float* p = params_.data();
  float* cur = ws + w.act0;
  float* other = ws + w.act1;
  float* col = ws + w.col;
  float* gm = ws + w.gn_mean;
  float* gr = ws + w.gn_rstd;
  const int G = cfg_.groups;
  int S = cfg_.image;
  K::conv2d_forward<Exec>(cur, col, ws + w.img, p + conv_in_w_, p + conv_in_b_, B, cfg_.in_channels, S, S,
                          cfg_.channels(0), kKernel, 1, 1);
  for (int l = 0; l < cfg_.downsamples; ++l) {
    const Level& lv = levels_[size_t(l)];
    const int C = cfg_.channels(l), C2 = cfg_.channels(l + 1);
    const long HW = long(S) * S;
    K::groupnorm_forward<Exec>(other, gm, gr, cur, p + lv.norm_w, p + lv.norm_b, B, C, HW, G);
    K::silu_forward<Exec>(other, other, long(B) * C * HW);
    K::conv2d_forward<Exec>(cur, col, other, p + lv.conv_w, p + lv.conv_b, B, C, S, S, C, kKernel, 1, 1);
    K::conv2d_forward<Exec>(other, col, cur, p + lv.down_w, p + lv.down_b, B, C, S, S, C2, kKernel, 2, 1);
    std::swap(cur, other);
    S = K::conv2d_out_size(S, kKernel, 2, 1);
  }
  const int CD = cfg_.channels(cfg_.downsamples), L = cfg_.latent_channels;
  const long HW = long(S) * S;
  K::groupnorm_forward<Exec>(other, gm, gr, cur, p + norm_out_w_, p + norm_out_b_, B, CD, HW, G);
  K::silu_forward<Exec>(other, other, long(B) * CD * HW);
  K::conv2d_forward<Exec>(ws + w.moments, col, other, p + conv_out_w_, p + conv_out_b_, B, CD, S, S, 2 * L, kKernel, 1,
                          1);
  K::vae_moments_forward<Exec>(ws + w.mean, ws + w.logvar, ws + w.moments, B, L, HW);
  Kokkos::deep_copy(HostOut(mean, n_lat), Kokkos::subview(ws_, range(w.mean, n_lat)));
  Kokkos::deep_copy(HostOut(logvar, n_lat), Kokkos::subview(ws_, range(w.logvar, n_lat)));
  return Status::ok();
}

template <class Exec>
void VaeEncoder<Exec>::sample(const float* mean, const float* logvar, int B, const uint64_t* seeds, float* z) {
  if (B < 1) return;
  const size_t n = cfg_.latent_floats();
  if (B > sample_capacity_) {
    sample_ws_ = Buffer("vae_sample_ws", 3 * size_t(B) * n);
    seeds_ = Kokkos::View<uint64_t*, Mem>("vae_sample_seeds", size_t(B));
    sample_capacity_ = B;
  }
  const size_t cap = size_t(sample_capacity_) * n, bn = size_t(B) * n;
  auto sub = [&](size_t at) { return Kokkos::subview(sample_ws_, std::pair<size_t, size_t>(at, at + bn)); };
  Kokkos::deep_copy(sub(0), HostIn(mean, bn));
  Kokkos::deep_copy(sub(cap), HostIn(logvar, bn));
  Kokkos::deep_copy(
      Kokkos::subview(seeds_, std::pair<size_t, size_t>(0, size_t(B))),
      Kokkos::View<const uint64_t*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(seeds, size_t(B)));
  float* s = sample_ws_.data();
  kernels::vae_sample_forward<Exec>(s + 2 * cap, s, s + cap, seeds_.data(), B, long(n));
  Kokkos::deep_copy(HostOut(z, bn), sub(2 * cap));
}

template class VaeEncoder<Kokkos::DefaultExecutionSpace>;

}  // namespace mobula::rl
