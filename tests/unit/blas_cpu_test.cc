// OpenBLAS core choice (core/runtime/blas_cpu.h): which OPENBLAS_CORETYPE a CPU gets when OpenBLAS
// took it for a generic one, and that the user's OPENBLAS_CORETYPE always wins.
#include "core/runtime/blas_cpu.h"

#include <gtest/gtest.h>
#include <stdlib.h>

namespace mobula {
namespace {

TEST(BlasCpu, FallbackCoresGetTheWidestKernelsTheCpuRuns) {
  const CpuVectors spr{true, true, true}, skx{true, true, false}, hsw{true, false, false}, old{};
  // The H100 host's Xeon under Debian 12's OpenBLAS 0.3.21: "Prescott" (docs/perf.md).
  EXPECT_EQ(openblas_coretype_for("Prescott", spr), "Cooperlake");
  EXPECT_EQ(openblas_coretype_for("Prescott", skx), "SkylakeX");
  EXPECT_EQ(openblas_coretype_for("Nehalem", hsw), "Haswell");
  EXPECT_EQ(openblas_coretype_for("Core2", old), "");  // it is right: nothing wider to offer
  // A recognised core is left alone, whatever the CPU has.
  for (const char* core : {"Cooperlake", "SkylakeX", "Haswell", "Zen", "SapphireRapids", "Sandybridge"})
    EXPECT_EQ(openblas_coretype_for(core, spr), "") << core;
}

TEST(BlasCpu, TheUsersCoretypeWinsAndIsDescribed) {
  // This test links KokkosKernels, hence OpenBLAS on Debian; another BLAS has no core name.
  if (openblas_core().empty()) GTEST_SKIP() << "the BLAS is not OpenBLAS";
  EXPECT_NE(blas_description().find("OpenBLAS core " + openblas_core()), std::string::npos) << blas_description();
  ASSERT_EQ(setenv("OPENBLAS_CORETYPE", "Prescott", 1), 0);
  EXPECT_EQ(openblas_coretype_fix(), "");
  ASSERT_EQ(unsetenv("OPENBLAS_CORETYPE"), 0);
}

}  // namespace
}  // namespace mobula
