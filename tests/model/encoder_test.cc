// The convolutional VAE encoder (rl/encoder): golden outputs of a float64 reference
// (tests/model/golden/make_encoder_golden.py), its kernels against naive loops, batch independence,
// sampling determinism, shapes, config and weight-file errors, save/load.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "io/safetensors.h"
#include "rl/encoder/kernels.h"
#include "rl/encoder/vae_encoder.h"

namespace mobula::rl {
namespace {

using Exec = Kokkos::DefaultExecutionSpace;
namespace K = kernels;

const std::string kGolden = std::string(MOBULA_TEST_SOURCE_DIR) + "/tests/model/data/vae_encoder_golden.safetensors";

// float32 arithmetic against a float64 reference: mean and logvar are compared elementwise within
// kRelTol times the largest magnitude of the reference tensor.
constexpr float kRelTol = 1e-4f;

std::string tmp(const std::string& name) {
  return testing::TempDir() + "/" + name;
}

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f, float shift = 0.0f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = shift + d(g);
  return v;
}

std::vector<float> images(int B, const VaeEncoderConfig& c, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(size_t(B) * c.image_floats());
  for (auto& x : v) x = d(g);
  return v;
}

float max_abs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

bool same_bits(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

// ---- golden -----------------------------------------------------------------------------------------
TEST(VaeEncoderGolden, MatchesFloat64Reference) {
  auto file = io::read_safetensors(kGolden);
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  auto cfg = read_vae_encoder_config(kGolden);
  ASSERT_TRUE(cfg.is_ok()) << cfg.status().message();
  auto enc = VaeEncoder<>::create(*cfg);
  ASSERT_TRUE(enc.is_ok()) << enc.status().message();
  ASSERT_TRUE(enc->load(kGolden).is_ok());
  const auto& t = file->tensors;
  const auto x = t.at("input").as_f32();
  const int B = static_cast<int>(t.at("input").shape[0]);
  ASSERT_EQ(x.size(), size_t(B) * cfg->image_floats());
  const size_t n = size_t(B) * cfg->latent_floats();
  std::vector<float> mean(n), logvar(n);
  ASSERT_TRUE(enc->encode(x.data(), B, mean.data(), logvar.data()).is_ok());
  for (const char* name : {"mean", "logvar"}) {
    const auto ref = t.at(name).as_f32();
    const auto& got = std::string(name) == "mean" ? mean : logvar;
    ASSERT_EQ(ref.size(), n) << name;
    const float scale = max_abs(ref);
    float worst = 0;
    for (size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(got[i], ref[i], kRelTol * scale) << name << "[" << i << "]";
      worst = std::max(worst, std::fabs(got[i] - ref[i]));
    }
    std::printf("golden %s: max |error| %.3g, max |ref| %.3g, relative %.3g\n", name, double(worst), double(scale),
                double(worst / scale));
  }
}

// ---- kernels against naive loops ----------------------------------------------------------------
std::vector<double> naive_conv(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& b,
                               int B, int IC, int H, int W, int OC, int KK, int s, int pad) {
  const int OH = (H + 2 * pad - KK) / s + 1, OW = (W + 2 * pad - KK) / s + 1;
  std::vector<double> y(size_t(B) * OC * OH * OW);
  for (int n = 0; n < B; ++n)
    for (int o = 0; o < OC; ++o)
      for (int oy = 0; oy < OH; ++oy)
        for (int ox = 0; ox < OW; ++ox) {
          double acc = b[size_t(o)];
          for (int i = 0; i < IC; ++i)
            for (int ky = 0; ky < KK; ++ky)
              for (int kx = 0; kx < KK; ++kx) {
                const int iy = oy * s - pad + ky, ix = ox * s - pad + kx;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                acc +=
                    double(w[((size_t(o) * IC + i) * KK + ky) * KK + kx]) * x[((size_t(n) * IC + i) * H + iy) * W + ix];
              }
          y[((size_t(n) * OC + o) * OH + oy) * OW + ox] = acc;
        }
  return y;
}

TEST(VaeEncoderKernels, Conv2dMatchesNaive) {
  struct Case {
    int B, IC, H, W, OC, K, stride, pad;
  };
  for (const Case c : {Case{2, 5, 9, 7, 7, 3, 1, 1}, Case{2, 5, 9, 7, 7, 3, 2, 1}, Case{3, 4, 8, 8, 11, 3, 2, 1},
                       Case{1, 3, 6, 5, 2, 1, 1, 0}, Case{2, 6, 10, 10, 3, 3, 2, 0}}) {
    const int OH = K::conv2d_out_size(c.H, c.K, c.stride, c.pad), OW = K::conv2d_out_size(c.W, c.K, c.stride, c.pad);
    const auto x = randn(size_t(c.B) * c.IC * c.H * c.W, 1), w = randn(size_t(c.OC) * c.IC * c.K * c.K, 2, 0.3f),
               b = randn(size_t(c.OC), 3);
    std::vector<float> y(size_t(c.B) * c.OC * OH * OW, -1.f), col(size_t(c.IC) * c.K * c.K * OH * OW);
    K::conv2d_forward<Exec>(y.data(), col.data(), x.data(), w.data(), b.data(), c.B, c.IC, c.H, c.W, c.OC, c.K,
                            c.stride, c.pad);
    Kokkos::fence();
    const auto ref = naive_conv(x, w, b, c.B, c.IC, c.H, c.W, c.OC, c.K, c.stride, c.pad);
    ASSERT_EQ(ref.size(), y.size());
    double scale = 0;
    for (double r : ref) scale = std::max(scale, std::fabs(r));
    for (size_t i = 0; i < y.size(); ++i)
      ASSERT_NEAR(y[i], ref[i], 1e-5 * scale) << "B" << c.B << " IC" << c.IC << " " << c.H << "x" << c.W << " OC"
                                              << c.OC << " K" << c.K << " stride " << c.stride << " [" << i << "]";
    // Without bias: the GEMM alone.
    K::conv2d_forward<Exec>(y.data(), col.data(), x.data(), w.data(), nullptr, c.B, c.IC, c.H, c.W, c.OC, c.K, c.stride,
                            c.pad);
    Kokkos::fence();
    const size_t P = size_t(OH) * OW;
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i] - b[(i / P) % size_t(c.OC)], 1e-5 * scale) << i;
  }
}

TEST(VaeEncoderKernels, GroupnormMatchesNaive) {
  struct Case {
    int B, C, G;
    long HW;
    float shift;
  };
  for (const Case c : {Case{2, 12, 3, 35, 0.f}, Case{3, 12, 1, 16, 0.f}, Case{2, 12, 12, 9, 0.f},
                       Case{2, 8, 4, 64, 100.f}, Case{1, 6, 2, 1, 0.f}}) {
    const size_t N = size_t(c.B) * c.C * c.HW;
    const auto x = randn(N, 4, 2.0f, c.shift), w = randn(size_t(c.C), 5, 0.5f, 1.0f), b = randn(size_t(c.C), 6);
    std::vector<float> y(N), mean(size_t(c.B) * c.G), rstd(size_t(c.B) * c.G);
    K::groupnorm_forward<Exec>(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), c.B, c.C, c.HW, c.G);
    Kokkos::fence();
    const int Cg = c.C / c.G;
    for (int n = 0; n < c.B; ++n)
      for (int g = 0; g < c.G; ++g) {
        double m = 0, v = 0;
        const size_t at = (size_t(n) * c.C + size_t(g) * Cg) * c.HW, len = size_t(Cg) * c.HW;
        for (size_t i = 0; i < len; ++i) m += x[at + i];
        m /= double(len);
        for (size_t i = 0; i < len; ++i) v += (x[at + i] - m) * (x[at + i] - m);
        v /= double(len);
        const double r = 1.0 / std::sqrt(v + 1e-6);
        EXPECT_NEAR(mean[size_t(n) * c.G + g], m, 1e-6 * (1 + std::fabs(m)));
        EXPECT_NEAR(rstd[size_t(n) * c.G + g], r, 1e-6 * r);
        for (size_t i = 0; i < len; ++i) {
          const int ch = g * Cg + int(i / size_t(c.HW));
          const double want = (x[at + i] - m) * r * w[size_t(ch)] + b[size_t(ch)];
          ASSERT_NEAR(y[at + i], want, 2e-4 * (1 + std::fabs(want)))
              << "B" << c.B << " C" << c.C << " G" << c.G << " HW" << c.HW << " [" << at + i << "]";
        }
      }
    // In place (out aliases inp) gives the same bits.
    std::vector<float> z = x;
    K::groupnorm_forward<Exec>(z.data(), mean.data(), rstd.data(), z.data(), w.data(), b.data(), c.B, c.C, c.HW, c.G);
    Kokkos::fence();
    EXPECT_TRUE(same_bits(z.data(), y.data(), N));
  }
}

TEST(VaeEncoderKernels, SiluAndMomentsClamp) {
  const std::vector<float> x = {-100.f, -3.f, -0.5f, 0.f, 0.5f, 3.f, 100.f};
  std::vector<float> y(x.size());
  K::silu_forward<Exec>(y.data(), x.data(), long(x.size()));
  Kokkos::fence();
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i] / (1 + std::exp(-double(x[i]))), 1e-6) << x[i];
  // B=2, L=1, HW=3: moments (2, 2, 3).
  const std::vector<float> mom = {1, 2, 3, -50, 0, 50, 4, 5, 6, 7, -7, 25};
  std::vector<float> mean(6), logvar(6);
  K::vae_moments_forward<Exec>(mean.data(), logvar.data(), mom.data(), 2, 1, 3);
  Kokkos::fence();
  EXPECT_EQ(mean, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(logvar, (std::vector<float>{-30, 0, 20, 7, -7, 20}));
}

TEST(VaeEncoderKernels, CounterNormalIsStandardNormal) {
  const int n = 200000;
  double s = 0, s2 = 0;
  for (int i = 0; i < n; ++i) {
    const double e = K::counter_normal(42, uint64_t(i));
    s += e;
    s2 += e * e;
  }
  EXPECT_NEAR(s / n, 0.0, 0.01);
  EXPECT_NEAR(s2 / n, 1.0, 0.01);
  EXPECT_NE(K::counter_normal(1, 0), K::counter_normal(2, 0));
}

// ---- the encoder --------------------------------------------------------------------------------
TEST(VaeEncoder, DefaultShape) {
  const VaeEncoderConfig cfg;  // 64x64x3 -> 8x8x4
  auto enc = VaeEncoder<>::create(cfg);
  ASSERT_TRUE(enc.is_ok()) << enc.status().message();
  EXPECT_EQ(cfg.latent_size(), 8);
  EXPECT_EQ(cfg.latent_floats(), size_t(4 * 8 * 8));
  EXPECT_EQ(cfg.channels(0), 32);
  EXPECT_EQ(cfg.channels(1), 64);
  EXPECT_EQ(cfg.channels(2), 128);
  EXPECT_EQ(cfg.channels(3), 128);  // capped at 4 x base
  EXPECT_EQ(enc->num_params(), size_t(444520));
  EXPECT_EQ(enc->params().size(), enc->num_params());
  ASSERT_NE(enc->tensor("down.2.downsample.weight"), nullptr);
  EXPECT_EQ(enc->tensor("down.2.downsample.weight")->shape, (std::vector<int>{128, 128, 3, 3}));
  EXPECT_EQ(enc->tensor("conv_out.weight")->shape, (std::vector<int>{8, 128, 3, 3}));
  EXPECT_EQ(enc->tensors().back().offset + enc->tensors().back().size(), enc->num_params());
  enc->init_random(1);
  const int B = 2;
  const auto x = images(B, cfg, 11);
  std::vector<float> mean(size_t(B) * 4 * 8 * 8, NAN), logvar(mean.size(), NAN);
  ASSERT_TRUE(enc->encode(x.data(), B, mean.data(), logvar.data()).is_ok());
  for (size_t i = 0; i < mean.size(); ++i) {
    ASSERT_TRUE(std::isfinite(mean[i]) && std::isfinite(logvar[i])) << i;
    ASSERT_GE(logvar[i], -30.f);
    ASSERT_LE(logvar[i], 20.f);
  }
  EXPECT_GT(max_abs(mean), 0.f);
  // init_random is a function of the seed.
  auto again = VaeEncoder<>::create(cfg);
  again->init_random(1);
  EXPECT_TRUE(same_bits(again->params().data(), enc->params().data(), enc->num_params()));
  again->init_random(2);
  EXPECT_FALSE(same_bits(again->params().data(), enc->params().data(), enc->num_params()));
}

TEST(VaeEncoder, BatchIndependence) {
  const VaeEncoderConfig cfg;
  auto enc = VaeEncoder<>::create(cfg);
  ASSERT_TRUE(enc.is_ok());
  enc->init_random(3);
  const int B = 3;
  const size_t n = cfg.latent_floats(), ni = cfg.image_floats();
  const auto x = images(B, cfg, 5);
  std::vector<float> mean(B * n), logvar(B * n);
  ASSERT_TRUE(enc->encode(x.data(), B, mean.data(), logvar.data()).is_ok());
  auto fresh = VaeEncoder<>::create(cfg);  // workspaces sized for one image
  ASSERT_TRUE(fresh.is_ok());
  Kokkos::deep_copy(fresh->param_buffer(), enc->param_buffer());
  for (int b = 0; b < B; ++b) {
    std::vector<float> m1(n), l1(n), m2(n), l2(n);
    ASSERT_TRUE(fresh->encode(x.data() + b * ni, 1, m1.data(), l1.data()).is_ok());
    ASSERT_TRUE(enc->encode(x.data() + b * ni, 1, m2.data(), l2.data()).is_ok());  // reused workspace
    EXPECT_TRUE(same_bits(m1.data(), mean.data() + b * n, n)) << "mean of image " << b;
    EXPECT_TRUE(same_bits(l1.data(), logvar.data() + b * n, n)) << "logvar of image " << b;
    EXPECT_TRUE(same_bits(m2.data(), m1.data(), n)) << b;
    EXPECT_TRUE(same_bits(l2.data(), l1.data(), n)) << b;
  }
  // Images in another order: each one's output moves with it, bit for bit.
  std::vector<float> xr(x.size());
  for (int b = 0; b < B; ++b) std::copy_n(x.data() + b * ni, ni, xr.data() + (B - 1 - b) * ni);
  std::vector<float> mr(B * n), lr(B * n);
  ASSERT_TRUE(enc->encode(xr.data(), B, mr.data(), lr.data()).is_ok());
  for (int b = 0; b < B; ++b) EXPECT_TRUE(same_bits(mr.data() + (B - 1 - b) * n, mean.data() + b * n, n)) << b;
}

TEST(VaeEncoder, SamplingDeterminism) {
  VaeEncoderConfig cfg;
  cfg.image = 16;
  cfg.base_channels = 8;
  cfg.downsamples = 2;
  cfg.groups = 4;
  auto enc = VaeEncoder<>::create(cfg);
  ASSERT_TRUE(enc.is_ok());
  enc->init_random(9);
  const int B = 3;
  const size_t n = cfg.latent_floats();
  const auto x = images(B, cfg, 6);
  std::vector<float> mean(B * n), logvar(B * n);
  ASSERT_TRUE(enc->encode(x.data(), B, mean.data(), logvar.data()).is_ok());
  const std::vector<uint64_t> seeds = {7, 8, 9};
  std::vector<float> z1(B * n), z2(B * n);
  enc->sample(mean.data(), logvar.data(), B, seeds.data(), z1.data());
  enc->sample(mean.data(), logvar.data(), B, seeds.data(), z2.data());
  EXPECT_TRUE(same_bits(z1.data(), z2.data(), B * n));  // same seed: same z
  // z = mean + exp(logvar / 2) * counter_normal(seed, index)
  for (int b = 0; b < B; ++b)
    for (size_t j = 0; j < n; ++j) {
      const size_t i = b * n + j;
      EXPECT_NEAR(z1[i], mean[i] + std::exp(0.5f * logvar[i]) * K::counter_normal(seeds[size_t(b)], j),
                  1e-5f * (1 + std::fabs(z1[i])));
    }
  // Different seed: different z.
  const std::vector<uint64_t> other = {7, 100, 9};
  std::vector<float> z3(B * n);
  enc->sample(mean.data(), logvar.data(), B, other.data(), z3.data());
  EXPECT_TRUE(same_bits(z3.data(), z1.data(), n));
  size_t differ = 0;
  for (size_t j = 0; j < n; ++j) differ += z3[n + j] != z1[n + j];
  EXPECT_EQ(differ, n);
  // An image's z does not depend on its batch position or batch size.
  std::vector<float> z4(n);
  enc->sample(mean.data() + 2 * n, logvar.data() + 2 * n, 1, &seeds[2], z4.data());
  EXPECT_TRUE(same_bits(z4.data(), z1.data() + 2 * n, n));
  const std::vector<uint64_t> swapped = {9, 8, 7};
  std::vector<float> ms(B * n), ls(B * n), z5(B * n);
  for (int b = 0; b < B; ++b) {
    std::copy_n(mean.data() + b * n, n, ms.data() + (B - 1 - b) * n);
    std::copy_n(logvar.data() + b * n, n, ls.data() + (B - 1 - b) * n);
  }
  enc->sample(ms.data(), ls.data(), B, swapped.data(), z5.data());
  for (int b = 0; b < B; ++b) EXPECT_TRUE(same_bits(z5.data() + (B - 1 - b) * n, z1.data() + b * n, n)) << b;
}

TEST(VaeEncoder, BadConfigs) {
  auto err = [](VaeEncoderConfig c) {
    auto e = VaeEncoder<>::create(c);
    return e.is_ok() ? std::string("ok") : e.status().message();
  };
  VaeEncoderConfig c;
  c.image = 60;
  EXPECT_EQ(err(c), "encoder.image: 60 must be a positive multiple of 2^downsamples = 8");
  c = {};
  c.groups = 5;
  EXPECT_NE(err(c).find("encoder.groups: 5 must divide base_channels (32)"), std::string::npos) << err(c);
  c = {};
  c.latent_channels = 0;
  EXPECT_EQ(err(c), "encoder.latent_channels: 0 must be at least 1");
  c = {};
  c.in_channels = 0;
  EXPECT_EQ(err(c), "encoder.in_channels: 0 must be at least 1");
  c = {};
  c.downsamples = -1;
  EXPECT_NE(err(c).find("encoder.downsamples"), std::string::npos) << err(c);
  c = {};
  c.groups = 0;
  EXPECT_NE(err(c).find("encoder.groups"), std::string::npos) << err(c);
  c = {};
  c.image = 1 << 14;
  EXPECT_NE(err(c).find("too large"), std::string::npos) << err(c);
  auto enc = VaeEncoder<>::create({});
  ASSERT_TRUE(enc.is_ok());
  std::vector<float> buf(16);
  EXPECT_FALSE(enc->encode(buf.data(), 0, buf.data(), buf.data()).is_ok());
  EXPECT_FALSE(enc->encode(nullptr, 1, buf.data(), buf.data()).is_ok());
}

TEST(VaeEncoder, BadWeightFiles) {
  VaeEncoderConfig cfg;
  cfg.image = 16;
  cfg.base_channels = 8;
  cfg.downsamples = 2;
  cfg.groups = 4;
  auto enc = VaeEncoder<>::create(cfg);
  ASSERT_TRUE(enc.is_ok());
  enc->init_random(4);
  const std::string good = tmp("vae_good.safetensors");
  ASSERT_TRUE(enc->save(good).is_ok());
  auto file = io::read_safetensors(good);
  ASSERT_TRUE(file.is_ok());
  const std::vector<float> before(enc->params().begin(), enc->params().end());
  auto load_err = [&](const io::StFile& f, const std::string& name) {
    const std::string p = tmp(name);
    EXPECT_TRUE(io::write_safetensors(p, f).is_ok());
    Status s = enc->load(p);
    EXPECT_FALSE(s.is_ok()) << name;
    // A failed load leaves the parameters as they were.
    EXPECT_TRUE(same_bits(enc->params().data(), before.data(), before.size())) << name;
    return s.message();
  };
  {
    io::StFile f = *file;
    f.tensors.erase("down.1.conv.bias");
    const auto m = load_err(f, "vae_missing.safetensors");
    EXPECT_NE(m.find("vae_missing.safetensors: down.1.conv.bias: tensor missing"), std::string::npos) << m;
  }
  {
    io::StFile f = *file;
    std::vector<float> w(16 * 8 * 9, 0.f);
    f.tensors["down.0.conv.weight"] = io::StTensor::f32({16, 8, 3, 3}, w.data());
    const auto m = load_err(f, "vae_shape.safetensors");
    EXPECT_NE(m.find("vae_shape.safetensors: down.0.conv.weight: shape [16, 8, 3, 3] in the file, the encoder "
                     "expects [8, 8, 3, 3]"),
              std::string::npos)
        << m;
  }
  {
    io::StFile f = *file;
    std::vector<int32_t> w(8, 0);
    f.tensors["conv_in.bias"] = io::StTensor::i32({8}, w.data());
    const auto m = load_err(f, "vae_dtype.safetensors");
    EXPECT_NE(m.find("conv_in.bias: dtype I32, expected F32"), std::string::npos) << m;
  }
  {
    io::StFile f = *file;
    f.metadata["groups"] = "2";
    const auto m = load_err(f, "vae_groups.safetensors");
    EXPECT_NE(m.find("__metadata__.groups is 2, the encoder's is 4"), std::string::npos) << m;
  }
  {
    const auto s = enc->load(tmp("does_not_exist.safetensors"));
    EXPECT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find("does_not_exist.safetensors"), std::string::npos) << s.message();
  }
  {
    // A GPT weights file is not an encoder file.
    const auto s =
        read_vae_encoder_config(std::string(MOBULA_TEST_SOURCE_DIR) + "/tests/model/data/gpt_golden.safetensors");
    EXPECT_FALSE(s.is_ok());
    EXPECT_NE(s.status().message().find("__metadata__.format"), std::string::npos) << s.status().message();
  }
}

TEST(VaeEncoder, SaveLoadRoundTrip) {
  VaeEncoderConfig cfg;
  cfg.image = 32;
  cfg.base_channels = 16;
  cfg.downsamples = 2;
  cfg.groups = 4;
  cfg.latent_channels = 3;
  auto a = VaeEncoder<>::create(cfg);
  ASSERT_TRUE(a.is_ok());
  a->init_random(77);
  const std::string p = tmp("vae_rt.safetensors");
  ASSERT_TRUE(a->save(p).is_ok());
  auto stored = read_vae_encoder_config(p);
  ASSERT_TRUE(stored.is_ok()) << stored.status().message();
  EXPECT_EQ(stored->to_string(), cfg.to_string());
  auto b = VaeEncoder<>::create(*stored);
  ASSERT_TRUE(b.is_ok());
  ASSERT_TRUE(b->load(p).is_ok());
  ASSERT_EQ(b->num_params(), a->num_params());
  EXPECT_TRUE(same_bits(a->params().data(), b->params().data(), a->num_params()));
  const auto x = images(2, cfg, 8);
  const size_t n = 2 * cfg.latent_floats();
  std::vector<float> ma(n), la(n), mb(n), lb(n);
  ASSERT_TRUE(a->encode(x.data(), 2, ma.data(), la.data()).is_ok());
  ASSERT_TRUE(b->encode(x.data(), 2, mb.data(), lb.data()).is_ok());
  EXPECT_TRUE(same_bits(ma.data(), mb.data(), n));
  EXPECT_TRUE(same_bits(la.data(), lb.data(), n));
}

}  // namespace
}  // namespace mobula::rl
