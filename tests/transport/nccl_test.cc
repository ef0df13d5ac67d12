// NCCL backend on device memory (np 2): ring send/recv, broadcast, all-reduce, all-gather, barrier,
// and host buffers rejected. Needs one GPU per rank; skips with the reason otherwise (CI compiles and
// links it: CUDA 13 + NCCL 2.28 without a GPU).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstring>
#include <vector>

#include "core/device/gpu.h"
#include "core/transport/transport.h"

#if MOBULA_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace mobula {
namespace {

#if MOBULA_HAVE_CUDA
// Device memory for `n` floats, freed on scope exit.
struct DeviceFloats {
  explicit DeviceFloats(size_t count) : n(count) {
    if (cudaMalloc(&p, n * sizeof(float) + 1) != cudaSuccess) p = nullptr;
  }
  ~DeviceFloats() { cudaFree(p); }
  Buffer buf() const { return {p, n, DType::kF32, MemoryPlace::kDevice}; }
  void upload(const std::vector<float>& h) { ASSERT_EQ(cudaMemcpy(p, h.data(), n * 4, cudaMemcpyHostToDevice), 0); }
  std::vector<float> download() const {
    std::vector<float> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), p, n * 4, cudaMemcpyDeviceToHost), 0);
    return h;
  }
  void* p = nullptr;
  size_t n;
};
#endif

TEST(NcclTransport, DeviceBuffersMoveExactly) {
  int n = 0, me = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  int gpus = gpu_count(), fewest = 0;
  MPI_Allreduce(&gpus, &fewest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!nccl_built()) GTEST_SKIP() << "built without NCCL";
  if (fewest == 0) GTEST_SKIP() << gpu_unavailable_reason();
  int node_ranks = 0;
  {
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, me, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &node_ranks);
    MPI_Comm_free(&node);
  }
  if (fewest < node_ranks) GTEST_SKIP() << "needs one GPU per rank (" << fewest << " GPUs, " << node_ranks << " ranks)";
#if MOBULA_HAVE_CUDA
  auto t = make_transport("nccl", MPI_COMM_WORLD);
  ASSERT_TRUE(t) << t.status().message();
  Transport& tr = **t;
  EXPECT_FALSE(tr.supports(MemoryPlace::kHost));
  float host = 0;
  EXPECT_EQ(tr.isend(host_buffer(&host, 1), 0).status().code(), Status::Code::kInvalidArgument);
  for (size_t count : {size_t{1}, size_t{17}, size_t{256}, size_t{16} << 20}) {
    std::vector<float> mine(count), expect(count);
    for (size_t i = 0; i < count; ++i) mine[i] = static_cast<float>((i + static_cast<size_t>(me) * 7) % 1000);
    const int to = (me + 1) % n, from = (me + n - 1) % n;
    for (size_t i = 0; i < count; ++i) expect[i] = static_cast<float>((i + static_cast<size_t>(from) * 7) % 1000);
    DeviceFloats a(count), b(count);
    ASSERT_TRUE(a.p && b.p);
    a.upload(mine);
    auto r = tr.irecv(b.buf(), from);
    auto s = tr.isend(a.buf(), to);
    ASSERT_TRUE(r && s);
    ASSERT_TRUE((*s)->wait());
    ASSERT_TRUE((*r)->wait());
    EXPECT_EQ(b.download(), expect) << count;
    ASSERT_TRUE(tr.broadcast(a.buf(), 0));
    std::vector<float> root(count);
    for (size_t i = 0; i < count; ++i) root[i] = static_cast<float>(i % 1000);
    EXPECT_EQ(a.download(), root) << count;
    a.upload(mine);
    ASSERT_TRUE(tr.allreduce(a.buf(), ReduceOp::kSum));
    std::vector<float> sum(count, 0.0f);
    for (int rr = 0; rr < n; ++rr)
      for (size_t i = 0; i < count; ++i) sum[i] += static_cast<float>((i + static_cast<size_t>(rr) * 7) % 1000);
    EXPECT_EQ(a.download(), sum) << count;
    DeviceFloats all(count * static_cast<size_t>(n));
    a.upload(mine);
    ASSERT_TRUE(tr.allgather(a.buf(), all.buf()));
    auto got = all.download();
    for (int rr = 0; rr < n; ++rr)
      for (size_t i = 0; i < count; ++i)
        ASSERT_EQ(got[static_cast<size_t>(rr) * count + i],
                  static_cast<float>((i + static_cast<size_t>(rr) * 7) % 1000));
  }
  ASSERT_TRUE(tr.barrier());
#endif
}

}  // namespace
}  // namespace mobula
