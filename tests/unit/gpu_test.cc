// GPU checks: CUDA round trip and an NCCL all-reduce over every local GPU. Compiled and linked in
// every build with CUDA/NCCL; skipped with the reason where no GPU is present.
#include <gtest/gtest.h>

#include "core/device/gpu.h"

namespace mobula {
namespace {

TEST(Gpu, BuildInfoIsReported) {
  const auto info = gpu_build_info();
  ASSERT_EQ(info.size(), 2u);
  EXPECT_EQ(info[0].first, "cuda");
  EXPECT_EQ(info[1].first, "nccl");
  if (cuda_built()) {
    EXPECT_NE(info[0].second.find("runtime"), std::string::npos) << info[0].second;
  }
}

TEST(Gpu, DeviceRoundTrip) {
  if (gpu_count() == 0) GTEST_SKIP() << gpu_unavailable_reason();
  for (int d = 0; d < gpu_count(); ++d) {
    const Status s = gpu_roundtrip_check(d, 64 << 20);
    EXPECT_TRUE(s.is_ok()) << s.message();
  }
}

TEST(Gpu, NcclAllReduceAcrossLocalDevices) {
  if (!nccl_built()) GTEST_SKIP() << "built without NCCL";
  if (gpu_count() == 0) GTEST_SKIP() << gpu_unavailable_reason();
  const Status s = nccl_allreduce_check(gpu_count(), 1 << 20);
  EXPECT_TRUE(s.is_ok()) << s.message();
}

}  // namespace
}  // namespace mobula
