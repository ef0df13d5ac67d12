// The Tinker-style TrainingClient (local backend): submission order, gradient accumulation
// semantics, state save/load bitwise, errors through futures, and an SFT run that learns.
#include "rl/api/training_client.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>

#include "io/safetensors.h"
#include "rl/algo/grpo.h"
#include "rl/api/sampling_client.h"
#include "rl/model/tokenizer.h"
#include "rl/tasks/task.h"

namespace mobula::rl {
namespace {

ClientOptions opts(uint64_t seed = 3) {
  ClientOptions o;
  o.model.vocab = 15;
  o.model.max_seq = 16;
  o.model.layers = 2;
  o.model.heads = 2;
  o.model.d_model = 32;
  o.seed = seed;
  o.max_batch = 4;
  o.sample_rows = 16;
  return o;
}

std::vector<float> weights_of(TrainingClient& c, const std::string& path) {
  auto r = c.save_weights_for_sampler(path).get();
  EXPECT_TRUE(r.is_ok()) << r.status().message();
  auto f = io::read_safetensors(path);
  std::vector<float> all;
  for (const auto& t : gpt_tensors(c.config())) {
    const auto v = f->tensors.at(t.name).as_f32();
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

TEST(TrainingClient, CallsRunInSubmissionOrder) {
  auto c = TrainingClient::create_local(opts());
  ASSERT_TRUE(c.is_ok()) << c.status().message();
  auto task = make_task("addition", 1);
  CharTokenizer tok((*task)->alphabet());
  std::vector<Future<ForwardBackwardOutput>> fbs;
  std::vector<Future<OptimStepOutput>> steps;
  for (int s = 0; s < 3; ++s) {
    fbs.push_back((*c)->forward_backward({*sft_datum(tok, (*task)->example(0, uint64_t(s)))}, {}));
    steps.push_back((*c)->optim_step({}));
  }
  auto last = (*c)->save_weights_for_sampler(testing::TempDir() + "/order.safetensors");
  ASSERT_TRUE(last.get().is_ok());
  // Everything submitted before the last call is done when it is, and steps count 1, 2, 3.
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(fbs[size_t(s)].wait_for(std::chrono::seconds(0)), std::future_status::ready);
    ASSERT_TRUE(steps[size_t(s)].get().is_ok());
    EXPECT_EQ(steps[size_t(s)].get()->step, s + 1);
  }
}

TEST(TrainingClient, TwoForwardBackwardsEqualOneOnTheConcatenation) {
  auto a = TrainingClient::create_local(opts());
  auto b = TrainingClient::create_local(opts());
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  auto task = make_task("addition", 2);
  CharTokenizer tok((*task)->alphabet());
  std::vector<Datum> first, second;
  for (int i = 0; i < 3; ++i) first.push_back(*sft_datum(tok, (*task)->example(1, uint64_t(i))));
  for (int i = 3; i < 8; ++i) second.push_back(*sft_datum(tok, (*task)->example(1, uint64_t(i))));  // other size
  std::vector<Datum> all = first;
  all.insert(all.end(), second.begin(), second.end());
  ASSERT_TRUE((*a)->forward_backward(first, {}).get().is_ok());
  ASSERT_TRUE((*a)->forward_backward(second, {}).get().is_ok());
  auto sa = (*a)->optim_step({}).get();
  auto fb = (*b)->forward_backward(all, {}).get();
  ASSERT_TRUE(fb.is_ok());
  EXPECT_EQ(fb->logprobs.size(), all.size());
  auto sb = (*b)->optim_step({}).get();
  ASSERT_TRUE(sa.is_ok() && sb.is_ok());
  EXPECT_NEAR(sa->grad_norm, sb->grad_norm, 1e-4f * sb->grad_norm);
  const auto wa = weights_of(**a, testing::TempDir() + "/a.safetensors");
  const auto wb = weights_of(**b, testing::TempDir() + "/b.safetensors");
  ASSERT_EQ(wa.size(), wb.size());
  // One Adam step normalises each gradient, so float rounding in near-zero gradients shows up at
  // ~1e-6; 1e-5 is 1% of the learning rate.
  for (size_t i = 0; i < wa.size(); ++i) ASSERT_NEAR(wa[i], wb[i], 1e-5f) << i;
}

TEST(TrainingClient, StateRoundTripIsBitwise) {
  auto task = make_task("addition", 1);
  CharTokenizer tok((*task)->alphabet());
  auto train = [&](TrainingClient& c, int from, int to) {
    for (int s = from; s < to; ++s) {
      ASSERT_TRUE(c.forward_backward({*sft_datum(tok, (*task)->example(2, uint64_t(s)))}, {}).get().is_ok());
      ASSERT_TRUE(c.optim_step({}).get().is_ok());
    }
  };
  const std::string state = testing::TempDir() + "/state.safetensors";
  auto a = TrainingClient::create_local(opts());
  train(**a, 0, 3);
  ASSERT_TRUE((*a)->save_state(state).get().is_ok());
  train(**a, 3, 5);
  auto b = TrainingClient::create_local(opts(99));  // different init: everything must come from the file
  ASSERT_TRUE((*b)->load_state(state).get().is_ok());
  train(**b, 3, 5);
  const auto wa = weights_of(**a, testing::TempDir() + "/sa.safetensors");
  const auto wb = weights_of(**b, testing::TempDir() + "/sb.safetensors");
  EXPECT_EQ(0, std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)));
}

TEST(TrainingClient, ErrorsComeBackThroughFutures) {
  auto c = TrainingClient::create_local(opts());
  ASSERT_TRUE(c.is_ok());
  Datum bad;
  bad.tokens = {1, 2, 3};
  bad.target_tokens = {2, 3};
  bad.weights = {1, 1, 1};
  auto r = (*c)->forward_backward({bad}, {}).get();
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("datum 0"), std::string::npos);
  EXPECT_FALSE((*c)->optim_step({}).get().is_ok());  // nothing accumulated
  LossConfig ppo;
  ppo.fn = LossFn::kPpo;
  Datum no_old = bad;
  no_old.target_tokens = {2, 3, 4};
  EXPECT_FALSE((*c)->forward_backward({no_old}, ppo).get().is_ok());
  EXPECT_FALSE((*c)->load_state("/nonexistent.safetensors").get().is_ok());
}

// The sampling half: refuses to sample without weights or with weights of another size; with the
// training client's weights it samples deterministically (same seeds, same completions).
TEST(SamplingClient, SamplesTheInstalledVersionDeterministically) {
  auto t = TrainingClient::create_local(opts());
  auto s = SamplingClient::create(opts().model, 8);
  ASSERT_TRUE(t.is_ok() && s.is_ok());
  SamplingParams sp;
  sp.max_new_tokens = 4;
  const std::vector<std::vector<int>> prompts = {{1, 2, 3}, {4, 5}};
  const std::vector<uint64_t> seeds = {1, 2, 3, 4, 5, 6};
  EXPECT_FALSE((*s)->sample(prompts, 3, sp, seeds).get().is_ok());
  EXPECT_FALSE((*s)->set_weights(std::vector<float>(7, 0.f), 0).is_ok());
  std::vector<float> w;
  ASSERT_TRUE((*t)->with_state([&](TrainingState& st) {
                    w.assign(st.model.params.data(), st.model.params.data() + st.model.num_params());
                    return Status::ok();
                  })
                  .get()
                  .is_ok());
  ASSERT_TRUE((*s)->set_weights(w, 3).is_ok());
  EXPECT_EQ((*s)->version(), 3);
  auto a = (*s)->sample(prompts, 3, sp, seeds).get();
  auto b = (*s)->sample(prompts, 3, sp, seeds).get();
  ASSERT_TRUE(a.is_ok() && b.is_ok()) << a.status().message();
  ASSERT_EQ(a->size(), 6u);
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ((*a)[i].tokens, (*b)[i].tokens);
    EXPECT_FALSE((*a)[i].tokens.empty());
  }
}

// Supervised fine-tuning through the API learns single-digit addition well enough to answer
// held-out problems greedily far better than chance.
TEST(TrainingClient, SftLearnsAddition) {
  ClientOptions o = opts(7);
  o.max_batch = 32;
  o.sample_rows = 32;
  auto c = TrainingClient::create_local(o);
  ASSERT_TRUE(c.is_ok());
  auto task = make_task("addition", 1);
  CharTokenizer tok((*task)->alphabet());
  AdamParams ap;
  ap.lr = 3e-3f;
  double first = 0, last = 0;
  for (int s = 0; s < 400; ++s) {
    std::vector<Datum> batch;
    for (int i = 0; i < 32; ++i) batch.push_back(*sft_datum(tok, (*task)->example(5, uint64_t(s * 32 + i))));
    auto fb = (*c)->forward_backward(batch, {});
    auto st = (*c)->optim_step(ap);
    ASSERT_TRUE(fb.get().is_ok() && st.get().is_ok());
    if (s == 0) first = fb.get()->stats.loss;
    last = fb.get()->stats.loss;
  }
  EXPECT_LT(last, 0.25 * first) << first << " -> " << last;
  std::vector<std::vector<int>> prompts;
  std::vector<TaskExample> evals;
  for (uint64_t i = 0; i < 12; ++i) {
    evals.push_back((*task)->eval_example(i));
    prompts.push_back(*tok.encode(evals.back().prompt));
  }
  SamplingParams sp;
  sp.temperature = 0;
  sp.max_new_tokens = 4;
  sp.stop_tokens = {tok.eos()};
  auto out = (*c)->sample(prompts, 1, sp, 1).get();
  ASSERT_TRUE(out.is_ok()) << out.status().message();
  int correct = 0;
  for (size_t i = 0; i < evals.size(); ++i) {
    std::vector<int> ids = (*out)[i].tokens;
    if (!ids.empty() && ids.back() == tok.eos()) ids.pop_back();
    correct += (*task)->reward(evals[i], tok.decode(ids)) > 0;
  }
  EXPECT_GE(correct, 6) << "held-out accuracy " << correct << "/12";
}

}  // namespace
}  // namespace mobula::rl
