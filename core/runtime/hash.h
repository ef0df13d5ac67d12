// splitmix64 (Steele, Lea, Flood 2014): one step of the generator seeded with x, i.e. a strong
// 64-bit mix of x. The counter-based randomness of the sample order (core/stage), the synthetic
// images (io/images), the tasks (rl/tasks) and the latent noise (rl/roles/latent) all draw from it,
// so each is a pure function of (seed, index). Device code uses rl/encoder/kernels.h's
// KOKKOS_INLINE_FUNCTION twin (splitmix64_mix(x + golden) == splitmix64(x)).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace mobula {

constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// FNV-1a over the bit patterns of a float buffer: the "params_fnv1a" of summary.json files, which
// the tests compare across launchers, trainer counts and restarts.
inline uint64_t params_fnv1a(const float* p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits = 0;
    std::memcpy(&bits, &p[i], sizeof bits);
    h = (h ^ bits) * 1099511628211ULL;
  }
  return h;
}

}  // namespace mobula
