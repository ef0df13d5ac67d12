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

// t (r) = scale * A x: the delta's down-projection of one position x (IC).
KOKKOS_INLINE_FUNCTION void lora_down(float* t, const float* x, const float* A, float scale, int IC, int r) {
  for (int j = 0; j < r; ++j) {
    const float* a = A + long(j) * IC;
    t[j] = scale * sum16(IC, [&](int c) { return x[c] * a[c]; });
  }
}

// out (N,OC) += scale * (inp A^T) B^T on positions [p0, p1).
template <class Exec>
void lora_forward(float* out,        // (N,OC) +=
                  const float* inp,  // (N,IC)
                  const float* A,    // (r,IC)
                  const float* B,    // (OC,r)
                  float scale, long p0, long p1, int IC, int OC, int r) {
  Kokkos::parallel_for(
      "lora_forward", Range<Exec>(p0, p1), KOKKOS_LAMBDA(long p) {
        float t[kMaxLoraRank];
        lora_down(t, inp + p * IC, A, scale, IC, r);
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
        lora_down(t, x, A, scale, IC, r);
        // dt = scale * g B: four partial sums over k (k mod 4), added in order at the end: four
        // independent FMA chains instead of one (a fixed order all the same).
        float part[4][kMaxLoraRank];
        for (int q = 0; q < 4; ++q)
          for (int j = 0; j < r; ++j) part[q][j] = 0.f;
        const int OC4 = OC - OC % 4;
        for (int k = 0; k < OC4; k += 4)
          for (int q = 0; q < 4; ++q) {
            const float* b = B + long(k + q) * r;
            const float gk = g[k + q];
            for (int j = 0; j < r; ++j) part[q][j] += gk * b[j];
          }
        for (int k = OC4; k < OC; ++k) {
          const float* b = B + long(k) * r;
          for (int j = 0; j < r; ++j) part[0][j] += g[k] * b[j];
        }
        for (int j = 0; j < r; ++j) dt[j] = scale * (((part[0][j] + part[1][j]) + part[2][j]) + part[3][j]);
        // dinp += dt A, the rank's terms added in order j = 0..r-1 (contiguous over c: vectorizes).
        float* d = dinp + p * IC;
        for (int j = 0; j < r; ++j) {
          const float* a = A + long(j) * IC;
          const float dj = dt[j];
          for (int c = 0; c < IC; ++c) d[c] += dj * a[c];
        }
      });
  // dB (OC,r): every element sums over the positions in order; 16 rows of dB an item, so that each
  // position's dout is read as 16 contiguous floats and the (16, r) sums stay in L1.
  Kokkos::parallel_for(
      "lora_backward_dB", Range<Exec>(0, (OC + 15) / 16), KOKKOS_LAMBDA(long blk) {
        const int k0 = int(blk) * 16, kn = OC - k0 < 16 ? OC - k0 : 16;
        float acc[16 * kMaxLoraRank];
        for (int i = 0; i < kn * r; ++i) acc[i] = 0.f;
        for (long p = p0; p < p1; ++p) {
          const float* g = dout + p * OC + k0;
          const float* t = tmp + (p - p0) * r;
          for (int kk = 0; kk < kn; ++kk) {
            const float gk = g[kk];
            float* a = acc + kk * r;
            for (int j = 0; j < r; ++j) a[j] += gk * t[j];
          }
        }
        for (int kk = 0; kk < kn; ++kk)
          for (int j = 0; j < r; ++j) dB[long(k0 + kk) * r + j] += acc[kk * r + j];
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
