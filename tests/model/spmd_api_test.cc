// The SPMD backend of the TrainingClient over a trainer group (np 2, 3): each member trains on its
// share of a batch and the group ends where one local client trained on the whole batch ends (up to
// float summation order), with bitwise-equal replicas; statistics are the group's; a group that
// trained no token refuses optim_step on every member; a member whose share is bad makes every
// member fail (nobody waits for it); save_weights_for_sampler goes to the sink.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstring>
#include <vector>

#include "rl/algo/grpo.h"
#include "rl/api/training_client.h"
#include "rl/api/transport_group.h"
#include "rl/model/tokenizer.h"
#include "rl/tasks/task.h"

namespace mobula::rl {
namespace {

ClientOptions opts() {
  ClientOptions o;
  o.model.vocab = CharTokenizer("0123456789+=").vocab_size();
  o.model.max_seq = 16;
  o.model.layers = 2;
  o.model.heads = 2;
  o.model.d_model = 32;
  o.seed = 5;
  o.max_batch = 4;
  return o;
}

class RecordingSink final : public SamplerSink {
 public:
  Status publish(std::span<const float> params, const std::string& name) override {
    names.push_back(name);
    last.assign(params.begin(), params.end());
    return Status::ok();
  }
  std::vector<std::string> names;
  std::vector<float> last;
};

struct Group {
  int rank = 0, size = 1;
  std::unique_ptr<Transport> transport;
  std::unique_ptr<TransportGroup> group;
};

Group world() {
  Group g;
  MPI_Comm_rank(MPI_COMM_WORLD, &g.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g.size);
  auto t = make_transport("mpi", MPI_COMM_WORLD);
  EXPECT_TRUE(t.is_ok()) << t.status().message();
  g.transport = std::move(t).value();
  g.group = std::make_unique<TransportGroup>(*g.transport, 4096);  // several buckets
  return g;
}

std::vector<float> params_of(TrainingClient& c) {
  std::vector<float> w;
  EXPECT_TRUE(c.with_state([&](TrainingState& st) {
                 w.assign(st.model.params.data(), st.model.params.data() + st.model.num_params());
                 return Status::ok();
               })
                  .get()
                  .is_ok());
  return w;
}

TEST(SpmdClient, GroupMatchesOneLocalClientAndReplicasAreBitwiseEqual) {
  Group g = world();
  RecordingSink sink;
  auto spmd = TrainingClient::create_spmd(opts(), *g.group, &sink);
  auto local = TrainingClient::create_local(opts());
  ASSERT_TRUE(spmd.is_ok() && local.is_ok());
  auto task = make_task("addition", 2);
  CharTokenizer tok((*task)->alphabet());
  for (int step = 0; step < 3; ++step) {
    std::vector<Datum> all, mine;
    for (int i = 0; i < 10; ++i) {  // 10 rows: uneven shares at np 3
      all.push_back(*sft_datum(tok, (*task)->example(3, uint64_t(step * 10 + i))));
      if (i % g.size == g.rank) mine.push_back(all.back());
    }
    auto fs = (*spmd)->forward_backward(mine, {}).get();
    auto fl = (*local)->forward_backward(all, {}).get();
    ASSERT_TRUE(fs.is_ok() && fl.is_ok()) << fs.status().message();
    EXPECT_EQ(fs->stats.tokens, fl->stats.tokens);  // the group's tokens, not this member's
    EXPECT_NEAR(fs->stats.loss, fl->stats.loss, 1e-5 * fl->stats.loss);
    EXPECT_EQ(fs->logprobs.size(), mine.size());
    auto ss = (*spmd)->optim_step({}).get();
    auto sl = (*local)->optim_step({}).get();
    ASSERT_TRUE(ss.is_ok() && sl.is_ok());
    EXPECT_EQ(ss->step, step + 1);
    EXPECT_NEAR(ss->grad_norm, sl->grad_norm, 1e-4f * sl->grad_norm);
  }
  const auto ws = params_of(**spmd), wl = params_of(**local);
  ASSERT_EQ(ws.size(), wl.size());
  for (size_t i = 0; i < ws.size(); ++i) ASSERT_NEAR(ws[i], wl[i], 1e-5f) << i;
  // Every replica holds rank 0's bits.
  std::vector<float> root = ws;
  MPI_Bcast(root.data(), static_cast<int>(root.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
  EXPECT_EQ(0, std::memcmp(root.data(), ws.data(), ws.size() * sizeof(float)));
  // save_weights_for_sampler publishes to the sink, no file.
  auto p = (*spmd)->save_weights_for_sampler("7").get();
  ASSERT_TRUE(p.is_ok());
  ASSERT_EQ(sink.names, std::vector<std::string>{"7"});
  EXPECT_EQ(0, std::memcmp(sink.last.data(), ws.data(), ws.size() * sizeof(float)));
  EXPECT_FALSE((*spmd)->sample({{1, 2}}, 1, {}, 0).get().is_ok());  // trainers do not sample
}

TEST(SpmdClient, NoTokenInTheGroupMeansNoStepAnywhere) {
  Group g = world();
  auto spmd = TrainingClient::create_spmd(opts(), *g.group, nullptr);
  ASSERT_TRUE(spmd.is_ok());
  auto task = make_task("addition", 2);
  CharTokenizer tok((*task)->alphabet());
  // Only the last member has data: everybody sees its tokens and steps.
  std::vector<Datum> mine;
  if (g.rank == g.size - 1) mine.push_back(*sft_datum(tok, (*task)->example(4, 0)));
  auto f = (*spmd)->forward_backward(mine, {}).get();
  ASSERT_TRUE(f.is_ok());
  EXPECT_GT(f->stats.tokens, 0);
  EXPECT_TRUE((*spmd)->optim_step({}).get().is_ok());
  // Nobody has data: forward_backward still joins the group, and optim_step fails everywhere.
  auto e = (*spmd)->forward_backward({}, {}).get();
  ASSERT_TRUE(e.is_ok());
  EXPECT_EQ(e->stats.tokens, 0);
  EXPECT_FALSE((*spmd)->optim_step({}).get().is_ok());
}

TEST(SpmdClient, OneBadShareFailsEveryMemberPromptly) {
  Group g = world();
  auto spmd = TrainingClient::create_spmd(opts(), *g.group, nullptr);
  ASSERT_TRUE(spmd.is_ok());
  auto task = make_task("addition", 2);
  CharTokenizer tok((*task)->alphabet());
  std::vector<Datum> mine{*sft_datum(tok, (*task)->example(5, uint64_t(g.rank)))};
  if (g.rank == 0) mine[0].target_tokens.pop_back();  // malformed on rank 0 only
  auto f = (*spmd)->forward_backward(mine, {}).get();
  ASSERT_FALSE(f.is_ok());
  if (g.rank == 0)
    EXPECT_NE(f.status().message().find("datum 0"), std::string::npos) << f.status().message();
  else
    EXPECT_NE(f.status().message().find("other member"), std::string::npos) << f.status().message();
}

}  // namespace
}  // namespace mobula::rl
