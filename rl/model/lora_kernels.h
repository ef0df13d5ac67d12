// LoRA delta kernels (rl/model/lora.h): forward/backward pairs over a range of positions
// [p0, p1) of a (N, ...) activation, outputs first, shapes on every tensor.
//
// Determinism: no atomics, no BLAS (whose blocking depends on the batch's size); every value is a
// fixed-order loop inside one work item: per position for the forward and the input gradient, per
// parameter row over the positions in order for dA and dB. So a segment's results do not depend on
// what else is in the batch.
#pragma once

#include "rl/model/kernels.h"
#include "rl/model/lora.h"

namespace mobula::rl::kernels {

// out (N,OC) += scale * (inp A^T) B^T on positions [p0, p1).
template <class Exec>
void lora_forward(float* out,        // (N,OC) +=
                  const float* inp,  // (N,IC)
                  const float* A,    // (r,IC)
                  const float* B,    // (OC,r)
                  float scale, long p0, long p1, int IC, int OC, int r) {
  Kokkos::parallel_for(
      "lora_forward", Range<Exec>(p0, p1), KOKKOS_LAMBDA(long p) {
        const float* x = inp + p * IC;
        float t[kMaxLoraRank];
        for (int j = 0; j < r; ++j) {
          const float* a = A + long(j) * IC;
          t[j] = scale * sum16(IC, [&](int c) { return x[c] * a[c]; });
        }
        float* o = out + p * OC;
        for (int k = 0; k < OC; ++k) {
          const float* b = B + long(k) * r;
          float s = 0.f;
          for (int j = 0; j < r; ++j) s += t[j] * b[j];
          o[k] += s;
        }
      });
}

// Gradients of the delta on positions [p0, p1): dinp += dtmp A, dA += dtmp^T inp, dB += dout^T tmp,
// with tmp = scale * inp A^T and dtmp = scale * dout B (both recomputed here into the scratch).
template <class Exec>
void lora_backward(float* dinp,        // (N,IC) +=
                   float* dA,          // (r,IC) +=
                   float* dB,          // (OC,r) +=
                   float* tmp,         // (p1-p0,r) scratch
                   float* dtmp,        // (p1-p0,r) scratch
                   const float* dout,  // (N,OC)
                   const float* inp,   // (N,IC)
                   const float* A,     // (r,IC)
                   const float* B,     // (OC,r)
                   float scale, long p0, long p1, int IC, int OC, int r) {
  Kokkos::parallel_for(
      "lora_backward_dinp", Range<Exec>(p0, p1), KOKKOS_LAMBDA(long p) {
        const float* x = inp + p * IC;
        const float* g = dout + p * OC;
        float* t = tmp + (p - p0) * r;
        float* dt = dtmp + (p - p0) * r;
        for (int j = 0; j < r; ++j) {
          const float* a = A + long(j) * IC;
          t[j] = scale * sum16(IC, [&](int c) { return x[c] * a[c]; });
          dt[j] = 0.f;
        }
        for (int k = 0; k < OC; ++k) {
          const float* b = B + long(k) * r;
          for (int j = 0; j < r; ++j) dt[j] += g[k] * b[j];
        }
        for (int j = 0; j < r; ++j) dt[j] *= scale;
        float* d = dinp + p * IC;
        for (int c = 0; c < IC; ++c) {
          float s = 0.f;
          for (int j = 0; j < r; ++j) s += dt[j] * A[long(j) * IC + c];
          d[c] += s;
        }
      });
  // dB (OC,r): row k walks the positions in order.
  Kokkos::parallel_for(
      "lora_backward_dB", Range<Exec>(0, OC), KOKKOS_LAMBDA(long k) {
        float acc[kMaxLoraRank];
        for (int j = 0; j < r; ++j) acc[j] = 0.f;
        for (long p = p0; p < p1; ++p) {
          const float g = dout[p * OC + k];
          const float* t = tmp + (p - p0) * r;
          for (int j = 0; j < r; ++j) acc[j] += g * t[j];
        }
        for (int j = 0; j < r; ++j) dB[k * r + j] += acc[j];
      });
  // dA (r,IC): row j walks the positions in order, the IC columns side by side (contiguous).
  Kokkos::parallel_for(
      "lora_backward_dA", Range<Exec>(0, r), KOKKOS_LAMBDA(long j) {
        float* da = dA + j * IC;
        for (long p = p0; p < p1; ++p) {
          const float dt = dtmp[(p - p0) * r + j];
          const float* x = inp + p * IC;
          for (int c = 0; c < IC; ++c) da[c] += dt * x[c];
        }
      });
}

}  // namespace mobula::rl::kernels
