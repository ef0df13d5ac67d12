// The model engine: finite-difference gradient checks of every layer and of the whole model,
// microbatch accumulation, and a tiny training run that must learn, bitwise reproducibly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>

#include "rl/model/decode_kernels.h"
#include "rl/model/gpt.h"
#include "rl/optim/adamw.h"

namespace mobula::rl {
namespace {

using Exec = Kokkos::DefaultExecutionSpace;
namespace K = kernels;

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return s;
}

// Central differences of f at x[idx] vs analytic; float32 forward, so eps is large and the
// tolerance is relative + absolute.
void expect_grad(const std::function<double()>& f, std::vector<float>& x, const std::vector<float>& analytic,
                 const std::string& what, int samples = 24, float eps = 1e-2f, double rtol = 3e-2, double atol = 2e-3) {
  std::mt19937 g(7);
  const size_t n = x.size();
  for (int s = 0; s < samples && n > 0; ++s) {
    const size_t i = static_cast<size_t>(s) < n && n <= static_cast<size_t>(samples) ? static_cast<size_t>(s) : g() % n;
    const float keep = x[i];
    x[i] = keep + eps;
    const double fp = f();
    x[i] = keep - eps;
    const double fm = f();
    x[i] = keep;
    const double num = (fp - fm) / (2.0 * eps);
    EXPECT_NEAR(analytic[i], num, atol + rtol * std::fabs(num)) << what << "[" << i << "]";
  }
}

TEST(Kernels, LayernormGradients) {
  for (int C : {10, 40}) {  // 40: two blocks of 16 columns and a tail in the host dw/db sums
    SCOPED_TRACE("C " + std::to_string(C));
    const long N = 6;
    auto x = randn(N * C, 1), w = randn(C, 2), b = randn(C, 3), r = randn(N * C, 4);
    std::vector<float> out(N * C), mean(N), rstd(N);
    auto loss = [&] {
      K::layernorm_forward<Exec>(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
      return dot(out, r);
    };
    loss();
    std::vector<float> dx(N * C, 0.f), dw(C, 0.f), db(C, 0.f);
    K::layernorm_backward<Exec>(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), mean.data(), rstd.data(),
                                N, C);
    expect_grad(loss, x, dx, "dx");
    expect_grad(loss, w, dw, "dw");
    expect_grad(loss, b, db, "db");
  }
}

// dw and db are column sums over the rows (16 columns at a time on the host, with a tail), added
// to what is there: against a double-precision reference, for widths below, at and above 16.
TEST(Kernels, LayernormBackwardParamSumsMatchDoubleReference) {
  for (int C : {10, 16, 40}) {
    const long N = 33;
    auto x = randn(size_t(N) * C, 11), w = randn(C, 12), b = randn(C, 13), g = randn(size_t(N) * C, 14);
    std::vector<float> out(size_t(N) * C), mean(N), rstd(N), dx(size_t(N) * C, 0.f), dw(C, 0.5f), db(C, -0.25f);
    K::layernorm_forward<Exec>(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    K::layernorm_backward<Exec>(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), mean.data(), rstd.data(),
                                N, C);
    for (int c = 0; c < C; ++c) {
      double sw = 0, sb = 0, mag = 0;
      for (long i = 0; i < N; ++i) {
        const size_t k = size_t(i * C + c);
        const double t = (double(x[k]) - mean[size_t(i)]) * rstd[size_t(i)] * g[k];
        sw += t;
        mag += std::fabs(t);
        sb += g[k];
      }
      EXPECT_NEAR(dw[size_t(c)], 0.5 + sw, 1e-6 * mag + 1e-6) << "C " << C << " c " << c;
      EXPECT_NEAR(db[size_t(c)], -0.25 + sb, 1e-5) << "C " << C << " c " << c;
    }
  }
}

// The forward against a double-precision reference, for widths below, at and above the 16-wide
// partial sums (and a tail).
TEST(Kernels, LayernormForwardMatchesDoubleReference) {
  for (int C : {10, 16, 37, 64}) {
    const long N = 3;
    auto x = randn(N * C, 7), w = randn(C, 8), b = randn(C, 9);
    for (auto& v : x) v = 3.0f + 2.0f * v;  // an offset mean, so the variance is a difference of sums
    std::vector<float> out(N * C), mean(N), rstd(N);
    K::layernorm_forward<Exec>(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    for (long i = 0; i < N; ++i) {
      double m = 0, v = 0;
      for (int c = 0; c < C; ++c) m += x[size_t(i * C + c)];
      m /= C;
      for (int c = 0; c < C; ++c) v += (x[size_t(i * C + c)] - m) * (x[size_t(i * C + c)] - m);
      const double s = 1.0 / std::sqrt(v / C + 1e-5);
      EXPECT_NEAR(mean[size_t(i)], m, 1e-5) << "C " << C;
      EXPECT_NEAR(rstd[size_t(i)], s, 1e-4 * s) << "C " << C;
      for (int c = 0; c < C; ++c)
        EXPECT_NEAR(out[size_t(i * C + c)], (x[size_t(i * C + c)] - m) * s * w[size_t(c)] + b[size_t(c)], 1e-4)
            << "C " << C << " row " << i << " c " << c;
    }
  }
}

TEST(Kernels, MatmulGradients) {
  const long N = 5;
  const int C = 7, OC = 9;
  auto x = randn(N * C, 1), W = randn(OC * C, 2), bias = randn(OC, 3), r = randn(N * OC, 4);
  std::vector<float> out(N * OC);
  auto loss = [&] {
    K::matmul_forward<Exec>(out.data(), x.data(), W.data(), bias.data(), N, C, OC);
    return dot(out, r);
  };
  std::vector<float> dx(N * C, 0.f), dW(OC * C, 0.f), db(OC, 0.f);
  K::matmul_backward<Exec>(dx.data(), dW.data(), db.data(), r.data(), x.data(), W.data(), N, C, OC);
  expect_grad(loss, x, dx, "dx");
  expect_grad(loss, W, dW, "dW");
  expect_grad(loss, bias, db, "db");
}

TEST(Kernels, GeluGradient) {
  const long n = 40;
  auto x = randn(n, 1, 2.0f), r = randn(n, 2);
  std::vector<float> out(n);
  auto loss = [&] {
    K::gelu_forward<Exec>(out.data(), x.data(), n);
    return dot(out, r);
  };
  std::vector<float> dx(n);
  K::gelu_backward<Exec>(dx.data(), x.data(), r.data(), n);
  expect_grad(loss, x, dx, "dx", 40);
}

TEST(Kernels, ExpFastIsWithinTwoUlpAndKeepsNaN) {
  // 2e6 evenly spaced points of [-87, 88] (an exhaustive sweep over every float measured 1.02 ulp).
  double worst = 0;
  for (int i = 0; i <= 2000000; ++i) {
    const float x = -87.0f + 175.0f * static_cast<float>(i) / 2000000.0f;
    const double ref = std::exp(double(x));
    const float rf = static_cast<float>(ref);
    const double ulp = double(std::nextafter(rf, 3.0e38f)) - double(rf);
    worst = std::max(worst, std::fabs(double(K::exp_fast(x)) - ref) / ulp);
  }
  EXPECT_LE(worst, 2.0);
  EXPECT_TRUE(std::isnan(K::exp_fast(std::nanf(""))));
  EXPECT_LT(K::exp_fast(-1000.0f), 1e-37f);
  EXPECT_GT(K::exp_fast(1000.0f), 1e38f);
  EXPECT_EQ(K::exp_fast(0.0f), 1.0f);
  // GELU (tanh form) against a double reference.
  const long n = 4001;
  std::vector<float> x(n), y(n);
  for (long i = 0; i < n; ++i) x[size_t(i)] = -20.0f + 0.01f * float(i);
  K::gelu_forward<Exec>(y.data(), x.data(), n);
  for (long i = 0; i < n; ++i) {
    const double v = x[size_t(i)];
    const double ref = 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    EXPECT_NEAR(y[size_t(i)], ref, 2e-6 * std::max(1.0, std::fabs(ref))) << "x = " << v;
  }
}

TEST(Kernels, AttentionGradientAndCausality) {
  const int B = 2, T = 5, C = 8, NH = 2;
  const size_t btc = size_t(B) * T * C;
  auto qkv = randn(3 * btc, 1), r = randn(btc, 2);
  std::vector<float> out(btc), att(size_t(B) * NH * T * T), q(btc), k(btc), v(btc), y(btc);
  auto loss = [&] {
    K::attention_forward<Exec>(out.data(), att.data(), qkv.data(), q.data(), k.data(), v.data(), y.data(), B, T, C, NH);
    return dot(out, r);
  };
  loss();
  std::vector<float> dqkv(3 * btc), dy(btc), dq(btc), dk(btc), dv(btc), datt(att.size());
  K::attention_backward<Exec>(dqkv.data(), r.data(), qkv.data(), att.data(), q.data(), k.data(), v.data(), dy.data(),
                              dq.data(), dk.data(), dv.data(), datt.data(), B, T, C, NH);
  expect_grad(loss, qkv, dqkv, "dqkv", 60);
  // Causality: changing the last position's keys/values leaves earlier outputs unchanged.
  const auto before = out;
  for (int c = 0; c < 3 * C; ++c) qkv[(size_t(0) * T + (T - 1)) * 3 * C + c] += 1.0f;
  loss();
  for (int t = 0; t < T - 1; ++t)
    for (int c = 0; c < C; ++c) EXPECT_EQ(out[size_t(t) * C + c], before[size_t(t) * C + c]);
}

TEST(Kernels, LogprobGradientAndEntropy) {
  const long N = 4;
  const int V = 6;
  auto z = randn(N * V, 1), w = randn(N, 2);
  std::vector<int> tg = {3, -1, 0, 5};
  std::vector<float> logp(N), ent(N), lse(N);
  auto loss = [&] {
    K::logprob_forward<Exec>(logp.data(), ent.data(), lse.data(), z.data(), tg.data(), N, V);
    return dot(logp, w);
  };
  loss();
  EXPECT_EQ(logp[1], 0.f);  // masked
  double p_sum = 0;
  for (int v = 0; v < V; ++v) p_sum += std::exp(z[v] - lse[0]);
  EXPECT_NEAR(p_sum, 1.0, 1e-5);
  EXPECT_GT(ent[0], 0.f);
  EXPECT_LE(ent[0], std::log(float(V)) + 1e-5f);
  std::vector<float> dz(N * V);
  K::logprob_backward<Exec>(dz.data(), z.data(), lse.data(), tg.data(), w.data(), N, V);
  for (int v = 0; v < V; ++v) EXPECT_EQ(dz[V + v], 0.f);  // masked row has no gradient
  expect_grad(loss, z, dz, "dlogits", 24);
}

TEST(Kernels, EncoderGradient) {
  const int B = 2, T = 3, C = 4, V = 5;
  auto wte = randn(V * C, 1), wpe = randn(T * C, 2), r = randn(size_t(B) * T * C, 3);
  std::vector<int> tok = {1, 4, 1, 0, 2, 4};
  std::vector<float> out(size_t(B) * T * C);
  auto loss = [&] {
    K::encoder_forward<Exec>(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
    return dot(out, r);
  };
  std::vector<float> dwte(V * C, 0.f), dwpe(T * C, 0.f);
  K::encoder_backward<Exec>(dwte.data(), dwpe.data(), r.data(), tok.data(), B, T, C, V);
  expect_grad(loss, wte, dwte, "dwte", 20);
  expect_grad(loss, wpe, dwpe, "dwpe", 12);
}

GptConfig tiny() {
  GptConfig c;
  c.vocab = 11;
  c.max_seq = 8;
  c.layers = 2;
  c.heads = 2;
  c.d_model = 8;
  c.mlp_ratio = 2;
  return c;
}

TEST(Gpt, TensorTableCoversTheFlatBuffer) {
  auto t = gpt_tensors(tiny());
  size_t off = 0;
  for (const auto& x : t) {
    EXPECT_EQ(x.offset, off) << x.name;
    off += x.size();
  }
  // V*C + T*C + L*(12C + 2*C*H + ...): checked against the closed form.
  const size_t C = 8, V = 11, T = 8, H = 16, L = 2;
  EXPECT_EQ(off, V * C + T * C + L * (2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + H * C + H + C * H + C) + 2 * C);
  EXPECT_EQ(bucket_length(5, 128), 8);
  EXPECT_EQ(bucket_length(33, 128), 64);
  EXPECT_EQ(bucket_length(200, 128), 128);
}

TEST(Gpt, BadInputIsAStatus) {
  auto m = Gpt<>::create(tiny(), 2);
  ASSERT_TRUE(m.is_ok());
  std::vector<int> tok(4, 0), tg(4, 0);
  std::vector<float> lp(4);
  EXPECT_FALSE(m->forward(tok, tg, 3, 8, lp).is_ok());  // batch too large
  tok[2] = 11;
  EXPECT_FALSE(m->forward(tok, tg, 1, 4, lp).is_ok());       // token outside vocab
  EXPECT_FALSE(m->backward(std::vector<float>(4)).is_ok());  // no forward yet
  GptConfig bad = tiny();
  bad.d_model = 9;
  EXPECT_FALSE(Gpt<>::create(bad, 1).is_ok());
}

// Whole-model gradient of sum(w * logp) against central differences on the flat buffer.
TEST(Gpt, WholeModelGradientCheck) {
  auto m = Gpt<>::create(tiny(), 2);
  ASSERT_TRUE(m.is_ok()) << m.status().message();
  m->init(3);
  const int B = 2, T = 6;
  std::vector<int> tok = {1, 5, 2, 9, 3, 3, 0, 10, 4, 4, 7, 1};
  std::vector<int> tg = {5, 2, 9, 3, 3, -1, 10, 4, 4, 7, 1, 2};
  auto w = randn(B * T, 5);
  std::vector<float> lp(B * T);
  auto params = Kokkos::create_mirror_view(m->params);
  Kokkos::deep_copy(params, m->params);
  // Random O(1) parameters instead of GPT-2's 0.02-std init: with a tiny residual stream a 1e-2
  // step would be a large relative change at the LayerNorms and the central difference would be
  // dominated by curvature, not by the gradient.
  std::vector<float> x = randn(params.extent(0), 17, 0.4f);
  for (const auto& t : m->tensors())
    if (t.name.ends_with("ln1w") || t.name.ends_with("ln2w") || t.name == "lnfw")
      for (size_t i = 0; i < t.size(); ++i) x[t.offset + i] += 1.0f;
  auto loss = [&] {
    std::copy(x.begin(), x.end(), params.data());
    Kokkos::deep_copy(m->params, params);
    EXPECT_TRUE(m->forward(tok, tg, B, T, lp).is_ok());
    return dot(lp, w);
  };
  loss();
  m->zero_grad();
  ASSERT_TRUE(m->backward(w).is_ok());
  auto g = Kokkos::create_mirror_view(m->grads);
  Kokkos::deep_copy(g, m->grads);
  std::vector<float> ga(g.data(), g.data() + g.extent(0));
  // A few samples from every tensor, so every layer's parameters are checked.
  for (const auto& t : m->tensors()) {
    std::vector<float> sub(x.begin() + long(t.offset), x.begin() + long(t.offset + t.size()));
    std::vector<float> gsub(ga.begin() + long(t.offset), ga.begin() + long(t.offset + t.size()));
    auto f = [&] {
      std::copy(sub.begin(), sub.end(), x.begin() + long(t.offset));
      return loss();
    };
    expect_grad(f, sub, gsub, t.name, 6);
    std::copy(sub.begin(), sub.end(), x.begin() + long(t.offset));
  }
}

TEST(Gpt, MicrobatchesAccumulateLikeOneBatch) {
  auto m = Gpt<>::create(tiny(), 4);
  ASSERT_TRUE(m.is_ok());
  m->init(11);
  const int T = 5;
  std::vector<int> tok(4 * T), tg(4 * T);
  for (int i = 0; i < 4 * T; ++i) tok[i] = (i * 7) % 11, tg[i] = (i * 7 + 3) % 11;
  auto w = randn(4 * T, 9);
  std::vector<float> lp(4 * T);
  ASSERT_TRUE(m->forward(tok, tg, 4, T, lp).is_ok());
  m->zero_grad();
  ASSERT_TRUE(m->backward(w).is_ok());
  auto full = Kokkos::create_mirror_view(m->grads);
  Kokkos::deep_copy(full, m->grads);
  m->zero_grad();
  for (int half = 0; half < 2; ++half) {
    std::span<const int> a(tok.data() + half * 2 * T, 2 * T), b(tg.data() + half * 2 * T, 2 * T);
    std::vector<float> lp2(2 * T);
    ASSERT_TRUE(m->forward(a, b, 2, T, lp2).is_ok());
    for (int i = 0; i < 2 * T; ++i) EXPECT_NEAR(lp2[i], lp[half * 2 * T + i], 1e-5f);
    ASSERT_TRUE(m->backward(std::span<const float>(w.data() + half * 2 * T, 2 * T)).is_ok());
  }
  auto acc = Kokkos::create_mirror_view(m->grads);
  Kokkos::deep_copy(acc, m->grads);
  for (size_t i = 0; i < acc.extent(0); ++i) EXPECT_NEAR(acc(i), full(i), 1e-4f + 1e-4f * std::fabs(full(i))) << i;
}

// Train on a repeating pattern: the loss must fall far below chance, bitwise identically twice.
std::pair<std::vector<float>, std::vector<float>> train_tiny(int steps) {
  GptConfig c = tiny();
  c.d_model = 16;
  auto m = Gpt<>::create(c, 4);
  EXPECT_TRUE(m.is_ok());
  m->init(42);
  AdamWConfig oc;
  oc.lr = 1e-2f;
  oc.warmup_steps = 5;
  oc.total_steps = steps;
  oc.weight_decay = 0.01f;
  AdamW<> opt(oc, m->tensors(), m->num_params());
  const int B = 4, T = 8;
  std::vector<float> losses;
  for (int s = 0; s < steps; ++s) {
    std::vector<int> tok(B * T), tg(B * T);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t) {
        const int start = (s * 3 + b * 5) % 11;  // sequence "start, start+1, ..." mod 11
        tok[b * T + t] = (start + t) % 11;
        tg[b * T + t] = (start + t + 1) % 11;
      }
    std::vector<float> lp(B * T), w(B * T, -1.0f / (B * T));  // mean cross-entropy
    EXPECT_TRUE(m->forward(tok, tg, B, T, lp).is_ok());
    double loss = 0;
    for (float x : lp) loss -= x;
    losses.push_back(static_cast<float>(loss / (B * T)));
    m->zero_grad();
    EXPECT_TRUE(m->backward(w).is_ok());
    opt.step(m->params, m->grads);
  }
  auto p = Kokkos::create_mirror_view(m->params);
  Kokkos::deep_copy(p, m->params);
  return {losses, std::vector<float>(p.data(), p.data() + p.extent(0))};
}

TEST(Gpt, TrainingLearnsAndIsBitwiseDeterministic) {
  const auto [l1, p1] = train_tiny(60);
  const auto [l2, p2] = train_tiny(60);
  EXPECT_NEAR(l1.front(), std::log(11.0f), 0.3f);  // starts at chance
  EXPECT_LT(l1.back(), 0.3f * l1.front()) << "loss did not fall enough: " << l1.front() << " -> " << l1.back();
  ASSERT_EQ(p1.size(), p2.size());
  EXPECT_EQ(0, std::memcmp(p1.data(), p2.data(), p1.size() * sizeof(float))) << "two runs differ";
  EXPECT_EQ(l1, l2);
}

TEST(AdamW, ScheduleWarmupAndCosine) {
  AdamWConfig c;
  c.lr = 1.0f;
  c.warmup_steps = 10;
  c.total_steps = 110;
  c.min_lr_ratio = 0.1f;
  EXPECT_FLOAT_EQ(lr_at(c, 0), 0.1f);
  EXPECT_FLOAT_EQ(lr_at(c, 9), 1.0f);
  EXPECT_FLOAT_EQ(lr_at(c, 10), 1.0f);
  EXPECT_NEAR(lr_at(c, 60), 0.55f, 1e-6f);
  EXPECT_NEAR(lr_at(c, 110), 0.1f, 1e-6f);
  EXPECT_NEAR(lr_at(c, 500), 0.1f, 1e-6f);
}

TEST(AdamW, ClipsAndDecaysOnlyMatrices) {
  std::vector<TensorInfo> t = {{"w", 0, {2}, true}, {"b", 2, {2}, false}};
  AdamWConfig c;
  c.lr = 0.1f;
  c.weight_decay = 0.5f;
  c.grad_clip = 1.0f;
  AdamW<> opt(c, t, 4);
  Kokkos::View<float*> p("p", 4), g("g", 4);
  auto hp = Kokkos::create_mirror_view(p);
  auto hg = Kokkos::create_mirror_view(g);
  for (int i = 0; i < 4; ++i) hp(i) = 1.0f, hg(i) = 0.0f;
  hg(0) = 3.0f, hg(1) = 4.0f;  // norm 5
  Kokkos::deep_copy(p, hp);
  Kokkos::deep_copy(g, hg);
  EXPECT_FLOAT_EQ(opt.step(p, g), 5.0f);
  Kokkos::deep_copy(hp, p);
  // First Adam step moves by lr * sign(g) (bias-corrected), plus decay lr*wd*p on "w" only.
  EXPECT_NEAR(hp(0), 1.0f - 0.1f - 0.05f, 1e-5f);
  EXPECT_NEAR(hp(2), 1.0f, 1e-7f);  // zero gradient, no decay on "b"
}

// Over more elements than one host block (4096), with 16-wide loops and tails: the clipped norm and
// two steps of the update against a plain per-element reference.
TEST(AdamW, BlockedHostLoopsMatchPlainReference) {
  const long n = 5003;
  std::vector<TensorInfo> t = {{"w", 0, {3000}, true}, {"b", 3000, {2003}, false}};
  AdamWConfig c;
  c.lr = 0.01f;
  c.weight_decay = 0.1f;
  c.grad_clip = 1.0f;
  AdamW<> opt(c, t, n);
  Kokkos::View<float*> p("p", n), g("g", n);
  auto hp = Kokkos::create_mirror_view(p);
  auto hg = Kokkos::create_mirror_view(g);
  auto p0 = randn(size_t(n), 21), g0 = randn(size_t(n), 22, 0.05f);
  std::vector<double> rp(p0.begin(), p0.end()), rm(size_t(n), 0.0), rv(size_t(n), 0.0);
  for (int step = 1; step <= 2; ++step) {
    double ss = 0;
    for (long i = 0; i < n; ++i) ss += double(g0[size_t(i)]) * g0[size_t(i)];
    const double norm = std::sqrt(ss), clip = norm > 1.0 ? 1.0 / norm : 1.0;
    for (long i = 0; i < n; ++i) {
      const size_t k = size_t(i);
      const double gi = g0[k] * clip;
      rm[k] = 0.9 * rm[k] + 0.1 * gi;
      rv[k] = 0.95 * rv[k] + 0.05 * gi * gi;
      const double mhat = rm[k] / (1 - std::pow(0.9, step)), vhat = rv[k] / (1 - std::pow(0.95, step));
      rp[k] -= 0.01 * (mhat / (std::sqrt(vhat) + 1e-8) + (i < 3000 ? 0.1 : 0.0) * rp[k]);
    }
    for (long i = 0; i < n; ++i) hp(i) = step == 1 ? p0[size_t(i)] : hp(i), hg(i) = g0[size_t(i)];
    if (step == 1) Kokkos::deep_copy(p, hp);
    Kokkos::deep_copy(g, hg);
    EXPECT_NEAR(opt.step(p, g), norm, 1e-5 * norm);
    Kokkos::deep_copy(hp, p);
    for (long i = 0; i < n; ++i) ASSERT_NEAR(hp(i), rp[size_t(i)], 1e-5) << "step " << step << " i " << i;
  }
}

}  // namespace
}  // namespace mobula::rl

namespace mobula::rl {
namespace {

// Activation recomputation changes memory, not results: bitwise-equal log-probs and gradients.
TEST(Gpt, RecomputationIsBitwiseIdenticalAndSmaller) {
  GptConfig c;
  c.vocab = 11;
  c.max_seq = 8;
  c.layers = 3;
  c.heads = 2;
  c.d_model = 8;
  auto plain = Gpt<>::create(c, 2, false);
  auto ckpt = Gpt<>::create(c, 2, true);
  ASSERT_TRUE(plain.is_ok() && ckpt.is_ok());
  EXPECT_TRUE(ckpt->recompute());
  EXPECT_LT(ckpt->activation_floats(), plain->activation_floats() * 2 / 3);
  plain->init(4);
  ckpt->init(4);
  std::vector<int> tok = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2, 3}, tg = {2, 3, 4, 5, 6, 7, -1, 9, 10, 0, 1, 2, 3, 4};
  std::vector<float> w(tok.size(), 0.3f), lp1(tok.size()), lp2(tok.size());
  ASSERT_TRUE(plain->forward(tok, tg, 2, 7, lp1).is_ok());
  ASSERT_TRUE(ckpt->forward(tok, tg, 2, 7, lp2).is_ok());
  EXPECT_EQ(lp1, lp2);
  plain->zero_grad();
  ckpt->zero_grad();
  ASSERT_TRUE(plain->backward(w).is_ok());
  ASSERT_TRUE(ckpt->backward(w).is_ok());
  auto g1 = Kokkos::create_mirror_view(plain->grads);
  auto g2 = Kokkos::create_mirror_view(ckpt->grads);
  Kokkos::deep_copy(g1, plain->grads);
  Kokkos::deep_copy(g2, ckpt->grads);
  EXPECT_EQ(0, std::memcmp(g1.data(), g2.data(), g1.extent(0) * sizeof(float)));
}

// The decode-path matmul through the transposed weights equals the training-path matmul.
TEST(Kernels, RowsIndependentOfBatchInMatmul) {
  const int C = 19, OC = 37;
  auto W = randn(OC * C, 1), b = randn(OC, 2), x = randn(5 * C, 3);
  std::vector<float> all(5 * OC), one(OC);
  K::matmul_forward<Exec>(all.data(), x.data(), W.data(), b.data(), 5, C, OC);
  K::matmul_forward<Exec>(one.data(), x.data() + 3 * C, W.data(), b.data(), 1, C, OC);
  for (int j = 0; j < OC; ++j) EXPECT_NEAR(one[j], all[3 * OC + j], 1e-5f);
}

// The decode matmul on packed panels equals the BLAS matmul, and a row's result is bitwise the same
// whatever the rows around it (sampling must not depend on the batch).
TEST(Kernels, PanelMatmulMatchesBlasAndRowsAreIndependent) {
  const int C = 40, OC = 48;
  auto W = randn(size_t(OC) * C, 4), b = randn(OC, 5), x = randn(size_t(21) * C, 6);
  std::vector<float> panels(W.size());
  K::pack_panels<Exec>(panels.data(), W.data(), C, OC);
  std::vector<float> ref(size_t(21) * OC), got(size_t(21) * OC), one(OC), nob(size_t(21) * OC);
  K::matmul_forward<Exec>(ref.data(), x.data(), W.data(), b.data(), 21, C, OC);
  for (int R : {1, 2, 3, 4, 5, 6, 7, 8, 13, 21}) {  // every tail row count; 3 panels: a pair and a single
    K::matmul_forward_panels<Exec>(got.data(), x.data(), panels.data(), b.data(), R, C, OC);
    for (int i = 0; i < R * OC; ++i) EXPECT_NEAR(got[size_t(i)], ref[size_t(i)], 1e-5f) << "R " << R << " i " << i;
  }
  K::matmul_forward_panels<Exec>(one.data(), x.data() + 12 * C, panels.data(), b.data(), 1, C, OC);
  EXPECT_EQ(0, std::memcmp(one.data(), got.data() + 12 * OC, OC * sizeof(float))) << "row 12 depends on the batch";
  K::matmul_forward_panels<Exec>(nob.data(), x.data(), panels.data(), nullptr, 21, C, OC);
  for (int i = 0; i < 21 * OC; ++i) EXPECT_NEAR(nob[size_t(i)] + b[size_t(i % OC)], ref[size_t(i)], 1e-5f);
}

// The sampler's matmul where the panels do not apply: it equals the BLAS matmul, and a row's result is
// bitwise the same whatever the rows around it (a BLAS GEMM may block rows differently by M).
TEST(Kernels, RowMatmulMatchesBlasAndRowsAreIndependent) {
  const int C = 37, OC = 17, N = 21;  // C: two blocks of 16 and a tail
  auto W = randn(size_t(OC) * C, 7), b = randn(OC, 8), x = randn(size_t(N) * C, 9);
  std::vector<float> ref(size_t(N) * OC), got(size_t(N) * OC), one(OC), nob(size_t(N) * OC);
  K::matmul_forward<Exec>(ref.data(), x.data(), W.data(), b.data(), N, C, OC);
  K::matmul_forward_rows<Exec>(got.data(), x.data(), W.data(), b.data(), N, C, OC);
  for (int i = 0; i < N * OC; ++i) EXPECT_NEAR(got[size_t(i)], ref[size_t(i)], 1e-5f) << "i " << i;
  for (int r : {0, 12, 20}) {
    K::matmul_forward_rows<Exec>(one.data(), x.data() + r * C, W.data(), b.data(), 1, C, OC);
    EXPECT_EQ(0, std::memcmp(one.data(), got.data() + r * OC, OC * sizeof(float)))
        << "row " << r << " depends on the batch";
  }
  K::matmul_forward_rows<Exec>(nob.data(), x.data(), W.data(), nullptr, N, C, OC);
  for (int i = 0; i < N * OC; ++i) EXPECT_NEAR(nob[size_t(i)] + b[size_t(i % OC)], ref[size_t(i)], 1e-5f);
}

}  // namespace
}  // namespace mobula::rl
