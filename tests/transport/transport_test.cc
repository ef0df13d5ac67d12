// Transport backends (host memory) x world size (ctest entries np2/np3/np4) x sizes x dtypes:
// data arrives exactly; all-reduce equals the rank-order sum bit for bit; bucketed all-reduce gives
// the same bits for every bucket size; timeouts end in bounded time. The nccl backend moves device
// memory only: its tests are in nccl_test.cc.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/transport/flows.h"
#include "core/transport/gradients.h"
#include "core/transport/transport.h"
#include "core/transport/view_buffer.h"
#include "tests/transport/pattern.h"

namespace mobula {
namespace {

using testing::pattern_fill;

// One transport per backend over MPI_COMM_WORLD, created on first use by every rank (tests run in
// the same order everywhere, so creation stays collective) and destroyed before MPI_Finalize.
std::map<std::string, std::unique_ptr<Transport>> g_made;
std::map<std::string, std::string> g_failed;

class DropTransports : public ::testing::Environment {
 public:
  void TearDown() override { g_made.clear(); }
};
[[maybe_unused]] ::testing::Environment* const g_drop = ::testing::AddGlobalTestEnvironment(new DropTransports);

Transport* shared_transport(const std::string& name, std::string* why) {
  if (auto it = g_made.find(name); it != g_made.end()) return it->second.get();
  if (auto it = g_failed.find(name); it != g_failed.end()) {
    *why = it->second;
    return nullptr;
  }
  auto t = make_transport(name, MPI_COMM_WORLD);
  if (!t) {
    g_failed[name] = t.status().message();
    *why = t.status().message();
    return nullptr;
  }
  return (g_made[name] = std::move(*t)).get();
}

class TransportTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string why;
    t_ = shared_transport(GetParam(), &why);
    if (!t_) {
      // ucx must work wherever it is built; only a missing build may skip.
      if (GetParam() == "ucx" && transport_built("ucx")) FAIL() << why;
      GTEST_SKIP() << why;
    }
    if (!t_->supports(MemoryPlace::kHost)) GTEST_SKIP() << GetParam() << " moves device memory only (nccl_test)";
    me_ = t_->rank();
    n_ = t_->size();
  }
  Transport* t_ = nullptr;
  int me_ = 0, n_ = 1;
};

const std::vector<size_t> kCounts = {0, 1, 17, 1000003};
const std::vector<DType> kTypes = {DType::kU8, DType::kI32, DType::kI64, DType::kF32, DType::kF64, DType::kBF16};

std::vector<std::byte> make(DType t, size_t count, int src, int salt = 0) {
  std::vector<std::byte> v(count * dtype_size(t));
  pattern_fill(t, v.data(), count, src, salt);
  return v;
}
Buffer buf_of(std::vector<std::byte>& v, DType t) {
  return {v.data(), v.size() / dtype_size(t), t};
}

TEST_P(TransportTest, RingSendRecvEverySizeAndDtype) {
  const int to = (me_ + 1) % n_, from = (me_ + n_ - 1) % n_;
  for (DType ty : kTypes) {
    for (size_t count : kCounts) {
      // 1 KiB of this type and the big size (1000003 elements) only for f32, to keep the suite fast.
      if (count == 1000003 && ty != DType::kF32) continue;
      auto out = make(ty, count, me_), in = std::vector<std::byte>(out.size(), std::byte{0xAB});
      auto expect = make(ty, count, from);
      Options o;
      o.tag = 5;
      auto r = t_->irecv(buf_of(in, ty), from, o);
      ASSERT_TRUE(r) << r.status().message();
      auto s = t_->isend(buf_of(out, ty), to, o);
      ASSERT_TRUE(s) << s.status().message();
      ASSERT_TRUE((*s)->wait()) << dtype_name(ty) << " " << count;
      ASSERT_TRUE((*r)->wait()) << dtype_name(ty) << " " << count;
      EXPECT_EQ(testing::memcmp0(in.data(), expect.data(), in.size()), 0) << dtype_name(ty) << " count " << count;
    }
  }
  // 1 KiB and 64 MiB of raw bytes.
  for (size_t bytes : {size_t{1024}, size_t{64} << 20}) {
    auto out = make(DType::kU8, bytes, me_), in = std::vector<std::byte>(bytes), expect = make(DType::kU8, bytes, from);
    auto r = t_->irecv(buf_of(in, DType::kU8), from);
    ASSERT_TRUE(r);
    ASSERT_TRUE(t_->send(buf_of(out, DType::kU8), to));
    ASSERT_TRUE((*r)->wait());
    EXPECT_EQ(testing::memcmp0(in.data(), expect.data(), bytes), 0) << bytes;
  }
}

TEST_P(TransportTest, KokkosViewsAreBuffers) {
  Kokkos::View<double**, Kokkos::HostSpace> v("v", 33, 3);
  for (int i = 0; i < 33; ++i)
    for (int j = 0; j < 3; ++j) v(i, j) = me_ * 1000.0 + i * 3 + j;
  const Buffer b = view_buffer(v);
  EXPECT_EQ(b.count, 99u);
  EXPECT_EQ(b.dtype, DType::kF64);
  EXPECT_EQ(b.place, MemoryPlace::kHost);
  ASSERT_TRUE(t_->allreduce(b, ReduceOp::kSum));
  const double ranks = n_ * (n_ - 1) / 2.0;
  for (int i = 0; i < 33; ++i)
    for (int j = 0; j < 3; ++j) EXPECT_EQ(v(i, j), ranks * 1000.0 + n_ * (i * 3 + j)) << i << "," << j;
}

TEST_P(TransportTest, SplitCommunicatorsWork) {
  // Role and link communicators come from MPI_Comm_split: ranks by parity form two groups.
  int world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world);
  MPI_Comm sub;
  ASSERT_EQ(MPI_Comm_split(MPI_COMM_WORLD, world % 2, world, &sub), MPI_SUCCESS);
  {
    auto t = make_transport(GetParam(), sub);
    ASSERT_TRUE(t) << t.status().message();
    const int m = (*t)->size(), r = (*t)->rank();
    std::vector<int64_t> v(1001, r + 1);
    ASSERT_TRUE((*t)->allreduce(host_buffer(std::span<int64_t>(v)), ReduceOp::kSum));
    for (int64_t x : v) ASSERT_EQ(x, int64_t{m} * (m + 1) / 2);
    ASSERT_TRUE((*t)->barrier());
  }
  MPI_Comm_free(&sub);
}

TEST_P(TransportTest, TagsKeepMessagesApartAndInOrder) {
  if (n_ < 2) GTEST_SKIP() << "needs 2 ranks";
  if (me_ == 0) {
    for (int i = 0; i < 3; ++i)
      for (int tag : {1, 2}) {
        int32_t v = tag * 100 + i;
        Options o;
        o.tag = tag;
        ASSERT_TRUE(t_->send(host_buffer(&v, 1), 1, o));
      }
  } else if (me_ == 1) {
    for (int tag : {2, 1})
      for (int i = 0; i < 3; ++i) {
        int32_t v = -1;
        Options o;
        o.tag = tag;
        ASSERT_TRUE(t_->recv(host_buffer(&v, 1), 0, o));
        EXPECT_EQ(v, tag * 100 + i);
      }
  }
  ASSERT_TRUE(t_->barrier());
}

TEST_P(TransportTest, BroadcastFromEveryRoot) {
  for (int root = 0; root < n_; ++root) {
    for (size_t count : {size_t{0}, size_t{1}, size_t{17}, size_t{256}, size_t{1} << 24}) {
      if (count == (size_t{1} << 24) && root != n_ - 1) continue;  // 64 MiB once
      auto v = me_ == root ? make(DType::kF32, count, root) : std::vector<std::byte>(count * 4);
      ASSERT_TRUE(t_->broadcast(buf_of(v, DType::kF32), root)) << root << " " << count;
      auto expect = make(DType::kF32, count, root);
      EXPECT_EQ(testing::memcmp0(v.data(), expect.data(), v.size()), 0) << "root " << root << " count " << count;
    }
  }
}

template <class T>
std::vector<T> rank_order_sum(size_t count, int n, DType ty, int salt, bool avg) {
  std::vector<T> acc(count), part(count);
  for (int r = 0; r < n; ++r) {
    pattern_fill(ty, part.data(), count, r, salt);
    for (size_t i = 0; i < count; ++i) acc[i] = r == 0 ? part[i] : static_cast<T>(acc[i] + part[i]);
  }
  if constexpr (std::is_floating_point_v<T>)
    if (avg)
      for (auto& x : acc) x /= static_cast<T>(n);
  return acc;
}

template <class T>
void check_allreduce(Transport& t, DType ty, size_t count, ReduceOp op) {
  std::vector<T> v(count);
  pattern_fill(ty, v.data(), count, t.rank(), 3);
  ASSERT_TRUE(t.allreduce(host_buffer(std::span<T>(v)), op)) << dtype_name(ty) << " " << count;
  auto expect = rank_order_sum<T>(count, t.size(), ty, 3, op == ReduceOp::kAvg);
  EXPECT_EQ(testing::memcmp0(v.data(), expect.data(), count * sizeof(T)), 0)
      << dtype_name(ty) << " count " << count << ": not the rank-order sum bit for bit";
  if constexpr (std::is_floating_point_v<T>) {
    // The check can fail: with 3+ ranks another summation order changes some bits.
    if (t.size() >= 3 && count >= 100000 && op == ReduceOp::kSum) {
      std::vector<T> rev(count, T{0}), part(count);
      for (int r = t.size() - 1; r >= 0; --r) {
        pattern_fill(ty, part.data(), count, r, 3);
        for (size_t i = 0; i < count; ++i) rev[i] = r == t.size() - 1 ? part[i] : static_cast<T>(rev[i] + part[i]);
      }
      EXPECT_NE(testing::memcmp0(rev.data(), expect.data(), count * sizeof(T)), 0) << "test data too tame";
    }
  }
}

TEST_P(TransportTest, AllReduceIsTheRankOrderSumBitForBit) {
  for (size_t count : {size_t{0}, size_t{1}, size_t{17}, size_t{256}, size_t{100003}}) {
    check_allreduce<float>(*t_, DType::kF32, count, ReduceOp::kSum);
    check_allreduce<float>(*t_, DType::kF32, count, ReduceOp::kAvg);
    check_allreduce<double>(*t_, DType::kF64, count, ReduceOp::kSum);
    check_allreduce<double>(*t_, DType::kF64, count, ReduceOp::kAvg);
    check_allreduce<int32_t>(*t_, DType::kI32, count, ReduceOp::kSum);
    check_allreduce<int64_t>(*t_, DType::kI64, count, ReduceOp::kSum);
  }
  check_allreduce<float>(*t_, DType::kF32, size_t{1} << 24, ReduceOp::kSum);  // 64 MiB
}

TEST_P(TransportTest, AllReduceRejectsUnsupportedTypes) {
  int32_t v = 1;
  auto r = t_->iallreduce(host_buffer(&v, 1), ReduceOp::kAvg);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), Status::Code::kInvalidArgument);
}

TEST_P(TransportTest, BucketedAllReduceSameBitsForEveryBucketSize) {
  const size_t count = 300007;
  auto expect = rank_order_sum<float>(count, n_, DType::kF32, 9, false);
  for (size_t bucket : {size_t{4}, size_t{4096}, size_t{1} << 16, size_t{1} << 20, size_t{64} << 20}) {
    if (bucket == 4 && count > 4096) {
      // One element per bucket: only a short prefix, or the test would take minutes.
      std::vector<float> v(513);
      pattern_fill(DType::kF32, v.data(), v.size(), me_, 9);
      ASSERT_TRUE(allreduce_bucketed(*t_, host_buffer(std::span<float>(v)), ReduceOp::kSum, bucket));
      EXPECT_EQ(testing::memcmp0(v.data(), expect.data(), v.size() * 4), 0) << "bucket " << bucket;
      continue;
    }
    std::vector<float> v(count);
    pattern_fill(DType::kF32, v.data(), count, me_, 9);
    ASSERT_TRUE(allreduce_bucketed(*t_, host_buffer(std::span<float>(v)), ReduceOp::kSum, bucket, {}, 3));
    EXPECT_EQ(testing::memcmp0(v.data(), expect.data(), count * 4), 0) << "bucket " << bucket;
  }
  std::vector<float> none;
  EXPECT_TRUE(allreduce_bucketed(*t_, host_buffer(std::span<float>(none)), ReduceOp::kSum, 1024));
}

TEST_P(TransportTest, AllGatherEverySize) {
  for (DType ty : {DType::kU8, DType::kF64, DType::kBF16}) {
    for (size_t count : {size_t{0}, size_t{1}, size_t{17}, size_t{1024}}) {
      auto in = make(ty, count, me_);
      std::vector<std::byte> out(in.size() * static_cast<size_t>(n_));
      ASSERT_TRUE(t_->allgather(buf_of(in, ty), buf_of(out, ty)));
      for (int r = 0; r < n_; ++r) {
        auto e = make(ty, count, r);
        EXPECT_EQ(testing::memcmp0(out.data() + e.size() * static_cast<size_t>(r), e.data(), e.size()), 0)
            << dtype_name(ty) << " " << count << " from " << r;
      }
    }
  }
  std::vector<std::byte> in(4), out(4);
  if (n_ > 1) {
    EXPECT_FALSE(t_->iallgather(buf_of(in, DType::kU8), buf_of(out, DType::kU8)));
  }
}

TEST_P(TransportTest, BarrierAndArgumentErrors) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(t_->barrier());
  int32_t v = 0;
  EXPECT_FALSE(t_->isend(host_buffer(&v, 1), n_));
  Options bad;
  bad.tag = kMaxUserTag + 1;
  EXPECT_FALSE(t_->isend(host_buffer(&v, 1), 0, bad));
  EXPECT_FALSE(t_->isend({&v, 1, DType::kI32, MemoryPlace::kDevice}, 0));
}

TEST_P(TransportTest, ReceiveSizeMismatchIsAnError) {
  if (n_ < 2) GTEST_SKIP() << "needs 2 ranks";
  if (me_ == 0) {
    int32_t v[2] = {1, 2};
    Options o;
    o.tag = 9;
    ASSERT_TRUE(t_->send(host_buffer(v, 1), 1, o));
  } else if (me_ == 1) {
    int32_t v[2] = {0, 0};
    Options o;
    o.tag = 9;
    Status s = t_->recv(host_buffer(v, 2), 0, o);
    EXPECT_FALSE(s);
    EXPECT_NE(s.message().find("expected 8"), std::string::npos) << s.message();
  }
  ASSERT_TRUE(t_->barrier());
}

TEST_P(TransportTest, SilentPeerGivesTimeoutInBoundedTime) {
  if (n_ < 2) GTEST_SKIP() << "needs 2 ranks";
  Options o;
  o.tag = 4242;
  o.timeout = std::chrono::milliseconds(300);
  if (me_ == 0) {
    int32_t v = 0;
    const auto t0 = std::chrono::steady_clock::now();
    Status s = t_->recv(host_buffer(&v, 1), 1, o);  // rank 1 never sends
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(s.code(), Status::Code::kTimeout) << s.message();
    EXPECT_NE(s.message().find("recv from rank 1"), std::string::npos) << s.message();
    EXPECT_LT(secs, 3.0);
    EXPECT_GE(secs, 0.29);
  }
  ASSERT_TRUE(t_->barrier());
}

TEST_P(TransportTest, CollectiveWithAMissingRankTimesOut) {
  if (n_ < 2) GTEST_SKIP() << "needs 2 ranks";
  // A private transport: the abandoned collective must not disturb the shared one. The buffer
  // outlives it (contract: after a timeout the backend may still read it until destroyed).
  std::vector<float> v(1000, 1.0f);
  auto own = make_transport(GetParam(), MPI_COMM_WORLD);
  ASSERT_TRUE(own) << own.status().message();
  if (me_ == 0) {
    Options o;
    o.timeout = std::chrono::milliseconds(300);
    const auto t0 = std::chrono::steady_clock::now();
    Status s = (*own)->allreduce(host_buffer(std::span<float>(v)), ReduceOp::kSum, o);  // nobody else joins
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(s.code(), Status::Code::kTimeout) << s.message();
    EXPECT_LT(secs, 3.0);
  }
  ASSERT_TRUE(t_->barrier());
}

INSTANTIATE_TEST_SUITE_P(Backends, TransportTest, ::testing::Values("mpi", "ucx", "nccl"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

TEST(TransportFactory, FlowTransportFollowsTheSpec) {
  JobSpec spec;
  auto t = make_flow_transport(spec, Flow::kGradients, MemoryPlace::kHost, MPI_COMM_WORLD);
  ASSERT_TRUE(t) << t.status().message();
  EXPECT_STREQ((*t)->name(), "mpi");  // auto on host memory
  spec.transport.weights = "ucx";
  if (transport_built("ucx")) {
    auto u = make_flow_transport(spec, Flow::kWeights, MemoryPlace::kHost, MPI_COMM_WORLD);
    ASSERT_TRUE(u) << u.status().message();
    EXPECT_STREQ((*u)->name(), "ucx");
  }
  spec.transport.rollouts = "nccl";
  auto n = make_flow_transport(spec, Flow::kRollouts, MemoryPlace::kHost, MPI_COMM_WORLD);
  ASSERT_FALSE(n);
  EXPECT_EQ(n.status().code(), Status::Code::kInvalidSpec);
  EXPECT_NE(n.status().message().find("transport.rollouts: \"nccl\" moves GPU memory only"), std::string::npos)
      << n.status().message();
}

TEST(TransportFactory, UnknownNameIsAClearError) {
  auto t = make_transport("carrier-pigeon", MPI_COMM_WORLD);
  ASSERT_FALSE(t);
  EXPECT_NE(t.status().message().find("use \"mpi\""), std::string::npos) << t.status().message();
}

}  // namespace
}  // namespace mobula
