// LoRA adapters on a frozen base (rl/model/lora.h, rl/algo/lora_batch.h): against PyTorch
// (tests/model/golden/make_lora_golden.py), a fresh adapter is the base model, merged weights
// match the unmerged delta, batching several adapters changes no bit of any adapter's result,
// and an adapter learns.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "rl/algo/lora_batch.h"
#include "rl/model/lora.h"
#include "rl/model/sampler.h"
#include "rl/model/weights.h"

namespace mobula::rl {
namespace {

const std::string kGolden = std::string(MOBULA_TEST_SOURCE_DIR) + "/tests/model/data/lora_golden.safetensors";

template <class V>
std::vector<float> host(const V& v) {
  std::vector<float> out(v.extent(0));
  Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(out.data(), out.size());
  Kokkos::deep_copy(h, v);
  return out;
}

template <class V>
void upload(const V& v, std::span<const float> data) {
  Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(data.data(), data.size());
  Kokkos::deep_copy(v, h);
}

TEST(Lora, MatchesPyTorch) {
  auto file = io::read_safetensors(kGolden);
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  auto cfg = read_weights_config(kGolden);
  ASSERT_TRUE(cfg.is_ok()) << cfg.status().message();
  const auto& t = file->tensors;
  const auto specs = nlohmann::json::parse(file->metadata.at("lora"));
  const auto rows = nlohmann::json::parse(file->metadata.at("row_adapter")).get<std::vector<int>>();
  const int B = static_cast<int>(t.at("input.tokens").shape[0]), T = static_cast<int>(t.at("input.tokens").shape[1]);
  auto m = Gpt<>::create(*cfg, B);
  ASSERT_TRUE(m.is_ok());
  ASSERT_TRUE(load_weights(kGolden, *cfg, m->params).is_ok());
  m->set_frozen_base(true);
  std::vector<LoraAdapter<>> ads;
  for (size_t k = 0; k < specs.size(); ++k) {
    LoraConfig lc{specs[k]["rank"].get<int>(), specs[k]["alpha"].get<float>(), 0};
    auto a = LoraAdapter<>::create(*cfg, lc);
    ASSERT_TRUE(a.is_ok()) << a.status().message();
    std::vector<float> p(a->num_params());
    for (const auto& ti : a->tensors()) {
      const auto src = t.at("lora" + std::to_string(k) + "." + ti.name).as_f32();
      ASSERT_EQ(src.size(), ti.size()) << ti.name;
      std::copy(src.begin(), src.end(), p.begin() + long(ti.offset));
    }
    upload(a->params, p);
    ads.push_back(std::move(*a));
  }
  std::vector<LoraSegment<Kokkos::DefaultExecutionSpace>> segs;
  for (int r = 0; r < B; ++r)
    if (rows[r] >= 0) {
      if (!segs.empty() && segs.back().adapter == &ads[size_t(rows[r])])
        ++segs.back().rows;
      else
        segs.push_back({r, 1, &ads[size_t(rows[r])]});
    }
  ASSERT_TRUE(m->set_lora(segs).is_ok());
  const auto tok = t.at("input.tokens").as_i32(), tgt = t.at("input.targets").as_i32();
  std::vector<int> tokens(tok.begin(), tok.end()), targets(tgt.begin(), tgt.end());
  std::vector<float> logp(tokens.size());
  ASSERT_TRUE(m->forward(tokens, targets, B, T, logp).is_ok());
  const auto ref_logits = t.at("out.logits").as_f32();
  const auto logits = m->logits_host();
  for (size_t i = 0; i < logits.size(); ++i)
    ASSERT_NEAR(logits[i], ref_logits[i], 2e-4f * (1 + std::fabs(ref_logits[i]))) << i;
  const auto ref_logp = t.at("out.logp").as_f32();
  for (size_t i = 0; i < logp.size(); ++i) EXPECT_NEAR(logp[i], ref_logp[i], 2e-4f * (1 + std::fabs(ref_logp[i])));

  const auto w = t.at("input.w").as_f32();
  ASSERT_TRUE(m->backward(w).is_ok());
  for (size_t k = 0; k < ads.size(); ++k) {
    const auto g = host(ads[k].grads);
    for (const auto& ti : ads[k].tensors()) {
      const auto ref = t.at("grad.lora" + std::to_string(k) + "." + ti.name).as_f32();
      float scale = 0;
      for (float x : ref) scale = std::max(scale, std::fabs(x));
      ASSERT_GT(scale, 0.f) << ti.name;
      for (size_t i = 0; i < ref.size(); ++i)
        ASSERT_NEAR(g[ti.offset + i], ref[i], 1e-3f * scale + 1e-6f)
            << "lora" << k << "." << ti.name << "[" << i << "]";
    }
  }
  // The base is frozen: none of its gradients moved.
  for (float x : host(m->grads)) ASSERT_EQ(x, 0.f);
}

GptConfig small() {
  GptConfig c;
  c.vocab = 17;
  c.max_seq = 16;
  c.layers = 2;
  c.heads = 2;
  c.d_model = 32;
  return c;
}

// An adapter whose B is not zero (a trained one), so every gradient is non-trivial.
LoraAdapter<> trained_adapter(const GptConfig& c, int rank, uint64_t seed) {
  auto a = LoraAdapter<>::create(c, LoraConfig{rank, 2.0f * rank, seed});
  EXPECT_TRUE(a.is_ok());
  auto p = host(a->params);
  uint64_t s = seed * 7919 + 1;
  for (auto& x : p) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x += static_cast<float>((s >> 40) % 2001) * 1e-4f - 0.1f;
  }
  upload(a->params, p);
  return std::move(*a);
}

std::vector<Datum> data(const GptConfig& c, int n, uint64_t seed, bool rl) {
  std::vector<Datum> out;
  uint64_t s = seed;
  auto next = [&](int mod) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<int>((s >> 33) % uint64_t(mod));
  };
  for (int i = 0; i < n; ++i) {
    const int T = 3 + next(c.max_seq - 3);
    Datum d;
    for (int t = 0; t < T; ++t) {
      d.tokens.push_back(next(c.vocab));
      d.target_tokens.push_back(next(c.vocab));
      d.weights.push_back(t >= 1 ? 1.f : 0.f);
      if (rl) {
        d.logprobs_old.push_back(-1.0f - 0.1f * float(next(10)));
        d.advantages.push_back(float(next(3)) - 1.0f);
      }
    }
    out.push_back(std::move(d));
  }
  return out;
}

Gpt<> base_model(const GptConfig& c, int max_batch) {
  auto m = Gpt<>::create(c, max_batch);
  EXPECT_TRUE(m.is_ok());
  m->init(5);
  m->set_frozen_base(true);
  return std::move(*m);
}

TEST(Lora, NewAdapterIsTheBaseModel) {
  const GptConfig c = small();
  Gpt<> m = base_model(c, 8);
  auto a = LoraAdapter<>::create(c, LoraConfig{4, 8, 3});
  ASSERT_TRUE(a.is_ok());
  const auto d = data(c, 5, 11, false);
  auto base = forward_batch(m, d);
  ASSERT_TRUE(base.is_ok());
  LoraWork w{&*a, d, {}, false};
  auto got = forward_backward_lora(m, std::span(&w, 1), 8);
  ASSERT_TRUE(got[0].out.is_ok()) << got[0].out.status().message();
  EXPECT_EQ(got[0].out->logprobs, *base);  // B = 0: the delta adds exact zeros
}

TEST(Lora, MergedWeightsMatchTheDelta) {
  const GptConfig c = small();
  Gpt<> m = base_model(c, 8);
  LoraAdapter<> a = trained_adapter(c, 4, 9);
  const auto d = data(c, 4, 12, false);
  LoraWork w{&a, d, {}, false};
  auto lora = forward_backward_lora(m, std::span(&w, 1), 8);
  ASSERT_TRUE(lora[0].out.is_ok());
  Gpt<> merged = base_model(c, 8);
  auto p = host(merged.params);
  a.merge_into(p);
  upload(merged.params, p);
  merged.set_frozen_base(true);  // re-pack the changed weights
  auto ref = forward_batch(merged, d);
  ASSERT_TRUE(ref.is_ok());
  double diff = 0;
  for (size_t i = 0; i < d.size(); ++i)
    for (size_t t = 0; t < d[i].tokens.size(); ++t)
      diff = std::max(diff, double(std::fabs((*ref)[i][t] - lora[0].out->logprobs[i][t])));
  EXPECT_LT(diff, 1e-4);
  EXPECT_GT(diff, 0.0);  // a different rounding, not the same computation
}

// The service batches its clients' requests: an adapter's log-probs, stats and gradients must be the
// same bits alone and beside others (different ranks, losses, lengths, and a forward-only request).
TEST(Lora, BatchingAdaptersChangesNoBit) {
  const GptConfig c = small();
  std::vector<LoraAdapter<>> ads;
  for (int k = 0; k < 4; ++k) ads.push_back(trained_adapter(c, 2 + 2 * k, uint64_t(20 + k)));
  std::vector<std::vector<Datum>> ds;
  for (int k = 0; k < 4; ++k) ds.push_back(data(c, 3 + 2 * k, uint64_t(40 + k), k % 2 == 1));
  std::vector<LossConfig> losses(4);
  losses[1].fn = LossFn::kPpo;
  losses[3].fn = LossFn::kImportanceSampling;
  const int chunk = 4;
  std::vector<LoraWork> work;
  for (int k = 0; k < 4; ++k) work.push_back({&ads[size_t(k)], ds[size_t(k)], losses[size_t(k)], k != 2});

  std::vector<LoraWorkResult> alone;
  std::vector<std::vector<float>> alone_grads;
  {
    Gpt<> m = base_model(c, chunk);
    for (int k = 0; k < 4; ++k) {
      auto r = forward_backward_lora(m, std::span(&work[size_t(k)], 1), chunk);
      ASSERT_TRUE(r[0].out.is_ok()) << r[0].out.status().message();
      alone.push_back(std::move(r[0]));
      alone_grads.push_back(host(ads[size_t(k)].grads));
      ads[size_t(k)].zero_grad();
    }
  }
  for (int cap : {8, 16, 64}) {
    Gpt<> m = base_model(c, cap);
    auto r = forward_backward_lora(m, work, chunk);
    for (int k = 0; k < 4; ++k) {
      ASSERT_TRUE(r[size_t(k)].out.is_ok()) << r[size_t(k)].out.status().message();
      EXPECT_EQ(r[size_t(k)].out->logprobs, alone[size_t(k)].out->logprobs) << "adapter " << k << " cap " << cap;
      EXPECT_EQ(r[size_t(k)].tokens, alone[size_t(k)].tokens);
      EXPECT_EQ(r[size_t(k)].out->stats.loss, alone[size_t(k)].out->stats.loss) << k;
      const auto g = host(ads[size_t(k)].grads);
      EXPECT_EQ(std::memcmp(g.data(), alone_grads[size_t(k)].data(), g.size() * sizeof(float)), 0)
          << "adapter " << k << " cap " << cap;
      if (k == 2) {
        for (float x : g) ASSERT_EQ(x, 0.f);  // forward only
      }
      ads[size_t(k)].zero_grad();
    }
  }
}

TEST(Lora, MalformedRequestFailsAloneOthersRun) {
  const GptConfig c = small();
  Gpt<> m = base_model(c, 16);
  LoraAdapter<> a = trained_adapter(c, 2, 1), b = trained_adapter(c, 2, 2);
  auto good = data(c, 3, 5, false), bad = data(c, 2, 6, false);
  bad[1].tokens[0] = c.vocab;  // outside the vocabulary
  std::vector<LoraWork> work{{&a, good, {}, true}, {&b, bad, {}, true}};
  auto r = forward_backward_lora(m, work, 4);
  EXPECT_TRUE(r[0].out.is_ok());
  ASSERT_FALSE(r[1].out.is_ok());
  EXPECT_NE(r[1].out.status().message().find("datum 1"), std::string::npos) << r[1].out.status().message();
  for (float x : host(b.grads)) ASSERT_EQ(x, 0.f);
}

TEST(Lora, AdapterLearnsWhileTheBaseStaysFixed) {
  const GptConfig c = small();
  Gpt<> m = base_model(c, 16);
  {
    // GPT-2's 0.02 init ties the output head to tiny embeddings: logits of a frozen random base
    // stay within ~0.6 of each other whatever the adapter does. A trained base has larger ones.
    auto p = host(m.params);
    const TensorInfo* wte = m.tensor("wte");
    for (size_t i = 0; i < wte->size(); ++i) p[wte->offset + i] *= 20.f;
    upload(m.params, p);
    m.set_frozen_base(true);
  }
  const auto base_before = host(m.params);
  auto a = LoraAdapter<>::create(c, LoraConfig{8, 16, 4});
  ASSERT_TRUE(a.is_ok());
  AdamWConfig oc;
  oc.lr = 1e-2f;
  AdamW<> opt(oc, a->tensors(), a->num_params());
  auto d = data(c, 6, 99, false);
  for (auto& x : d)  // a rule the adapter can learn: the next token is 3 * token + 1 (mod V)
    for (size_t t = 0; t < x.tokens.size(); ++t) x.target_tokens[t] = (3 * x.tokens[t] + 1) % c.vocab;
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    LoraWork w{&*a, d, {}, true};
    auto r = forward_backward_lora(m, std::span(&w, 1), 8);
    ASSERT_TRUE(r[0].out.is_ok());
    if (step == 0) first = r[0].out->stats.loss;
    last = r[0].out->stats.loss;
    lora_step(*a, opt, r[0].tokens);
  }
  EXPECT_LT(last, 0.5 * first) << "loss " << first << " -> " << last;
  EXPECT_EQ(host(m.params), base_before);
}

// The service samples every adapter's requests of a round in one decode batch: each request's
// samples are the bits it gets alone, and the unmerged delta agrees with merged weights.
TEST(Lora, SamplingAdaptersTogetherChangesNoBit) {
  const GptConfig c = small();
  Gpt<> m = base_model(c, 8);
  std::vector<LoraAdapter<>> ads;
  for (int k = 0; k < 3; ++k) ads.push_back(trained_adapter(c, 2 + 3 * k, uint64_t(60 + k)));
  std::vector<SampleBatch<>> reqs;
  for (int k = 0; k < 3; ++k) {
    SampleBatch<> b;
    b.prompts = {{1, 2, 3}, {4, 5}, {6, 7, 8, 9}};
    b.prompts.resize(size_t(1 + k));
    b.group = 2 + k;
    for (size_t i = 0; i < b.prompts.size() * size_t(b.group); ++i) b.seeds.push_back(1000 * uint64_t(k) + i);
    b.params.max_new_tokens = 4 + 2 * k;
    b.params.temperature = k == 1 ? 0.0f : 1.0f;
    b.params.stop_tokens = {int(k) + 10};
    b.adapter = &ads[size_t(k)];
    reqs.push_back(b);
  }
  reqs.push_back(reqs[0]);
  reqs.back().adapter = nullptr;  // the base alone, beside them
  auto s = Sampler<>::create(c, 64, c.max_seq);
  ASSERT_TRUE(s.is_ok());
  s->set_fixed_weights(true);  // as the service; the merged buffer below is another buffer: repacked
  auto together = s->sample_many(m.params, reqs);
  ASSERT_TRUE(together.is_ok()) << together.status().message();
  for (size_t k = 0; k < reqs.size(); ++k) {
    auto alone = s->sample_many(m.params, std::span(&reqs[k], 1));
    ASSERT_TRUE(alone.is_ok());
    ASSERT_EQ((*alone)[0].size(), (*together)[k].size());
    for (size_t i = 0; i < (*alone)[0].size(); ++i) {
      EXPECT_EQ((*alone)[0][i].tokens, (*together)[k][i].tokens) << "request " << k << " row " << i;
      EXPECT_EQ((*alone)[0][i].model_logprobs, (*together)[k][i].model_logprobs) << "request " << k << " row " << i;
    }
  }
  EXPECT_NE((*together)[0][0].model_logprobs, (*together)[3][0].model_logprobs);  // the adapter does something
  // Against merged weights: the first token's log-prob under the model agrees closely.
  auto p = host(m.params);
  ads[0].merge_into(p);
  Kokkos::View<float*> merged("merged", p.size());
  upload(merged, p);
  SampleBatch<> b0 = reqs[0];
  b0.adapter = nullptr;
  auto ref = s->sample_many(merged, std::span(&b0, 1));
  ASSERT_TRUE(ref.is_ok());
  for (size_t i = 0; i < (*ref)[0].size(); ++i) {
    ASSERT_EQ((*ref)[0][i].tokens[0], (*together)[0][i].tokens[0]);
    EXPECT_NEAR((*ref)[0][i].model_logprobs[0], (*together)[0][i].model_logprobs[0], 1e-4);
  }
}

}  // namespace
}  // namespace mobula::rl
