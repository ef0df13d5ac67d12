// Policy-gradient losses as per-token weights: hand-computed values and finite differences.
#include "rl/algo/losses.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>

namespace mobula::rl {
namespace {

TEST(Losses, CrossEntropyIsMeanOverMask) {
  std::vector<float> lp = {-1.0f, -2.0f, -3.0f, -4.0f}, mask = {1, 0, 1, 1}, w(4);
  auto st = cross_entropy_weights(lp, mask, w);
  ASSERT_TRUE(st.is_ok());
  EXPECT_NEAR(st->loss, (1 + 3 + 4) / 3.0, 1e-9);
  EXPECT_EQ(st->tokens, 3);
  EXPECT_FLOAT_EQ(w[0], -1.0f / 3);
  EXPECT_FLOAT_EQ(w[1], 0.0f);
}

TEST(Losses, PpoHandComputed) {
  // Token 0: ratio e^0.5=1.6487 > 1.2, A=+1 -> clipped (gradient 0), objective 1.2.
  // Token 1: ratio e^-0.5=0.6065 < 0.8, A=+1 -> unclipped branch is the min, gradient -r*A/n.
  // Token 2: ratio 1, A=-2 -> unclipped. Token 3 masked.
  std::vector<float> lp = {0.5f, -0.5f, 0.0f, 9.0f}, old = {0, 0, 0, 0}, adv = {1, 1, -2, 5}, mask = {1, 1, 1, 0}, w(4);
  auto st = ppo_weights(lp, old, adv, mask, 0.2f, 0.2f, {}, 0.0f, w);
  ASSERT_TRUE(st.is_ok());
  const double r1 = std::exp(-0.5);
  EXPECT_NEAR(st->loss, -(1.2 + r1 * 1 + 1 * -2) / 3.0, 1e-6);
  EXPECT_NEAR(st->clip_fraction, 1.0 / 3, 1e-9);
  EXPECT_FLOAT_EQ(w[0], 0.0f);
  EXPECT_NEAR(w[1], -r1 / 3, 1e-7);
  EXPECT_NEAR(w[2], 2.0 / 3, 1e-7);
  EXPECT_FLOAT_EQ(w[3], 0.0f);
  // Negative advantage with ratio below 1-eps: clipped objective is smaller -> gradient 0.
  std::vector<float> lp2 = {-0.5f}, old2 = {0}, adv2 = {-1}, m2 = {1}, w2(1);
  auto st2 = ppo_weights(lp2, old2, adv2, m2, 0.2f, 0.2f, {}, 0.0f, w2);
  ASSERT_TRUE(st2.is_ok());
  EXPECT_FLOAT_EQ(w2[0], 0.0f);
  EXPECT_NEAR(st2->loss, 0.8, 1e-6);
}

TEST(Losses, PpoWeightsAreTheDerivative) {
  // Finite differences of the loss in logp (away from the clip kinks) incl. the KL term.
  std::vector<float> lp = {-1.1f, -0.3f, -2.0f, -0.7f, -0.05f}, old = {-1.0f, -0.9f, -2.0f, -0.2f, -0.3f};
  std::vector<float> adv = {0.7f, -1.3f, 2.0f, 0.4f, -0.2f}, mask = {1, 1, 1, 0, 1},
                     ref = {-1.2f, -0.4f, -1.5f, -0.1f, -0.1f};
  std::vector<float> w(5), tmp(5);
  auto st = ppo_weights(lp, old, adv, mask, 0.2f, 0.28f, ref, 0.1f, w);
  ASSERT_TRUE(st.is_ok());
  EXPECT_GT(st->kl, 0);
  for (size_t i = 0; i < lp.size(); ++i) {
    auto f = [&](float d) {
      auto x = lp;
      x[i] += d;
      return ppo_weights(x, old, adv, mask, 0.2f, 0.28f, ref, 0.1f, tmp)->loss;
    };
    const double num = (f(1e-3f) - f(-1e-3f)) / 2e-3;
    EXPECT_NEAR(w[i], num, 2e-4) << i;
  }
}

TEST(Losses, ImportanceSamplingWeights) {
  std::vector<float> lp = {-1.0f, -2.0f}, old = {-1.5f, -2.0f}, adv = {2.0f, -1.0f}, mask = {1, 1}, w(2);
  auto st = importance_sampling_weights(lp, old, adv, mask, w);
  ASSERT_TRUE(st.is_ok());
  EXPECT_NEAR(w[0], -std::exp(0.5) * 2 / 2, 1e-6);
  EXPECT_NEAR(w[1], 1.0 / 2, 1e-6);
  EXPECT_NEAR(st->mean_ratio, (std::exp(0.5) + 1) / 2, 1e-6);
}

TEST(Losses, GroupAdvantages) {
  std::vector<float> r = {1, 0, 0, 1, 0.5f, 0.5f, 0.5f, 0.5f};
  auto a = group_advantages(r, 4, true);
  ASSERT_TRUE(a.is_ok());
  const double sd = std::sqrt(1.0 / 3.0);  // unbiased std of {1,0,0,1}
  EXPECT_NEAR((*a)[0], 0.5 / sd, 1e-5);
  EXPECT_NEAR((*a)[1], -0.5 / sd, 1e-5);
  for (int k = 4; k < 8; ++k) EXPECT_EQ((*a)[size_t(k)], 0.0f);  // identical rewards: no signal
  auto b = group_advantages(r, 4, false);
  EXPECT_NEAR((*b)[0], 0.5, 1e-7);
  EXPECT_FALSE(group_advantages(r, 3, true).is_ok());
}

TEST(Losses, SizeMismatchIsAnError) {
  std::vector<float> a(3), b(2), w(3);
  EXPECT_FALSE(cross_entropy_weights(a, b, w).is_ok());
  EXPECT_FALSE(ppo_weights(a, a, a, a, 0.2f, 0.2f, b, 0.1f, w).is_ok());
}

}  // namespace
}  // namespace mobula::rl

#include "io/safetensors.h"

namespace mobula::rl {
namespace {

// PPO-clip + k3 KL against PyTorch autograd (tests/model/golden/make_ppo_golden.py).
TEST(Losses, PpoMatchesPyTorchGolden) {
  auto f = io::read_safetensors(std::string(MOBULA_TEST_SOURCE_DIR) + "/tests/model/data/ppo_golden.safetensors");
  ASSERT_TRUE(f.is_ok()) << f.status().message();
  auto v = [&](const char* k) { return f->tensors.at(k).as_f32(); };
  const auto logp = v("logp"), old = v("logp_old"), adv = v("adv"), mask = v("mask"), ref = v("logp_ref");
  const auto grad = v("grad");
  std::vector<float> w(logp.size());
  auto st = ppo_weights(logp, old, adv, mask, 0.2f, 0.28f, ref, 0.05f, w);
  ASSERT_TRUE(st.is_ok());
  EXPECT_NEAR(st->loss, v("loss")[0], 1e-5);
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(w[i], grad[i], 1e-6f) << i;
}

}  // namespace
}  // namespace mobula::rl
