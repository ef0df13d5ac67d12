// GPU discovery through the CUDA runtime and NCCL, when built in (MOBULA_HAVE_CUDA/NCCL).
// Everything here is local, never throws, and works on machines without a GPU or driver:
// gpu_count() is then 0 and gpu_unavailable_reason() says why (for GTEST_SKIP and logs).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/runtime/status.h"

namespace mobula {

bool cuda_built();
bool nccl_built();
int gpu_count();
std::string gpu_unavailable_reason();  // empty when gpu_count() > 0
std::vector<std::pair<std::string, std::string>> gpu_build_info();

// Round trip host -> device -> host of `bytes` bytes on `device`, checked element-wise.
Status gpu_roundtrip_check(int device, size_t bytes);
// Single-process NCCL all-reduce (sum) across `ndev` local devices, result checked.
Status nccl_allreduce_check(int ndev, size_t count);

}  // namespace mobula
