// OpenBLAS picks its kernels from CPUID when the library is loaded. Debian 12's OpenBLAS 0.3.21 does
// not know newer Intel cores as a VM presents them (the Xeon of an H100 host here: AVX-512, AMX,
// AVX512-FP16) and falls back to "Prescott", its SSE3 kernels, several times slower (docs/perf.md).
// OPENBLAS_CORETYPE overrides the choice,
// but only in the environment the library is loaded with, so the fix is a re-exec.
#pragma once

#include <string>

#include "core/runtime/status.h"

namespace mobula {

// The core OpenBLAS chose ("SkylakeX", "Prescott", ...); "" when the BLAS is not OpenBLAS.
std::string openblas_core();

// The OPENBLAS_CORETYPE this CPU should get when OpenBLAS chose a generic fallback core although
// the CPU has AVX2 or AVX-512 ("Cooperlake", "SkylakeX", "Haswell"); "" when OpenBLAS is absent, its
// choice is fine, or OPENBLAS_CORETYPE is already set (the user's choice wins).
std::string openblas_coretype_fix();

// The decision behind it: `core` as OpenBLAS named it, and what the CPU supports.
struct CpuVectors {
  bool avx2_fma = false, avx512 = false /* F, VL, BW, DQ */, avx512_bf16 = false;
};
std::string openblas_coretype_for(const std::string& core, const CpuVectors& cpu);

// When openblas_coretype_fix() names a core: sets OPENBLAS_CORETYPE (and MOBULA_BLAS_FIXED=<the
// core OpenBLAS chose>, for the log) and re-executes this program (/proc/self/exe, same argv), so
// it and every process it starts load OpenBLAS with the right kernels. Call first thing in main,
// before MPI_Init or threads. Returns when nothing is to be done, or (after a warning on stderr)
// when the exec failed.
void reexec_with_openblas_fix(char** argv);

// Threads of the BLAS library in this process. OpenBLAS reads OPENBLAS_NUM_THREADS (or takes every
// core) when it is loaded, so the launcher's environment would decide how a GEMM splits its sums;
// the worker calls set_blas_threads(job.threads) before any math instead (docs/spec.md, job.threads).
// Returns an error when the BLAS has no thread control and n > 1 was asked for, or when OpenBLAS
// reports another count afterwards (a build with fewer threads compiled in).
Status set_blas_threads(int n);
// The thread count the BLAS uses now; 1 for a BLAS without thread control.
int blas_threads();

// One line for logs and `mobula version`: "OpenBLAS core SkylakeX" plus, after a re-exec, "(set by
// mobula: OpenBLAS chose Prescott)"; "" when the BLAS is not OpenBLAS.
std::string blas_description();

}  // namespace mobula
