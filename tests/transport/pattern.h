// Test data: element i of rank `src`'s buffer, distinct per (type, src, salt, i). Floating-point
// values span several magnitudes so that summing in a different order changes the bits.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/transport/transport.h"

namespace mobula::testing {

// memcmp that accepts null pointers for empty ranges (std::memcmp does not: UBSan flags it).
inline int memcmp0(const void* a, const void* b, size_t n) {
  return n ? std::memcmp(a, b, n) : 0;
}

inline uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

inline void pattern_fill(DType t, void* out, size_t count, int src, int salt = 0) {
  const uint64_t seed =
      (static_cast<uint64_t>(src) << 40) ^ (static_cast<uint64_t>(salt) << 56) ^ (static_cast<uint64_t>(t) << 32);
  for (size_t i = 0; i < count; ++i) {
    const uint64_t h = mix(seed + i);
    const double mag = static_cast<double>(1u << (h % 20));  // 1 .. 2^19
    const double val = (static_cast<double>(h >> 11 & 0xFFFFF) / 1048576.0 - 0.5) * mag;
    switch (t) {
      case DType::kU8:
        static_cast<uint8_t*>(out)[i] = static_cast<uint8_t>(h);
        break;
      case DType::kBF16:
        static_cast<uint16_t*>(out)[i] = static_cast<uint16_t>(h);
        break;
      case DType::kI32:
        static_cast<int32_t*>(out)[i] = static_cast<int32_t>(h % 2000001) - 1000000;
        break;
      case DType::kI64:
        static_cast<int64_t*>(out)[i] = static_cast<int64_t>(h >> 4) - (int64_t{1} << 58);
        break;
      case DType::kF32:
        static_cast<float*>(out)[i] = static_cast<float>(val);
        break;
      case DType::kF64:
        static_cast<double*>(out)[i] = val * 1.0000001;
        break;
    }
  }
}

}  // namespace mobula::testing
