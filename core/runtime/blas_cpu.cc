#include "core/runtime/blas_cpu.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>

namespace mobula {

std::string openblas_core() {
  // Looked up at run time: the BLAS behind KokkosKernels may be another (MKL, reference).
  using CoreName = char* (*)();
  auto* f = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (!f) return "";
  const char* name = f();
  return name ? name : "";
}

std::string openblas_coretype_for(const std::string& core, const CpuVectors& cpu) {
  // OpenBLAS's names for pre-AVX2 x86 cores: what it falls back to for a CPU it does not recognise.
  static constexpr std::string_view kFallbacks[] = {"Prescott", "Core2",      "Penryn",  "Dunnington",
                                                    "Nehalem",  "Atom",       "Katmai",  "Northwood",
                                                    "Banias",   "Coppermine", "Unknown", "generic"};
  bool fallback = false;
  for (std::string_view f : kFallbacks) fallback = fallback || core == f;
  if (!fallback) return "";
  if (cpu.avx512 && cpu.avx512_bf16) return "Cooperlake";
  if (cpu.avx512) return "SkylakeX";
  if (cpu.avx2_fma) return "Haswell";
  return "";
}

std::string openblas_coretype_fix() {
  if (const char* set = std::getenv("OPENBLAS_CORETYPE"); set && *set) return "";
  const std::string core = openblas_core();
  if (core.empty()) return "";
  CpuVectors cpu;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  cpu.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  cpu.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  cpu.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
#endif
  return openblas_coretype_for(core, cpu);
}

void reexec_with_openblas_fix(char** argv) {
  const std::string fix = openblas_coretype_fix();
  if (fix.empty()) return;
  const std::string chosen = openblas_core();
  if (setenv("OPENBLAS_CORETYPE", fix.c_str(), 1) != 0 || setenv("MOBULA_BLAS_FIXED", chosen.c_str(), 1) != 0) {
    std::fprintf(stderr, "mobula: warning: could not set OPENBLAS_CORETYPE=%s (%s); BLAS runs OpenBLAS's %s kernels\n",
                 fix.c_str(), std::strerror(errno), chosen.c_str());
    return;
  }
  std::fflush(nullptr);
  execv("/proc/self/exe", argv);
  std::fprintf(stderr,
               "mobula: warning: re-exec with OPENBLAS_CORETYPE=%s failed (%s); BLAS runs OpenBLAS's %s kernels "
               "(set OPENBLAS_CORETYPE=%s yourself)\n",
               fix.c_str(), std::strerror(errno), chosen.c_str(), fix.c_str());
}

Status set_blas_threads(int n) {
  using SetThreads = void (*)(int);
  auto* set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (!set) {
    if (n == 1) return Status::ok();  // a BLAS without threads of its own (reference BLAS)
    return Status::invalid_argument("job.threads = " + std::to_string(n) +
                                    ": the BLAS of this build has no thread control (not OpenBLAS); use 1");
  }
  set(n);
  if (const int got = blas_threads(); got != n)
    return Status::invalid_argument("job.threads = " + std::to_string(n) + ": OpenBLAS runs " + std::to_string(got) +
                                    " threads after openblas_set_num_threads (its build's limit?); use at most that");
  return Status::ok();
}

int blas_threads() {
  using GetThreads = int (*)();
  auto* get = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return get ? get() : 1;
}

std::string blas_description() {
  const std::string core = openblas_core();
  if (core.empty()) return "";
  std::string d = "OpenBLAS core " + core;
  if (const char* was = std::getenv("MOBULA_BLAS_FIXED"); was && *was)
    d += std::string(" (OPENBLAS_CORETYPE set by mobula: OpenBLAS chose ") + was + " for this CPU)";
  else if (const std::string fix = openblas_coretype_fix(); !fix.empty())
    d += " (a generic fallback on a CPU with wider vectors: set OPENBLAS_CORETYPE=" + fix + ")";
  return d;
}

}  // namespace mobula
