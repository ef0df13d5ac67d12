// Weight sync over every host backend and every trainer/rollout split of the world (np 2, 3, 4):
// every rollout rank ends with the trainers' bits and the version; a version is published whole
// (a reader thread never sees a mix); a reader's snapshot survives the next version; a version
// mismatch is reported and leaves the group usable; the data is spread over all trainers.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "core/transport/weight_sync.h"
#include "tests/transport/pattern.h"

namespace mobula {
namespace {

std::vector<float> weights(size_t count, int64_t version) {
  std::vector<float> w(count);
  testing::pattern_fill(DType::kF32, w.data(), count, 0, static_cast<int>(version));
  return w;
}

WeightGroups split(int n, int trainers) {
  WeightGroups g;
  for (int r = 0; r < n; ++r) (r < trainers ? g.trainers : g.rollouts).push_back(r);
  return g;
}

class WeightSyncTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto t = make_transport(GetParam(), MPI_COMM_WORLD);
    if (!t) {
      if (transport_built(GetParam())) FAIL() << t.status().message();
      GTEST_SKIP() << t.status().message();
    }
    t_ = std::move(*t);
    if (t_->size() < 2) GTEST_SKIP() << "needs 2 ranks";
  }
  void TearDown() override { t_.reset(); }
  std::unique_ptr<Transport> t_;
};

TEST_P(WeightSyncTest, EveryRolloutGetsTheBitsAndVersionForEverySplit) {
  const int n = t_->size(), me = t_->rank();
  for (int trainers = 1; trainers < n; ++trainers) {
    const WeightGroups g = split(n, trainers);
    for (size_t count : {size_t{0}, size_t{1}, size_t{1027}, size_t{300007}}) {
      WeightSyncOptions opt;
      opt.bucket_bytes = count > 1000 ? 4096 : 64;  // many buckets: every trainer sends some
      opt.in_flight = 3;
      WeightStore store(count);
      for (int64_t version : {1, 2}) {
        const auto w = weights(count, version);
        const bool trainer = me < trainers;
        Status s = sync_weights(*t_, g, trainer ? std::span<const float>(w) : std::span<const float>(),
                                trainer ? nullptr : &store, version, opt);
        ASSERT_TRUE(s) << s.message();
        if (!trainer) {
          auto cur = store.current();
          EXPECT_EQ(cur->version, version);
          ASSERT_EQ(cur->params.size(), count);
          EXPECT_EQ(testing::memcmp0(cur->params.data(), w.data(), count * 4), 0)
              << "trainers " << trainers << " count " << count << " version " << version;
        }
      }
    }
  }
}

TEST_P(WeightSyncTest, SixtyFourMiBFromHalfTheRanks) {
  const int n = t_->size(), me = t_->rank(), trainers = n / 2;
  const size_t count = size_t{16} << 20;  // 64 MiB of float
  const auto w = weights(count, 7);
  WeightStore store(count);
  WeightSyncOptions opt;
  opt.bucket_bytes = size_t{4} << 20;
  Status s = sync_weights(*t_, split(n, trainers), me < trainers ? std::span<const float>(w) : std::span<const float>(),
                          me < trainers ? nullptr : &store, 7, opt);
  ASSERT_TRUE(s) << s.message();
  if (me >= trainers) {
    EXPECT_EQ(store.current()->version, 7);
    EXPECT_EQ(testing::memcmp0(store.current()->params.data(), w.data(), count * 4), 0);
  }
}

TEST_P(WeightSyncTest, SourcesAreSpreadOverAllTrainers) {
  // Each trainer holds a different copy here, so the result shows who sent which bucket: bucket k
  // must come from trainer k % T.
  const int n = t_->size(), me = t_->rank(), trainers = n - 1 > 1 ? 2 : 1;
  const size_t count = 10000, per = 256;  // 1 KiB buckets
  std::vector<float> mine(count);
  testing::pattern_fill(DType::kF32, mine.data(), count, me, 11);
  WeightStore store(count);
  WeightSyncOptions opt;
  opt.bucket_bytes = per * 4;
  Status s =
      sync_weights(*t_, split(n, trainers), me < trainers ? std::span<const float>(mine) : std::span<const float>(),
                   me < trainers ? nullptr : &store, 1, opt);
  ASSERT_TRUE(s) << s.message();
  if (me < trainers) return;
  std::vector<std::vector<float>> src(static_cast<size_t>(trainers), std::vector<float>(count));
  for (int t = 0; t < trainers; ++t)
    testing::pattern_fill(DType::kF32, src[static_cast<size_t>(t)].data(), count, t, 11);
  for (size_t k = 0; k * per < count; ++k) {
    const size_t len = std::min(per, count - k * per);
    EXPECT_EQ(testing::memcmp0(store.current()->params.data() + k * per,
                               src[k % static_cast<size_t>(trainers)].data() + k * per, len * 4),
              0)
        << "bucket " << k << " did not come from trainer " << k % static_cast<size_t>(trainers);
  }
}

TEST_P(WeightSyncTest, ReadersSeeWholeVersionsOnly) {
  const int n = t_->size(), me = t_->rank();
  const size_t count = 20011;
  const WeightGroups g = split(n, 1);
  WeightStore store(count);
  std::atomic<bool> stop{false};
  std::atomic<long> mixed{0}, seen{0};
  std::atomic<int64_t> newest{-1};
  std::thread reader;
  if (me != 0) {
    reader = std::thread([&] {
      while (!stop.load()) {
        auto cur = store.current();
        if (cur->version < 0) continue;
        ++seen;
        if (cur->params != weights(count, cur->version)) ++mixed;
        newest = cur->version;
      }
    });
  }
  std::shared_ptr<const VersionedWeights> first;
  WeightSyncOptions opt;
  opt.bucket_bytes = 1024;
  for (int64_t v = 1; v <= 8; ++v) {
    const auto w = weights(count, v);
    Status s = sync_weights(*t_, g, me == 0 ? std::span<const float>(w) : std::span<const float>(),
                            me == 0 ? nullptr : &store, v, opt);
    ASSERT_TRUE(s) << s.message();
    if (v == 1 && me != 0) first = store.current();
    // Let the reader look at every version while the next one arrives.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (me != 0 && newest.load() < v && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  }
  stop = true;
  if (reader.joinable()) reader.join();
  if (me != 0) {
    EXPECT_EQ(mixed.load(), 0) << "a reader saw a half-updated version";
    EXPECT_EQ(newest.load(), 8);
    ASSERT_TRUE(first);
    EXPECT_EQ(first->version, 1);
    EXPECT_EQ(first->params, weights(count, 1)) << "a held snapshot was overwritten by a later version";
    EXPECT_EQ(store.current()->version, 8);
  }
}

TEST_P(WeightSyncTest, VersionMismatchIsReportedAndTheGroupStaysUsable) {
  const int n = t_->size(), me = t_->rank();
  const size_t count = 5000;
  const WeightGroups g = split(n, 1);
  WeightStore store(count);
  WeightSyncOptions opt;
  opt.bucket_bytes = 4096;
  const auto w3 = weights(count, 3), w4 = weights(count, 4);
  Status s = sync_weights(*t_, g, me == 0 ? std::span<const float>(w3) : std::span<const float>(),
                          me == 0 ? nullptr : &store, me == 0 ? 3 : 4, opt);
  if (me == 0) {
    EXPECT_TRUE(s) << s.message();
  } else {
    EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
    EXPECT_NE(s.message().find("sends version 3, this rollout expects version 4"), std::string::npos) << s.message();
    EXPECT_EQ(store.current()->version, -1) << "a mismatched version was published";
  }
  s = sync_weights(*t_, g, me == 0 ? std::span<const float>(w4) : std::span<const float>(), me == 0 ? nullptr : &store,
                   4, opt);
  ASSERT_TRUE(s) << s.message();
  if (me != 0) {
    EXPECT_EQ(store.current()->params, w4);
  }
}

TEST_P(WeightSyncTest, SilentTrainerGivesTimeout) {
  const int n = t_->size(), me = t_->rank();
  if (me == 0) return;  // trainer 0 never sends
  WeightStore store(100);
  WeightSyncOptions opt;
  opt.timeout = std::chrono::milliseconds(300);
  WeightGroups g;
  g.trainers = {0};
  g.rollouts = {me};
  Status s = sync_weights(*t_, g, {}, &store, 1, opt);
  EXPECT_EQ(s.code(), Status::Code::kTimeout) << s.message();
  EXPECT_EQ(store.current()->version, -1);
  (void)n;
}

TEST_P(WeightSyncTest, BadGroupsAreRejected) {
  WeightStore store(4);
  WeightGroups g;
  g.trainers = {0};
  g.rollouts = {0};
  EXPECT_EQ(sync_weights(*t_, g, {}, &store, 1).code(), Status::Code::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Backends, WeightSyncTest, ::testing::Values("mpi", "ucx"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace mobula
