// sum_shards (core/transport/shard_sum.h) over the world (ctest np1..np4) and sub-groups of every
// size: the result is bitwise the same as the one-process tree whatever the member count, value()
// runs once per shard on its owner in increasing order, and the data is such that the rank-order
// sum a plain all-reduce computes gives other bits (so equality is not an accident of the data).
#include "core/transport/shard_sum.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/runtime/hash.h"

namespace mobula {
namespace {

constexpr size_t kCount = 4099;  // not a multiple of anything

// Shard s's value: magnitudes spread over 2^-20 .. 2^20, so the order of additions shows.
template <class T>
std::vector<T> shard_value(int s) {
  std::vector<T> v(kCount);
  for (size_t j = 0; j < kCount; ++j) {
    const uint64_t h = splitmix64(uint64_t(s) * 0x9E3779B97F4A7C15ull + j);
    const double mant = double(h >> 11) * (1.0 / 9007199254740992.0) - 0.5;
    v[j] = static_cast<T>(std::ldexp(mant, int(h % 41) - 20));
  }
  return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

TEST(ShardSum, BlocksCoverEveryShardOnce) {
  for (int S : {1, 2, 3, 7, 8, 16})
    for (int M = 1; M <= 9; ++M) {
      int next = 0;
      for (int m = 0; m < M; ++m) {
        const ShardRange r = shards_of(m, M, S);
        EXPECT_EQ(r.first, next) << S << " " << M;
        for (int s = r.first; s < r.end; ++s) EXPECT_EQ(owner_of_shard(s, M, S), m) << S << " " << M << " " << s;
        next = r.end;
      }
      EXPECT_EQ(next, S);
    }
}

template <class T>
void check_every_group_size() {
  int world = 0, me = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  for (int S : {1, 2, 3, 5, 8, 13}) {
    std::vector<std::vector<T>> values;
    for (int s = 0; s < S; ++s) values.push_back(shard_value<T>(s));
    const std::vector<T> want = sum_shards_local(values);
    // Groups of 1 .. world members (ranks 0..n-1), so one ctest entry covers every smaller size.
    for (int n = 1; n <= world; ++n) {
      MPI_Comm sub = MPI_COMM_NULL;
      ASSERT_EQ(MPI_Comm_split(MPI_COMM_WORLD, me < n ? 0 : MPI_UNDEFINED, me, &sub), MPI_SUCCESS);
      if (sub == MPI_COMM_NULL) continue;
      auto t = make_transport("mpi", sub);
      ASSERT_TRUE(t.is_ok()) << t.status().message();
      std::vector<int> called;
      std::vector<T> got(kCount, T(-1));
      const Status st = sum_shards<T>(
          **t, S,
          [&](int s, std::span<T> out) {
            called.push_back(s);
            std::copy(values[size_t(s)].begin(), values[size_t(s)].end(), out.begin());
            return Status::ok();
          },
          std::span<T>(got));
      ASSERT_TRUE(st.is_ok()) << st.message();
      const ShardRange mine = shards_of(me, n, S);
      std::vector<int> expect;
      for (int s = mine.first; s < mine.end; ++s) expect.push_back(s);
      EXPECT_EQ(called, expect) << "S " << S << " members " << n;
      EXPECT_TRUE(same_bits(got, want)) << "S " << S << " members " << n << " rank " << me;
      t->reset();
      MPI_Comm_free(&sub);
    }
  }
}

TEST(ShardSum, FloatSumIsTheSameForEveryGroupSize) {
  check_every_group_size<float>();
}
TEST(ShardSum, DoubleSumIsTheSameForEveryGroupSize) {
  check_every_group_size<double>();
}

TEST(ShardSum, TheDataTellsSummationOrdersApart) {
  // What a rank-order all-reduce over 3 trainers holding blocks of 8 shards would compute.
  std::vector<std::vector<float>> values;
  for (int s = 0; s < 8; ++s) values.push_back(shard_value<float>(s));
  std::vector<float> ranked(kCount, 0.f);
  for (int m = 0; m < 3; ++m) {
    const ShardRange r = shards_of(m, 3, 8);
    std::vector<float> part(kCount, 0.f);
    for (int s = r.first; s < r.end; ++s)
      for (size_t j = 0; j < kCount; ++j) part[j] += values[size_t(s)][j];
    for (size_t j = 0; j < kCount; ++j) ranked[j] += part[j];
  }
  EXPECT_FALSE(same_bits(ranked, sum_shards_local(values)));
}

TEST(ShardSum, AFailingShardIsReported) {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world != 1) GTEST_SKIP() << "one process: a failed value() leaves peers waiting (the job aborts)";
  auto t = make_transport("mpi", MPI_COMM_WORLD);
  ASSERT_TRUE(t.is_ok());
  std::vector<float> out(4);
  const Status st = sum_shards<float>(
      **t, 4, [](int s, std::span<float>) { return s == 2 ? Status::io("shard 2 broke") : Status::ok(); },
      std::span<float>(out));
  EXPECT_EQ(st.message(), "shard 2 broke");
}

}  // namespace
}  // namespace mobula
