// The convolutional VAE encoder's layers (rl/encoder/vae_encoder.h), forward only, in the layout of
// rl/model/kernels.h: outputs first, a shape comment on every tensor, raw pointers (in Exec's memory
// space) into flat buffers, every kernel a named Kokkos::parallel_for over `Exec`, GEMMs through
// KokkosBlas::gemm (kernels::gemm). Tensors are NCHW float32, PyTorch conventions.
//
// Determinism: no atomics; every reduction runs in a fixed order inside one work item, and a
// convolution runs the same GEMM shape for every sample, so a sample's result is bitwise the same
// whatever the batch it is in, run after run on the same backend.
#pragma once

#include <Kokkos_Core.hpp>
#include <cstdint>

#include "rl/model/kernels.h"

namespace mobula::rl::kernels {

// ---- conv2d: im2col + GEMM ------------------------------------------------------------------------
// Output extent of a convolution along one axis (PyTorch Conv2d, dilation 1).
KOKKOS_INLINE_FUNCTION constexpr int conv2d_out_size(int in, int K, int stride, int pad) {
  return (in + 2 * pad - K) / stride + 1;
}

// One sample (IC,H,W) -> columns (IC*K*K, OH*OW): row (ic,ky,kx), column (oy,ox) holds
// inp[ic, oy*stride - pad + ky, ox*stride - pad + kx], 0 outside the image (zero padding). One work
// item per (row, oy): a run of OW columns, no index division in the inner loop.
template <class Exec>
void im2col(float* col,        // (IC*K*K, OH*OW)
            const float* inp,  // (IC,H,W)
            int IC, int H, int W, int K, int stride, int pad) {
  const int OH = conv2d_out_size(H, K, stride, pad), OW = conv2d_out_size(W, K, stride, pad);
  Kokkos::parallel_for(
      "conv2d_im2col", Range<Exec>(0, long(IC) * K * K * OH), KOKKOS_LAMBDA(long i) {
        const int oy = int(i % OH);
        const long r = i / OH;
        const int kx = int(r % K), ky = int((r / K) % K), ic = int(r / (long(K) * K));
        const int iy = oy * stride - pad + ky;
        float* dst = col + i * OW;
        if (iy < 0 || iy >= H) {
          for (int ox = 0; ox < OW; ++ox) dst[ox] = 0.0f;
          return;
        }
        const float* src = inp + (long(ic) * H + iy) * W;
        for (int ox = 0; ox < OW; ++ox) {
          const int ix = ox * stride - pad + kx;
          dst[ox] = (ix >= 0 && ix < W) ? src[ix] : 0.0f;
        }
      });
}

// out[b] (OC, OH*OW) = weight (OC, IC*K*K) x im2col(inp[b]) + bias: one GEMM per sample, so the
// arithmetic of a sample does not depend on B.
template <class Exec>
void conv2d_forward(float* out,           // (B,OC,OH,OW)
                    float* col,           // (IC*K*K, OH*OW) scratch
                    const float* inp,     // (B,IC,H,W)
                    const float* weight,  // (OC,IC,K,K)
                    const float* bias,    // (OC) or nullptr
                    int B, int IC, int H, int W, int OC, int K, int stride, int pad) {
  const int OH = conv2d_out_size(H, K, stride, pad), OW = conv2d_out_size(W, K, stride, pad);
  const int P = OH * OW, R = IC * K * K;
  for (int b = 0; b < B; ++b) {
    im2col<Exec>(col, inp + long(b) * IC * H * W, IC, H, W, K, stride, pad);
    gemm<Exec>("N", "N", 1.0f, weight, OC, R, col, R, P, 0.0f, out + long(b) * OC * P, OC, P);
  }
  if (bias) {  // one work item per (b, oc, chunk of 64 pixels)
    constexpr long kChunk = 64;
    const long chunks = (P + kChunk - 1) / kChunk;
    Kokkos::parallel_for(
        "conv2d_forward_bias", Range<Exec>(0, long(B) * OC * chunks), KOKKOS_LAMBDA(long i) {
          const long row = i / chunks, k = i % chunks;
          const float v = bias[row % OC];
          const long end = (k + 1) * kChunk < P ? (k + 1) * kChunk : P;
          float* o = out + row * P;
          for (long j = k * kChunk; j < end; ++j) o[j] += v;
        });
  }
}

// ---- GroupNorm (PyTorch nn.GroupNorm, biased variance) --------------------------------------------
// The C/G channels of a group are contiguous in NCHW, so group (b,g) is one run of (C/G)*HW floats.
// Statistics: one work item per (b,g), two passes (mean, then squared deviations), double
// accumulators in four interleaved lanes added in a fixed order. The affine apply runs one work item
// per (b, c, chunk of 64 pixels). out may alias inp.
template <class Exec>
void groupnorm_forward(float* out,        // (B,C,HW)
                       float* mean,       // (B,G)
                       float* rstd,       // (B,G)
                       const float* inp,  // (B,C,HW)
                       const float* w,    // (C)
                       const float* b,    // (C)
                       int B, int C, long HW, int G, float eps = 1e-6f) {
  const long n = long(C / G) * HW;  // floats per group
  Kokkos::parallel_for(
      "groupnorm_forward_stats", Range<Exec>(0, long(B) * G), KOKKOS_LAMBDA(long bg) {
        const float* x = inp + bg * n;
        const long n4 = n - n % 4;
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
        for (long i = 0; i < n4; i += 4) {
          s0 += x[i];
          s1 += x[i + 1];
          s2 += x[i + 2];
          s3 += x[i + 3];
        }
        for (long i = n4; i < n; ++i) s0 += x[i];
        const double m = ((s0 + s1) + (s2 + s3)) / double(n);
        double v0 = 0.0, v1 = 0.0, v2 = 0.0, v3 = 0.0;
        for (long i = 0; i < n4; i += 4) {
          const double d0 = x[i] - m, d1 = x[i + 1] - m, d2 = x[i + 2] - m, d3 = x[i + 3] - m;
          v0 += d0 * d0;
          v1 += d1 * d1;
          v2 += d2 * d2;
          v3 += d3 * d3;
        }
        for (long i = n4; i < n; ++i) v0 += (x[i] - m) * (x[i] - m);
        const double v = ((v0 + v1) + (v2 + v3)) / double(n);
        mean[bg] = float(m);
        rstd[bg] = float(1.0 / kmath::sqrt(v + double(eps)));
      });
  constexpr long kChunk = 64;
  const long chunks = (HW + kChunk - 1) / kChunk;
  const int Cg = C / G;
  Kokkos::parallel_for(
      "groupnorm_forward_apply", Range<Exec>(0, long(B) * C * chunks), KOKKOS_LAMBDA(long i) {
        const long bc = i / chunks, k = i % chunks;
        const int c = int(bc % C);
        const long bg = (bc / C) * G + c / Cg;
        const float s = rstd[bg] * w[c], t = b[c] - mean[bg] * s;
        const long end = (k + 1) * kChunk < HW ? (k + 1) * kChunk : HW;
        const float* x = inp + bc * HW;
        float* o = out + bc * HW;
        for (long j = k * kChunk; j < end; ++j) o[j] = x[j] * s + t;
      });
}

// ---- SiLU: x * sigmoid(x) ------------------------------------------------------------------------
template <class Exec>
void silu_forward(float* out, const float* inp, long n) {  // (n), (n); out may alias inp
  Kokkos::parallel_for(
      "silu_forward", Range<Exec>(0, n), KOKKOS_LAMBDA(long i) {
        const float x = inp[i];
        out[i] = x / (1.0f + kmath::exp(-x));
      });
}

// ---- latent moments: split conv_out's channels into mean and clamped log-variance ---------------
template <class Exec>
void vae_moments_forward(float* mean,           // (B,L,HW)
                         float* logvar,         // (B,L,HW), clamped to [-30, 20] as diffusers does
                         const float* moments,  // (B,2L,HW): channels 0..L-1 mean, L..2L-1 logvar
                         int B, int L, long HW) {
  const long n = long(L) * HW;
  Kokkos::parallel_for(
      "vae_moments_forward", Range<Exec>(0, long(B) * n), KOKKOS_LAMBDA(long i) {
        const long b = i / n, r = i % n;
        mean[i] = moments[2 * b * n + r];
        const float lv = moments[2 * b * n + n + r];
        logvar[i] = lv < -30.0f ? -30.0f : (lv > 20.0f ? 20.0f : lv);
      });
}

// ---- counter-based normal noise ---------------------------------------------------------------------
// splitmix64 (Steele, Lea, Flood 2014) read at random positions: output n of the stream seeded with
// `seed` is mix(seed + (n+1) * golden). A normal deviate takes outputs 2i and 2i+1 (Box-Muller in
// double), so noise(seed, i) is a pure function of (seed, i): no state, no dependence on the batch
// or on the thread that computes it; the same bits on every backend up to the last bit of the
// double log/cos (which round to the same float in practice).
KOKKOS_INLINE_FUNCTION uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

KOKKOS_INLINE_FUNCTION uint64_t splitmix64_at(uint64_t seed, uint64_t n) {
  return splitmix64_mix(seed + (n + 1) * 0x9E3779B97F4A7C15ull);
}

// Uniform in (0,1) from the top 53 bits, never 0 (log) nor 1.
KOKKOS_INLINE_FUNCTION double uniform_open(uint64_t bits) {
  return (double(bits >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// N(0,1) deviate number `index` of the stream `seed`.
KOKKOS_INLINE_FUNCTION float counter_normal(uint64_t seed, uint64_t index) {
  const double u1 = uniform_open(splitmix64_at(seed, 2 * index));
  const double u2 = uniform_open(splitmix64_at(seed, 2 * index + 1));
  return float(kmath::sqrt(-2.0 * kmath::log(u1)) * kmath::cos(6.283185307179586 * u2));
}

// z = mean + exp(0.5 logvar) * eps, eps = counter_normal(seeds[b], element index within sample b):
// a sample's z depends on its seed and its moments only.
template <class Exec>
void vae_sample_forward(float* z,               // (B,n)
                        const float* mean,      // (B,n)
                        const float* logvar,    // (B,n)
                        const uint64_t* seeds,  // (B)
                        int B, long n) {
  Kokkos::parallel_for(
      "vae_sample_forward", Range<Exec>(0, long(B) * n), KOKKOS_LAMBDA(long i) {
        const long b = i / n, j = i % n;
        z[i] = mean[i] + kmath::exp(0.5f * logvar[i]) * counter_normal(seeds[b], uint64_t(j));
      });
}

}  // namespace mobula::rl::kernels
