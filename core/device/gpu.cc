#include "core/device/gpu.h"

#include <cstdint>
#include <string>
#include <vector>

#if MOBULA_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif
#if MOBULA_HAVE_NCCL
#include <nccl.h>
#endif

namespace mobula {

#if MOBULA_HAVE_CUDA
namespace {
Status cuda_status(cudaError_t e, const char* call, const char* file, int line) {
  return Status::external(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                          cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}
}  // namespace
#define MOBULA_CUDA(call)                                                                             \
  do {                                                                                                \
    const cudaError_t mobula_cuda_e_ = (call);                                                        \
    if (mobula_cuda_e_ != cudaSuccess) return cuda_status(mobula_cuda_e_, #call, __FILE__, __LINE__); \
  } while (0)
#endif

#if MOBULA_HAVE_NCCL
#define MOBULA_NCCL(call)                                                                                             \
  do {                                                                                                                \
    const ncclResult_t mobula_nccl_r_ = (call);                                                                       \
    if (mobula_nccl_r_ != ncclSuccess)                                                                                \
      return Status::external(std::string(#call) + " failed at " + __FILE__ + ":" + std::to_string(__LINE__) + ": " + \
                              ncclGetErrorString(mobula_nccl_r_));                                                    \
  } while (0)
#endif

bool cuda_built() {
  return MOBULA_HAVE_CUDA + 0 != 0;
}
bool nccl_built() {
  return MOBULA_HAVE_NCCL + 0 != 0;
}

int gpu_count() {
#if MOBULA_HAVE_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device/driver" error
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

std::string gpu_unavailable_reason() {
#if MOBULA_HAVE_CUDA
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no usable GPU: cudaGetDeviceCount: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
           ")";
  }
  return n > 0 ? "" : "no GPU: cudaGetDeviceCount returned 0";
#else
  return "built without CUDA (MOBULA_WITH_CUDA=OFF or CUDA not found)";
#endif
}

std::vector<std::pair<std::string, std::string>> gpu_build_info() {
  std::vector<std::pair<std::string, std::string>> out;
#if MOBULA_HAVE_CUDA
  int rt = 0, drv = 0;
  (void)cudaRuntimeGetVersion(&rt);
  (void)cudaDriverGetVersion(&drv);
  const auto v = [](int x) { return std::to_string(x / 1000) + "." + std::to_string(x % 1000 / 10); };
  std::string s = "runtime " + v(rt) + ", driver " + (drv ? v(drv) : std::string("none"));
  const int n = gpu_count();
  s += ", " + std::to_string(n) + " GPU(s)";
  if (n > 0) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) s += std::string(": ") + p.name;
  }
  out.emplace_back("cuda", s);
#else
  out.emplace_back("cuda", "not built (MOBULA_WITH_CUDA)");
#endif
#if MOBULA_HAVE_NCCL
  int nv = 0;
  if (ncclGetVersion(&nv) == ncclSuccess)
    out.emplace_back(
        "nccl", std::to_string(nv / 10000) + "." + std::to_string(nv / 100 % 100) + "." + std::to_string(nv % 100));
  else
    out.emplace_back("nccl", "linked, ncclGetVersion failed");
#else
  out.emplace_back("nccl", "not built (MOBULA_WITH_NCCL)");
#endif
  return out;
}

Status gpu_roundtrip_check(int device, size_t bytes) {
#if MOBULA_HAVE_CUDA
  MOBULA_CUDA(cudaSetDevice(device));
  const size_t n = bytes / sizeof(uint32_t);
  std::vector<uint32_t> host(n), back(n, 0);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<uint32_t>(i * 2654435761u);
  void* d = nullptr;
  MOBULA_CUDA(cudaMalloc(&d, n * sizeof(uint32_t)));
  Status st = [&]() -> Status {
    MOBULA_CUDA(cudaMemcpy(d, host.data(), n * sizeof(uint32_t), cudaMemcpyHostToDevice));
    MOBULA_CUDA(cudaMemcpy(back.data(), d, n * sizeof(uint32_t), cudaMemcpyDeviceToHost));
    return Status::ok();
  }();
  (void)cudaFree(d);
  if (!st) return st;
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) wrong += host[i] != back[i];
  if (wrong) return Status::external("gpu round trip: " + std::to_string(wrong) + " wrong elements");
  return Status::ok();
#else
  (void)device;
  (void)bytes;
  return Status::not_found(gpu_unavailable_reason());
#endif
}

Status nccl_allreduce_check(int ndev, size_t count) {
#if MOBULA_HAVE_NCCL
  std::vector<ncclComm_t> comms(static_cast<size_t>(ndev));
  std::vector<int> devs(static_cast<size_t>(ndev));
  for (int i = 0; i < ndev; ++i) devs[static_cast<size_t>(i)] = i;
  MOBULA_NCCL(ncclCommInitAll(comms.data(), ndev, devs.data()));
  std::vector<float*> buf(static_cast<size_t>(ndev), nullptr);
  std::vector<cudaStream_t> streams(static_cast<size_t>(ndev));
  Status st = [&]() -> Status {
    std::vector<float> init(count);
    for (int i = 0; i < ndev; ++i) {
      MOBULA_CUDA(cudaSetDevice(i));
      MOBULA_CUDA(cudaMalloc(&buf[static_cast<size_t>(i)], count * sizeof(float)));
      MOBULA_CUDA(cudaStreamCreate(&streams[static_cast<size_t>(i)]));
      for (size_t k = 0; k < count; ++k) init[k] = static_cast<float>(i + 1) + static_cast<float>(k % 7);
      MOBULA_CUDA(cudaMemcpy(buf[static_cast<size_t>(i)], init.data(), count * sizeof(float), cudaMemcpyHostToDevice));
    }
    MOBULA_NCCL(ncclGroupStart());
    for (int i = 0; i < ndev; ++i)
      MOBULA_NCCL(ncclAllReduce(buf[static_cast<size_t>(i)], buf[static_cast<size_t>(i)], count, ncclFloat, ncclSum,
                                comms[static_cast<size_t>(i)], streams[static_cast<size_t>(i)]));
    MOBULA_NCCL(ncclGroupEnd());
    std::vector<float> out(count);
    size_t wrong = 0;
    for (int i = 0; i < ndev; ++i) {
      MOBULA_CUDA(cudaSetDevice(i));
      MOBULA_CUDA(cudaStreamSynchronize(streams[static_cast<size_t>(i)]));
      MOBULA_CUDA(cudaMemcpy(out.data(), buf[static_cast<size_t>(i)], count * sizeof(float), cudaMemcpyDeviceToHost));
      for (size_t k = 0; k < count; ++k) {
        const float want =
            static_cast<float>(ndev * (ndev + 1) / 2) + static_cast<float>(ndev) * static_cast<float>(k % 7);
        wrong += out[k] != want;
      }
    }
    if (wrong) return Status::external("nccl all-reduce: " + std::to_string(wrong) + " wrong elements");
    return Status::ok();
  }();
  for (int i = 0; i < ndev; ++i) {
    (void)cudaSetDevice(i);
    if (buf[static_cast<size_t>(i)]) (void)cudaFree(buf[static_cast<size_t>(i)]);
    if (streams[static_cast<size_t>(i)]) (void)cudaStreamDestroy(streams[static_cast<size_t>(i)]);
    (void)ncclCommDestroy(comms[static_cast<size_t>(i)]);
  }
  return st;
#else
  (void)ndev;
  (void)count;
  return Status::not_found("built without NCCL (MOBULA_WITH_NCCL=OFF or NCCL not found)");
#endif
}

}  // namespace mobula
