// Sampling with the KV cache: greedy equals argmax of full forward passes, a sequence does not
// depend on its batch, prefix sharing changes cost but not results, stop tokens, top-k/top-p.
#include "rl/model/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "rl/model/decode_kernels.h"
#include "rl/model/gpt.h"
#include "rl/model/tokenizer.h"
#include "rl/model/weights.h"

namespace mobula::rl {
namespace {

// d_model 16 x 2 heads: head size 8, the portable attention loops. Head sizes 16..128 take the host
// vector path (register accumulators), so the tests also run d_model 32 x 2 and 64 x 1. Vocab 17
// puts the output head on kernels::matmul_forward_rows, vocab 32 on the weight panels; d_model 24
// (not a multiple of 16) puts every matmul on matmul_forward_rows.
GptConfig cfg(int d_model = 16, int heads = 2, int vocab = 17) {
  GptConfig c;
  c.vocab = vocab;
  c.max_seq = 24;
  c.layers = 2;
  c.heads = heads;
  c.d_model = d_model;
  return c;
}
const GptConfig kConfigs[] = {cfg(), cfg(32, 2), cfg(64, 1), cfg(64, 2, 32), cfg(24, 3)};

// A model with O(1) random weights so that distributions are far from uniform.
Gpt<> model(const GptConfig& c = cfg()) {
  auto m = Gpt<>::create(c, 4);
  EXPECT_TRUE(m.is_ok());
  m->init(5);
  auto h = Kokkos::create_mirror_view(m->params);
  Kokkos::deep_copy(h, m->params);
  for (size_t i = 0; i < h.extent(0); ++i) h(i) += static_cast<float>(std::sin(0.37 * double(i)) * 0.5);
  Kokkos::deep_copy(m->params, h);
  return std::move(m).value();
}

TEST(Sampler, GreedyEqualsArgmaxOfFullForward) {
  for (const GptConfig& c : kConfigs) {
    SCOPED_TRACE(c.to_string());
    auto m = model(c);
    auto s = Sampler<>::create(c, 4, 24);
    ASSERT_TRUE(s.is_ok()) << s.status().message();
    SamplingParams sp;
    sp.temperature = 0;
    sp.max_new_tokens = 12;
    // Prompt + new tokens from 13 to 18 positions: the attention's blocks of 16 positions, whole
    // and partial.
    const std::vector<std::vector<int>> prompts = {{3, 4, 5}, {9}, {1, 2, 3, 4, 5, 6}};
    auto out = s->sample(m.params, prompts, {1, 2, 3}, sp);
    ASSERT_TRUE(out.is_ok()) << out.status().message();
    for (size_t r = 0; r < prompts.size(); ++r) {
      std::vector<int> seq = prompts[r];
      ASSERT_EQ((*out)[r].tokens.size(), 12u);
      for (int k = 0; k < 12; ++k) {
        const int T = static_cast<int>(seq.size());
        std::vector<int> tg(seq.size(), -1);
        std::vector<float> lp(seq.size());
        ASSERT_TRUE(m.forward(seq, tg, 1, T, lp).is_ok());
        const auto logits = m.logits_host();
        const float* last = logits.data() + size_t(T - 1) * c.vocab;
        const int want = static_cast<int>(std::max_element(last, last + c.vocab) - last);
        ASSERT_EQ((*out)[r].tokens[size_t(k)], want) << "row " << r << " token " << k;
        // The model log-prob reported by the sampler matches the full forward's.
        double mx = *std::max_element(last, last + c.vocab), sum = 0;
        for (int v = 0; v < c.vocab; ++v) sum += std::exp(last[v] - mx);
        EXPECT_NEAR((*out)[r].model_logprobs[size_t(k)], last[want] - mx - std::log(sum), 1e-4);
        seq.push_back(want);
      }
    }
  }
}

TEST(Sampler, SequenceDoesNotDependOnItsBatch) {
  for (const GptConfig& c : kConfigs) {
    SCOPED_TRACE(c.to_string());
    auto m = model(c);
    auto s = Sampler<>::create(c, 4, 24);
    ASSERT_TRUE(s.is_ok());
    SamplingParams sp;
    sp.temperature = 1.0f;
    sp.max_new_tokens = 15;
    auto alone = s->sample(m.params, {{5, 6, 7}}, {42}, sp);
    auto crowd = s->sample(m.params, {{1}, {5, 6, 7}, {2, 2, 2, 2, 2}, {8, 9}}, {7, 42, 9, 11}, sp);
    ASSERT_TRUE(alone.is_ok() && crowd.is_ok());
    EXPECT_EQ((*alone)[0].tokens, (*crowd)[1].tokens);
    EXPECT_EQ((*alone)[0].logprobs, (*crowd)[1].logprobs);
    EXPECT_EQ((*alone)[0].model_logprobs, (*crowd)[1].model_logprobs);
    // A different seed gives a different sequence (with overwhelming probability at T=1).
    auto other = s->sample(m.params, {{5, 6, 7}}, {43}, sp);
    EXPECT_NE((*alone)[0].tokens, (*other)[0].tokens);
  }
}

// The decode prefetches (next weights, next attention's K/V rows) are hints: with or without them,
// every token and log-probability is the same, bitwise. 12 rows: two row blocks of the panel matmul.
TEST(Sampler, PrefetchesChangeNoResult) {
  for (const GptConfig& c : kConfigs) {
    SCOPED_TRACE(c.to_string());
    auto m = model(c);
    auto s = Sampler<>::create(c, 12, 24);
    ASSERT_TRUE(s.is_ok());
    SamplingParams sp;
    sp.max_new_tokens = 14;
    std::vector<std::vector<int>> prompts;
    std::vector<uint64_t> seeds;
    for (int r = 0; r < 12; ++r) {
      prompts.push_back(std::vector<int>(size_t(1 + r % 5), r % c.vocab));
      seeds.push_back(uint64_t(100 + r));
    }
    auto with = s->sample(m.params, prompts, seeds, sp);
    s->set_prefetch(false);
    auto without = s->sample(m.params, prompts, seeds, sp);
    ASSERT_TRUE(with.is_ok() && without.is_ok());
    for (size_t r = 0; r < prompts.size(); ++r) {
      EXPECT_EQ((*with)[r].tokens, (*without)[r].tokens) << r;
      EXPECT_EQ((*with)[r].logprobs, (*without)[r].logprobs) << r;
      EXPECT_EQ((*with)[r].model_logprobs, (*without)[r].model_logprobs) << r;
    }
  }
}

// The prefetch stream walks its ranges in order, a line at a time, and spreads them over the ticks.
TEST(PrefetchStream, WalksRangesAndSpreadsLines) {
  std::vector<char> buf(4096);
  kernels::PrefetchStream pf;
  pf.base = buf.data();
  pf.ranges = {{8, 8}, {0, 100}, {1024, 1024 + 3 * 64}, {2048, 2048}};  // none, 2 lines, 3 lines, none
  pf.start(50);
  EXPECT_EQ(pf.every, 10);  // 5 lines over 50 ticks
  std::vector<long> at;
  while (!pf.done()) {
    at.push_back(pf.at);
    pf.fetch_one();
  }
  EXPECT_EQ(at, (std::vector<long>{0, 64, 1024, 1088, 1152}));
  pf.start(50);  // ticks: a line per 10, the ones due fetched in a run, across ranges
  pf.tick(25);
  EXPECT_EQ(pf.at, 1024);  // lines 0 and 64 fetched, 5 ticks of credit left
  pf.tick(5);
  EXPECT_EQ(pf.at, 1088);
  pf.tick(100);  // more than the lines left: the stream ends
  EXPECT_TRUE(pf.done());
  pf.start(3);  // more lines than ticks: one per tick, whatever is left is not fetched
  EXPECT_EQ(pf.every, 1);
  EXPECT_FALSE(pf.done());
  pf.stop();
  EXPECT_TRUE(pf.done());
  pf.ranges.clear();
  pf.start(10);
  EXPECT_TRUE(pf.done());
}

TEST(Sampler, PrefixSharingSameResultsFewerSteps) {
  auto m = model();
  auto s = Sampler<>::create(cfg(), 8, 24);
  ASSERT_TRUE(s.is_ok());
  SamplingParams sp;
  sp.max_new_tokens = 6;
  const std::vector<std::vector<int>> prompts = {{1, 2, 3, 4, 5, 6, 7, 8}, {9, 10, 11, 12}};
  const std::vector<uint64_t> seeds = {1, 2, 3, 4, 5, 6, 7, 8};
  auto shared = s->sample_groups(m.params, prompts, 4, seeds, sp);
  ASSERT_TRUE(shared.is_ok()) << shared.status().message();
  const long shared_steps = s->last_row_steps();
  std::vector<std::vector<int>> flat;
  for (const auto& p : prompts)
    for (int g = 0; g < 4; ++g) flat.push_back(p);
  auto plain = s->sample(m.params, flat, seeds, sp);
  ASSERT_TRUE(plain.is_ok());
  const long plain_steps = s->last_row_steps();
  for (size_t r = 0; r < flat.size(); ++r) {
    EXPECT_EQ((*shared)[r].tokens, (*plain)[r].tokens) << r;
    for (size_t k = 0; k < (*shared)[r].logprobs.size(); ++k)
      EXPECT_NEAR((*shared)[r].logprobs[k], (*plain)[r].logprobs[k], 1e-5f);
  }
  // Prefill rows: 7 + 3 shared vs 4 * (7 + 3) unshared; decode rows are the same.
  EXPECT_EQ(plain_steps - shared_steps, 3 * (7 + 3));
}

TEST(Sampler, StopTokensAndLengthLimit) {
  auto m = model();
  auto s = Sampler<>::create(cfg(), 4, 24);
  ASSERT_TRUE(s.is_ok());
  SamplingParams sp;
  sp.temperature = 0;
  sp.max_new_tokens = 10;
  auto free_run = s->sample(m.params, {{3, 4}}, {1}, sp);
  ASSERT_TRUE(free_run.is_ok());
  const int stop = (*free_run)[0].tokens[3];
  sp.stop_tokens = {stop};
  auto stopped = s->sample(m.params, {{3, 4}}, {1}, sp);
  ASSERT_TRUE(stopped.is_ok());
  const auto& toks = (*stopped)[0].tokens;
  ASSERT_FALSE(toks.empty());
  EXPECT_EQ(toks.back(), stop);
  EXPECT_LE(toks.size(), 4u);
  EXPECT_FALSE((*stopped)[0].finished_by_length);
  EXPECT_TRUE((*free_run)[0].finished_by_length);
  // The cache capacity bounds generation too: prompt 20 + at most 4 new tokens in 24 positions.
  sp.stop_tokens.clear();
  auto cap = s->sample(m.params, {std::vector<int>(20, 1)}, {1}, sp);
  ASSERT_TRUE(cap.is_ok());
  EXPECT_EQ((*cap)[0].tokens.size(), 4u);
  // The timing counts every token chosen by the last call, and its host share is part of the call.
  const auto& tm = s->last_timing();
  EXPECT_EQ(tm.picked, 4);
  EXPECT_GT(tm.pick_s, 0.0);
  EXPECT_LE(tm.pick_s, tm.total_s);
  auto two = s->sample(m.params, {{3, 4}, {5}}, {1, 2}, sp);  // a new call starts from zero
  ASSERT_TRUE(two.is_ok());
  EXPECT_EQ(s->last_timing().picked, long((*two)[0].tokens.size() + (*two)[1].tokens.size()));
}

TEST(Sampler, BadInputs) {
  auto m = model();
  auto s = Sampler<>::create(cfg(), 2, 24);
  ASSERT_TRUE(s.is_ok());
  SamplingParams sp;
  EXPECT_FALSE(s->sample(m.params, {{1}, {2}, {3}}, {1, 2, 3}, sp).is_ok());  // more rows than max_rows
  EXPECT_FALSE(s->sample(m.params, {{1}}, {1, 2}, sp).is_ok());               // seeds do not match
  EXPECT_FALSE(s->sample(m.params, {{}}, {1}, sp).is_ok());                   // empty prompt
  EXPECT_FALSE(s->sample(m.params, {{99}}, {1}, sp).is_ok());                 // token outside vocab
  EXPECT_FALSE(Sampler<>::create(cfg(), 2, 25).is_ok());                      // longer than context
}

TEST(PickToken, TopKTopPAndTemperature) {
  const float z[5] = {2.0f, 1.0f, 0.5f, 3.0f, -1.0f};
  SamplingParams sp;
  sp.top_k = 1;
  for (double u : {0.0, 0.5, 0.999}) {
    const auto [t, lp] = pick_token(z, 5, sp, u);
    EXPECT_EQ(t, 3);
    EXPECT_NEAR(lp, 0.0f, 1e-6f);
  }
  sp.top_k = 2;  // only tokens 3 and 0 can appear
  std::map<int, int> seen;
  for (int i = 0; i < 1000; ++i) seen[pick_token(z, 5, sp, stream_uniform(9, uint64_t(i))).first]++;
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[3], seen[0]);
  sp.top_k = 0;
  sp.top_p = 0.5f;  // p(3) = 0.61 already covers 0.5
  EXPECT_EQ(pick_token(z, 5, sp, 0.99).first, 3);
  sp.top_p = 1.0f;
  sp.temperature = 1.0f;
  // Empirical frequencies follow softmax(z).
  std::vector<int> counts(5, 0);
  const int n = 20000;
  for (int i = 0; i < n; ++i) counts[size_t(pick_token(z, 5, sp, stream_uniform(3, uint64_t(i))).first)]++;
  double sum = 0;
  for (float x : z) sum += std::exp(x);
  for (int v = 0; v < 5; ++v) EXPECT_NEAR(counts[size_t(v)] / double(n), std::exp(z[v]) / sum, 0.015) << v;
}

// The inverse-CDF walk goes over tokens by descending logit, ties by index: u picks the token whose
// interval covers it. Checked against that order built directly, on logits with ties, +-0, negatives.
TEST(PickToken, WalksTokensByDescendingLogitThenIndex) {
  const std::vector<float> z = {0.5f, -0.0f, 2.0f, 0.5f, -3.0f, 0.0f, 2.0f, -1.5f, 0.5f};
  const int V = static_cast<int>(z.size());
  std::vector<int> order(z.size());
  for (int v = 0; v < V; ++v) order[size_t(v)] = v;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return z[size_t(a)] > z[size_t(b)]; });
  double sum = 0;
  for (float x : z) sum += std::exp(double(x) - 2.0);
  SamplingParams sp;
  double lo = 0;
  for (int v : order) {
    const double width = std::exp(double(z[size_t(v)]) - 2.0) / sum;
    const auto [t, lp] = pick_token(z.data(), V, sp, lo + 0.5 * width);  // the middle of v's interval
    EXPECT_EQ(t, v) << "u " << lo + 0.5 * width;
    EXPECT_NEAR(lp, std::log(width), 1e-5);
    lo += width;
  }
}

TEST(Tokenizer, CharRoundTripAndErrors) {
  CharTokenizer tok("0123456789+=");
  EXPECT_EQ(tok.vocab_size(), 15);
  auto ids = tok.encode("12+7=19");
  ASSERT_TRUE(ids.is_ok());
  EXPECT_EQ((*ids)[0], 4);
  std::vector<int> with_special = *ids;
  with_special.insert(with_special.begin(), tok.bos());
  with_special.push_back(tok.eos());
  EXPECT_EQ(tok.decode(with_special), "12+7=19");
  auto bad = tok.encode("1*2");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("'*' at offset 1"), std::string::npos);
}

TEST(Weights, SaveLoadRoundTripAndMismatch) {
  auto m = model();
  const std::string path = testing::TempDir() + "/w.safetensors";
  ASSERT_TRUE(save_weights(path, cfg(), m.params).is_ok());
  auto m2 = Gpt<>::create(cfg(), 1);
  ASSERT_TRUE(m2.is_ok());
  ASSERT_TRUE(load_weights(path, cfg(), m2->params).is_ok());
  auto a = Kokkos::create_mirror_view(m.params);
  auto b = Kokkos::create_mirror_view(m2->params);
  Kokkos::deep_copy(a, m.params);
  Kokkos::deep_copy(b, m2->params);
  for (size_t i = 0; i < a.extent(0); ++i) ASSERT_EQ(a(i), b(i));
  GptConfig other = cfg();
  other.layers = 3;
  auto m3 = Gpt<>::create(other, 1);
  const Status s = load_weights(path, other, m3->params);
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("weights are for"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace mobula::rl
