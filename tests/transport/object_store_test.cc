// Object refs at np 2, 3, 4: put/get/release/free, get after free, many refs in flight, refs passed
// through a third rank, retain before handing on, wait_freed, an owner that never answers, and the
// ref encoding (including garbage from the network).
#include <gtest/gtest.h>
#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "core/objects/object_store.h"
#include "tests/transport/pattern.h"

namespace mobula {
namespace {

using namespace std::chrono_literals;

std::vector<float> data_of(size_t n, int src, int salt) {
  std::vector<float> v(n);
  testing::pattern_fill(DType::kF32, v.data(), n, src, salt);
  return v;
}

// Sends a ref's bytes from `from` to `to` over MPI (how a ref travels in the job: any channel).
Result<ObjectRef> pass_ref(const ObjectRef* ref, int from, int to, int me) {
  if (me == from) {
    auto bytes = ref->serialize();
    int n = static_cast<int>(bytes.size());
    MPI_Send(&n, 1, MPI_INT, to, 7, MPI_COMM_WORLD);
    MPI_Send(bytes.data(), n, MPI_BYTE, to, 8, MPI_COMM_WORLD);
    return *ref;
  }
  int n = 0;
  MPI_Recv(&n, 1, MPI_INT, from, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  std::vector<std::byte> bytes(static_cast<size_t>(n));
  MPI_Recv(bytes.data(), n, MPI_BYTE, from, 8, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  return ObjectRef::parse(bytes);
}

class ObjectStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = ObjectStore::create(MPI_COMM_WORLD);
    ASSERT_TRUE(s) << s.status().message();
    store_ = std::move(*s);
    me_ = store_->rank();
    n_ = store_->size();
  }
  void TearDown() override {
    if (store_) {
      EXPECT_TRUE(store_->shutdown());
    }
    store_.reset();
  }
  std::unique_ptr<ObjectStore> store_;
  int me_ = 0, n_ = 1;
};

TEST(ObjectRefEncoding, RoundTripAndGarbage) {
  ObjectRef r;
  r.owner = 3;
  r.id = 0x1234567890ULL;
  r.tensors = {{DType::kF32, {2, 3}}, {DType::kI64, {}}, {DType::kBF16, {0, 7}}};
  auto bytes = r.serialize();
  EXPECT_LT(bytes.size(), 100u) << "a ref must stay small";
  auto back = ObjectRef::parse(bytes);
  ASSERT_TRUE(back) << back.status().message();
  EXPECT_EQ(*back, r);
  EXPECT_EQ(r.bytes(), 2u * 3 * 4 + 8 + 0);
  for (size_t cut = 0; cut < bytes.size(); ++cut)
    EXPECT_FALSE(ObjectRef::parse(std::span<const std::byte>(bytes.data(), cut))) << "truncated at " << cut;
  auto extra = bytes;
  extra.push_back(std::byte{0});
  EXPECT_FALSE(ObjectRef::parse(extra));
  auto bad_dtype = bytes;
  bad_dtype[22] = std::byte{99};
  EXPECT_FALSE(ObjectRef::parse(bad_dtype));
}

TEST_F(ObjectStoreTest, PutGetFromEveryRankEverySize) {
  // Every rank puts one object of several tensors (0, 1, odd, 1 KiB, 4 MiB); every rank gets all.
  const std::vector<size_t> sizes = {0, 1, 17, 256, size_t{1} << 20};
  std::vector<Tensor> mine;
  for (size_t i = 0; i < sizes.size(); ++i)
    mine.push_back(Tensor::from_vector(data_of(sizes[i], me_, static_cast<int>(i)), {static_cast<int64_t>(sizes[i])}));
  mine.push_back(Tensor::from_vector(std::vector<int64_t>{int64_t{me_} << 40, -1, 3}, {3}));
  auto ref = store_->put(std::move(mine), n_);  // every rank releases once
  ASSERT_TRUE(ref) << ref.status().message();
  std::vector<ObjectRef> refs(static_cast<size_t>(n_));
  // Share every rank's ref with everybody.
  auto bytes = ref->serialize();
  int len = static_cast<int>(bytes.size());
  std::vector<int> lens(static_cast<size_t>(n_)), displs(static_cast<size_t>(n_));
  MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, MPI_COMM_WORLD);
  int total = 0;
  for (int r = 0; r < n_; ++r) displs[static_cast<size_t>(r)] = total, total += lens[static_cast<size_t>(r)];
  std::vector<std::byte> all(static_cast<size_t>(total));
  MPI_Allgatherv(bytes.data(), len, MPI_BYTE, all.data(), lens.data(), displs.data(), MPI_BYTE, MPI_COMM_WORLD);
  for (int r = 0; r < n_; ++r) {
    auto p = ObjectRef::parse(std::span<const std::byte>(all.data() + displs[static_cast<size_t>(r)],
                                                         static_cast<size_t>(lens[static_cast<size_t>(r)])));
    ASSERT_TRUE(p) << p.status().message();
    refs[static_cast<size_t>(r)] = *p;
  }
  for (int k = 0; k < n_; ++k) {
    const int r = (me_ + k) % n_;
    const ObjectRef& rr = refs[static_cast<size_t>(r)];
    EXPECT_EQ(rr.owner, r);
    auto got = store_->get(rr);
    ASSERT_TRUE(got) << got.status().message();
    ASSERT_EQ(got->size(), sizes.size() + 1);
    for (size_t i = 0; i < sizes.size(); ++i) {
      auto expect = data_of(sizes[i], r, static_cast<int>(i));
      ASSERT_EQ((*got)[i].buf.count, sizes[i]);
      EXPECT_EQ(testing::memcmp0((*got)[i].buf.data, expect.data(), sizes[i] * 4), 0)
          << "from " << r << " tensor " << i;
    }
    EXPECT_EQ((*got)[sizes.size()].as<int64_t>()[0], int64_t{r} << 40);
    // get_into a caller buffer too.
    std::vector<float> into(sizes[2]);
    std::vector<Buffer> dst;
    std::vector<std::vector<std::byte>> scratch;
    for (size_t i = 0; i < rr.tensors.size(); ++i) {
      scratch.emplace_back(rr.tensors[i].bytes());
      dst.push_back({scratch.back().data(), rr.tensors[i].count(), rr.tensors[i].dtype});
    }
    ASSERT_TRUE(store_->get_into(rr, dst));
    EXPECT_EQ(testing::memcmp0(scratch[2].data(), data_of(17, r, 2).data(), 17 * 4), 0);
    std::vector<Buffer> wrong(dst.begin(), dst.end() - 1);
    EXPECT_EQ(store_->get_into(rr, wrong).code(), Status::Code::kInvalidArgument);
    ASSERT_TRUE(store_->release(rr));
  }
  // Every rank released mine once: it is freed.
  EXPECT_TRUE(store_->wait_freed(*ref, 10s));
  EXPECT_EQ(store_->live_objects(), 0u);
  MPI_Barrier(MPI_COMM_WORLD);
  // Getting a freed object is an error on every rank, not a hang.
  for (int r = 0; r < n_; ++r) {
    auto got = store_->get(refs[static_cast<size_t>(r)], 5s);
    ASSERT_FALSE(got);
    EXPECT_EQ(got.status().code(), Status::Code::kNotFound) << got.status().message();
  }
}

TEST(ObjectStoreSplit, WorksOnASplitCommunicator) {
  int world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world);
  MPI_Comm sub;
  ASSERT_EQ(MPI_Comm_split(MPI_COMM_WORLD, world % 2, world, &sub), MPI_SUCCESS);
  {
    auto s = ObjectStore::create(sub);
    ASSERT_TRUE(s) << s.status().message();
    const int m = (*s)->size(), r = (*s)->rank();
    auto ref = (*s)->put({Tensor::from_vector(data_of(1000, world, 1), {1000})});
    ASSERT_TRUE(ref);
    std::vector<uint64_t> ids(static_cast<size_t>(m));
    MPI_Allgather(&ref->id, 1, MPI_UINT64_T, ids.data(), 1, MPI_UINT64_T, sub);
    ObjectRef left = *ref;
    left.owner = (r + m - 1) % m;
    left.id = ids[static_cast<size_t>(left.owner)];
    auto got = (*s)->get(left);
    ASSERT_TRUE(got) << got.status().message();
    const int left_world = world - 2 * (r - left.owner);  // same parity, group order = world order
    EXPECT_EQ(testing::memcmp0((*got)[0].buf.data, data_of(1000, left_world, 1).data(), 4000), 0);
    ASSERT_TRUE((*s)->release(left));
    EXPECT_TRUE((*s)->wait_freed(*ref, 10s));
  }
  MPI_Comm_free(&sub);
}

TEST_F(ObjectStoreTest, ExplicitFreeAndUnknownRefs) {
  auto ref = store_->put({Tensor::from_vector(std::vector<float>{1, 2, 3}, {3})}, 1000);
  ASSERT_TRUE(ref);
  EXPECT_EQ(store_->wait_freed(*ref, 50ms).code(), Status::Code::kTimeout);
  EXPECT_TRUE(store_->free(*ref));
  EXPECT_TRUE(store_->wait_freed(*ref, 1s));
  EXPECT_EQ(store_->free(*ref).code(), Status::Code::kNotFound);
  ObjectRef other = *ref;
  other.owner = (me_ + 1) % n_;
  other.id = 999999;  // never put anywhere
  auto got = store_->get(other, 5s);
  EXPECT_EQ(got.status().code(), Status::Code::kNotFound) << got.status().message();
  if (n_ > 1) {
    EXPECT_EQ(store_->free(other).code(), Status::Code::kInvalidArgument);
    EXPECT_EQ(store_->wait_freed(other).code(), Status::Code::kInvalidArgument);
  }
  EXPECT_EQ(store_->retain(other, 5s).code(), Status::Code::kNotFound);
  EXPECT_EQ(store_->put({Tensor::borrow({nullptr, 4, DType::kF32, MemoryPlace::kDevice}, {4})}).status().code(),
            Status::Code::kInvalidArgument);
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_F(ObjectStoreTest, ManyRefsInFlight) {
  // Every rank puts 64 small objects; its right neighbour gets them all (posting gets in a burst)
  // and releases them; the owner waits until all are freed.
  const int kObjects = 64, right = (me_ + 1) % n_, left = (me_ + n_ - 1) % n_;
  std::vector<ObjectRef> mine;
  for (int i = 0; i < kObjects; ++i) {
    auto r = store_->put({Tensor::from_vector(data_of(33 + static_cast<size_t>(i), me_, 100 + i), {33 + i})});
    ASSERT_TRUE(r);
    mine.push_back(*r);
  }
  // Send ids to the right neighbour (they are ordinary small messages).
  std::vector<uint64_t> ids, theirs(kObjects);
  for (auto& r : mine) ids.push_back(r.id);
  MPI_Sendrecv(ids.data(), kObjects, MPI_UINT64_T, right, 3, theirs.data(), kObjects, MPI_UINT64_T, left, 3,
               MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  // Four threads pull concurrently, so many requests are in flight at the owner at once.
  std::vector<std::thread> pullers;
  std::atomic<int> ok{0};
  for (int th = 0; th < 4; ++th) {
    pullers.emplace_back([&, th] {
      for (int i = th; i < kObjects; i += 4) {
        ObjectRef r;
        r.owner = left;
        r.id = theirs[static_cast<size_t>(i)];
        r.tensors = {{DType::kF32, {33 + i}}};
        auto got = store_->get(r);
        if (!got) {
          ADD_FAILURE() << got.status().message();
          continue;
        }
        auto expect = data_of(33 + static_cast<size_t>(i), left, 100 + i);
        if (testing::memcmp0((*got)[0].buf.data, expect.data(), expect.size() * 4) == 0) ++ok;
        if (!store_->release(r)) ADD_FAILURE() << "release " << i;
      }
    });
  }
  for (auto& p : pullers) p.join();
  EXPECT_EQ(ok.load(), kObjects);
  for (auto& r : mine) EXPECT_TRUE(store_->wait_freed(r, 10s));
  EXPECT_EQ(store_->live_objects(), 0u);
}

TEST_F(ObjectStoreTest, RefPassedThroughAThirdRank) {
  if (n_ < 3) GTEST_SKIP() << "needs 3 ranks";
  // Rank 0 puts (one holder: rank 1). Rank 1 retains (now two holders), hands the ref to rank 2,
  // releases its own hold. Rank 2 gets the data and releases: the object is freed on rank 0.
  std::optional<ObjectRef> ref;
  const auto payload = data_of(1 << 16, 0, 55);
  if (me_ == 0) {
    auto r = store_->put({Tensor::from_vector(payload, {256, 256})}, 1);
    ASSERT_TRUE(r);
    ref = *r;
  }
  if (me_ <= 1) {
    auto r = pass_ref(ref ? &*ref : nullptr, 0, 1, me_);
    ASSERT_TRUE(r);
    ref = *r;
  }
  if (me_ == 1) {
    ASSERT_TRUE(store_->retain(*ref, 10s));
    ASSERT_TRUE(pass_ref(&*ref, 1, 2, me_));
    ASSERT_TRUE(store_->release(*ref));  // rank 2's hold keeps it alive
  }
  if (me_ == 2) {
    auto r = pass_ref(nullptr, 1, 2, me_);
    ASSERT_TRUE(r) << r.status().message();
    EXPECT_EQ(r->owner, 0);
    EXPECT_EQ(r->tensors[0].shape, (std::vector<int64_t>{256, 256}));
    auto got = store_->get(*r, 10s);
    ASSERT_TRUE(got) << got.status().message();
    EXPECT_EQ(testing::memcmp0((*got)[0].buf.data, payload.data(), payload.size() * 4), 0);
    ASSERT_TRUE(store_->release(*r));
  }
  if (me_ == 0) {
    EXPECT_TRUE(store_->wait_freed(*ref, 10s));
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_F(ObjectStoreTest, SilentOwnerGivesTimeoutInBoundedTime) {
  if (n_ < 2) GTEST_SKIP() << "needs 2 ranks";
  std::optional<ObjectRef> ref;
  if (me_ == 0) {
    auto r = store_->put({Tensor::from_vector(std::vector<float>(1000, 1.0f), {1000})});
    ASSERT_TRUE(r);
    ref = *r;
    store_->set_serving(false);  // rank 0 now looks hung to everybody
  }
  if (me_ <= 1) {
    auto r = pass_ref(ref ? &*ref : nullptr, 0, 1, me_);
    ASSERT_TRUE(r);
    ref = *r;
  }
  if (me_ == 1) {
    const auto t0 = std::chrono::steady_clock::now();
    auto got = store_->get(*ref, 300ms);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_FALSE(got);
    EXPECT_EQ(got.status().code(), Status::Code::kTimeout);
    EXPECT_NE(got.status().message().find("owned by rank 0"), std::string::npos) << got.status().message();
    EXPECT_NE(got.status().message().find("dead or hung"), std::string::npos) << got.status().message();
    EXPECT_LT(secs, 3.0);
    EXPECT_EQ(store_->retain(*ref, 200ms).code(), Status::Code::kTimeout);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (me_ == 0) {
    store_->set_serving(true);
    EXPECT_TRUE(store_->free(*ref));
  }
}

}  // namespace
}  // namespace mobula
