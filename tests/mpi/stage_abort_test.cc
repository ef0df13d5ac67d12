// core/stage when a rank fails (np 3 and 4): the others return an error naming it at once, instead of
// waiting for data or work until a timeout. One scenario per process (the ctest entries pick it with
// --gtest_filter): the messages a failed stage leaves unreceived must not meet a later stage.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "core/stage/stage.h"

namespace mobula::stage {
namespace {

using Clock = std::chrono::steady_clock;

int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

struct Roles {
  std::vector<int> consumers, producers;
};
Roles roles() {  // np 3: 1 consumer, 2 producers; np 4: 2 and 2
  Roles r;
  const int C = world_size() >= 4 ? 2 : 1;
  for (int i = 0; i < world_size(); ++i) (i < C ? r.consumers : r.producers).push_back(i);
  return r;
}
bool is_consumer(const Roles& r) {
  return std::find(r.consumers.begin(), r.consumers.end(), rank()) != r.consumers.end();
}

StageOptions options() {
  StageOptions o;
  o.dataset_size = 50;
  o.seed = 7;
  o.global_batch = 2 * static_cast<int>(roles().consumers.size());
  o.sample_floats = 4;
  o.prefetch = 2;
  o.timeout = std::chrono::seconds(60);  // far longer than the test allows for noticing the failure
  return o;
}

Status fill(std::span<const uint64_t> samples, float* out) {
  std::fill(out, out + samples.size() * 4, 1.0f);
  return Status::ok();
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

TEST(StageAbort, AConsumerThatFailsEndsTheStageOnEveryRank) {
  const Roles r = roles();
  const StageOptions o = options();
  if (is_consumer(r)) {
    auto c = Consumer::create(MPI_COMM_WORLD, r.consumers, r.producers, o, 0, 1000);
    ASSERT_TRUE(c.is_ok()) << c.status().message();
    if (rank() == 0) {
      for (int j = 0; j < 3; ++j) ASSERT_TRUE((*c)->next().is_ok());
      c->reset();  // consumer 0 fails: destroyed without finish()
    } else {
      const auto t0 = Clock::now();
      Result<Item> item = (*c)->next();
      while (item.is_ok()) item = (*c)->next();
      EXPECT_LT(seconds_since(t0), 20.0) << "the other consumer waited for its timeout";
      EXPECT_NE(item.status().message().find("stage: rank 0 (a consumer) failed and ended the stage"),
                std::string::npos)
          << item.status().message();
    }
  } else {
    auto p = Producer::create(MPI_COMM_WORLD, r.consumers, r.producers, o);
    ASSERT_TRUE(p.is_ok()) << p.status().message();
    const auto t0 = Clock::now();
    const Status st = (*p)->run(fill);
    EXPECT_LT(seconds_since(t0), 20.0);
    ASSERT_FALSE(st.is_ok()) << "run() ended normally although a consumer failed";
    EXPECT_NE(st.message().find("stage: consumer rank 0 failed and ended the stage"), std::string::npos)
        << st.message();
  }
}

TEST(StageAbort, AProducerThatFailsEndsTheStageOnEveryRank) {
  const Roles r = roles();
  const StageOptions o = options();
  const int bad = r.producers.front();
  if (is_consumer(r)) {
    auto c = Consumer::create(MPI_COMM_WORLD, r.consumers, r.producers, o, 0, 1000);
    ASSERT_TRUE(c.is_ok()) << c.status().message();
    const auto t0 = Clock::now();
    Result<Item> item = (*c)->next();
    while (item.is_ok()) item = (*c)->next();
    EXPECT_LT(seconds_since(t0), 20.0) << "the consumer waited for its timeout";
    const std::string want = "stage: rank " + std::to_string(bad) + " (a producer) failed and ended the stage";
    EXPECT_NE(item.status().message().find(want), std::string::npos) << item.status().message();
    c->reset();  // failing in turn: tells the producers that are still waiting for work
  } else {
    auto p = Producer::create(MPI_COMM_WORLD, r.consumers, r.producers, o);
    ASSERT_TRUE(p.is_ok()) << p.status().message();
    int n = 0;
    const auto t0 = Clock::now();
    const Status st = (*p)->run([&](std::span<const uint64_t> samples, float* out) {
      if (rank() == bad && ++n == 4) return Status::io("synthetic decode failure");
      return fill(samples, out);
    });
    EXPECT_LT(seconds_since(t0), 20.0);
    ASSERT_FALSE(st.is_ok());
    if (rank() == bad)
      EXPECT_EQ(st.message(), "synthetic decode failure");
    else
      EXPECT_NE(st.message().find("failed and ended the stage"), std::string::npos) << st.message();
  }
}

}  // namespace
}  // namespace mobula::stage
