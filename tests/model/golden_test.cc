// mobula's model against PyTorch (float64 reference, tests/model/golden/make_golden.py): same
// weights, same batch; logits, log-probs, entropy, loss and every parameter gradient.
#include <gtest/gtest.h>

#include <cmath>

#include "io/safetensors.h"
#include "rl/model/gpt.h"
#include "rl/model/weights.h"

namespace mobula::rl {
namespace {

const std::string kGolden = std::string(MOBULA_TEST_SOURCE_DIR) + "/tests/model/data/gpt_golden.safetensors";

// Tolerances: float32 arithmetic against a float64 reference. Logits and log-probs are O(1..10);
// gradients are compared relative to the largest gradient of their tensor.
constexpr float kOutTol = 2e-4f;
constexpr float kGradRelTol = 1e-3f;

TEST(Golden, MatchesPyTorch) {
  auto file = io::read_safetensors(kGolden);
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  auto cfg = read_weights_config(kGolden);
  ASSERT_TRUE(cfg.is_ok()) << cfg.status().message();
  const auto& t = file->tensors;
  const auto tok = t.at("input.tokens").as_i32();
  const auto tgt = t.at("input.targets").as_i32();
  const auto w = t.at("input.w").as_f32();
  const int B = static_cast<int>(t.at("input.tokens").shape[0]), T = static_cast<int>(t.at("input.tokens").shape[1]);

  auto m = Gpt<>::create(*cfg, B);
  ASSERT_TRUE(m.is_ok());
  ASSERT_TRUE(load_weights(kGolden, *cfg, m->params).is_ok());
  std::vector<int> tokens(tok.begin(), tok.end()), targets(tgt.begin(), tgt.end());
  std::vector<float> logp(tokens.size()), ent(tokens.size());
  ASSERT_TRUE(m->forward(tokens, targets, B, T, logp, ent).is_ok());

  const auto ref_logits = t.at("out.logits").as_f32();
  const auto logits = m->logits_host();
  ASSERT_EQ(logits.size(), ref_logits.size());
  for (size_t i = 0; i < logits.size(); ++i)
    ASSERT_NEAR(logits[i], ref_logits[i], kOutTol * (1 + std::fabs(ref_logits[i]))) << i;
  const auto ref_logp = t.at("out.logp").as_f32(), ref_ent = t.at("out.entropy").as_f32();
  double loss = 0;
  for (size_t i = 0; i < logp.size(); ++i) {
    EXPECT_NEAR(logp[i], ref_logp[i], kOutTol * (1 + std::fabs(ref_logp[i]))) << i;
    EXPECT_NEAR(ent[i], ref_ent[i], kOutTol) << i;
    loss += double(w[i]) * logp[i];
  }
  EXPECT_NEAR(loss, t.at("out.loss").as_f32()[0], 1e-3);

  m->zero_grad();
  ASSERT_TRUE(m->backward(w).is_ok());
  auto g = Kokkos::create_mirror_view(m->grads);
  Kokkos::deep_copy(g, m->grads);
  for (const auto& ti : m->tensors()) {
    const auto ref = t.at("grad." + ti.name).as_f32();
    ASSERT_EQ(ref.size(), ti.size()) << ti.name;
    float scale = 0;
    for (float x : ref) scale = std::max(scale, std::fabs(x));
    for (size_t i = 0; i < ref.size(); ++i)
      ASSERT_NEAR(g(ti.offset + i), ref[i], kGradRelTol * scale + 1e-6f) << ti.name << "[" << i << "]";
  }
}

}  // namespace
}  // namespace mobula::rl
