// The transformer's layers as forward/backward pairs (llm.c layout): outputs first, a shape comment
// on every tensor, raw pointers into flat buffers. Every kernel is a named Kokkos::parallel_for over
// the execution space `Exec`; GEMMs go through KokkosBlas::gemm (a BLAS TPL on the host, cuBLAS with
// a CUDA Kokkos). Pointers must live in Exec's memory space.
//
// Determinism: no kernel uses atomics; every reduction runs in a fixed order inside one work item
// (parameter-gradient kernels are parallel over the parameter, looping over rows), so results are
// bitwise reproducible for the same inputs on the same backend.
//
// Backward functions ACCUMULATE (+=) into parameter gradients and into activation gradients that
// have several producers; the caller zeroes them.
#pragma once

#include <KokkosBlas3_gemm.hpp>
#include <Kokkos_Core.hpp>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace mobula::rl::kernels {

// Kokkos moved its math functions from Kokkos::Experimental to Kokkos in 3.7.
#if KOKKOS_VERSION >= 30700
namespace kmath = ::Kokkos;
#else
namespace kmath = ::Kokkos::Experimental;
#endif

// Host code built by GCC/Clang may use GCC vector types (HostV16: 16 floats, one AVX-512 register or
// two AVX2 ones) to keep accumulators in registers; device code and other compilers take the
// portable loops.
#if defined(__GNUC__) && !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__)
#define MOBULA_HOST_VECTORS 1
typedef float HostV16 __attribute__((vector_size(16 * sizeof(float))));
#endif

// exp(x) for the element-wise kernels (GELU, softmax). On the host: Cody-Waite range reduction and
// a degree-6 polynomial, within 2 ulp of expf over [-87, 88] (clamped outside: exp(-87) ~ 1.6e-38
// underflows nothing that matters; +88 saturates near FLT_MAX), NaN in -> NaN out. Unlike a call to
// libm's expf it has no call and no branch, so loops over it vectorize. Rounding uses the 1.5*2^23 trick, not floorf,
// which GCC will not vectorize under strict FP. On a GPU: the device's exp.
KOKKOS_INLINE_FUNCTION float exp_fast(float x) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return kmath::exp(x);
#else
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest: x = n ln2 + r, |r| <= ln2 / 2
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int e = static_cast<int>(n == n ? n : 0.0f);  // n is NaN only for x NaN: p carries the NaN
  return p * std::bit_cast<float>(static_cast<uint32_t>(e + 127) << 23);
#endif
}

// Sum over c < n of f(c) in 16 interleaved partial sums (partial k takes c = k mod 16), added up in
// order, then the n mod 16 tail in order. It vectorizes without reassociation, where one running
// float sum is a chain of n dependent adds that GCC does not vectorize under strict FP, and the
// result is deterministic (layernorm's mean and variance, the decode attention's q.k). T: the type of the sums (double
// for AdamW's gradient norm).
template <class T = float, class F>
KOKKOS_INLINE_FUNCTION T sum16(int n, F f) {
  const int n16 = n - n % 16;
  T part[16] = {};
  for (int c0 = 0; c0 < n16; c0 += 16)
    for (int k = 0; k < 16; ++k) part[k] += f(c0 + k);
  T s = 0;
  for (int k = 0; k < 16; ++k) s += part[k];
  for (int c = n16; c < n; ++c) s += f(c);
  return s;
}

template <class Exec>
using Range = Kokkos::RangePolicy<Exec, Kokkos::IndexType<long>>;

template <class Exec>
using Mat =
    Kokkos::View<float**, Kokkos::LayoutRight, typename Exec::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
template <class Exec>
using CMat = Kokkos::View<const float**, Kokkos::LayoutRight, typename Exec::memory_space,
                          Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

// C (M,N) = alpha * op(A) * op(B) + beta * C, row-major, A is (M,K) or (K,M) when transposed.
template <class Exec>
void gemm(const char* ta, const char* tb, float alpha, const float* A, int a0, int a1, const float* B, int b0, int b1,
          float beta, float* C, int m, int n) {
  CMat<Exec> a(A, a0, a1);
  CMat<Exec> b(B, b0, b1);
  Mat<Exec> c(C, m, n);
  KokkosBlas::gemm(ta, tb, alpha, a, b, beta, c);
}

// ---- encoder: token + position embedding ----------------------------------------------------------
template <class Exec>
void encoder_forward(float* out,         // (B,T,C)
                     const int* tokens,  // (B,T)
                     const float* wte,   // (V,C)
                     const float* wpe,   // (Tmax,C)
                     int B, int T, int C) {
  Kokkos::parallel_for(
      "encoder_forward", Range<Exec>(0, long(B) * T), KOKKOS_LAMBDA(long bt) {
        const long t = bt % T;
        const float* e = wte + long(tokens[bt]) * C;
        const float* p = wpe + t * C;
        float* o = out + bt * C;
        for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
      });
}

template <class Exec>
void encoder_backward(float* dwte,        // (V,C) +=
                      float* dwpe,        // (Tmax,C) +=
                      const float* dout,  // (B,T,C)
                      const int* tokens,  // (B,T)
                      int B, int T, int C, int V) {
  // Parallel over embedding columns: each work item owns column c of dwte, so no atomics.
  Kokkos::parallel_for(
      "encoder_backward_wte", Range<Exec>(0, C), KOKKOS_LAMBDA(long c) {
        for (long bt = 0; bt < long(B) * T; ++bt) {
          const int tok = tokens[bt];
          if (tok >= 0 && tok < V) dwte[long(tok) * C + c] += dout[bt * C + c];
        }
      });
  Kokkos::parallel_for(
      "encoder_backward_wpe", Range<Exec>(0, long(T) * C), KOKKOS_LAMBDA(long tc) {
        const long t = tc / C, c = tc % C;
        float s = 0.f;
        for (int b = 0; b < B; ++b) s += dout[(long(b) * T + t) * C + c];
        dwpe[t * C + c] += s;
      });
}

// ---- layernorm ------------------------------------------------------------------------------------
template <class Exec>
void layernorm_forward(float* out,        // (N,C)
                       float* mean,       // (N)
                       float* rstd,       // (N)
                       const float* inp,  // (N,C)
                       const float* w,    // (C)
                       const float* b,    // (C)
                       long N, int C) {
  Kokkos::parallel_for(
      "layernorm_forward", Range<Exec>(0, N), KOKKOS_LAMBDA(long i) {
        const float* x = inp + i * C;
        const float m = sum16(C, [&](int c) { return x[c]; }) / C;
        const float v = sum16(C, [&](int c) { return (x[c] - m) * (x[c] - m); }) / C;
        const float s = 1.0f / kmath::sqrt(v + 1e-5f);
        float* o = out + i * C;
        for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * w[c] + b[c];
        mean[i] = m;
        rstd[i] = s;
      });
}

template <class Exec>
void layernorm_backward(float* dinp,        // (N,C) +=
                        float* dw,          // (C) += or nullptr (frozen; then db too)
                        float* db,          // (C) +=
                        const float* dout,  // (N,C)
                        const float* inp,   // (N,C)
                        const float* w,     // (C)
                        const float* mean,  // (N)
                        const float* rstd,  // (N)
                        long N, int C) {
  Kokkos::parallel_for(
      "layernorm_backward_dinp", Range<Exec>(0, N), KOKKOS_LAMBDA(long i) {
        const float* x = inp + i * C;
        const float* g = dout + i * C;
        const float m = mean[i], s = rstd[i];
        // 16 partial sums (sum16), not two running floats: those were serial chains that do not
        // vectorize under strict FP (like layernorm_forward's mean and variance).
        const float dnorm_mean = sum16(C, [&](int c) { return w[c] * g[c]; }) / C;
        const float dnorm_norm_mean = sum16(C, [&](int c) { return w[c] * g[c] * ((x[c] - m) * s); }) / C;
        float* d = dinp + i * C;
        for (int c = 0; c < C; ++c) {
          const float norm = (x[c] - m) * s;
          const float dnorm = w[c] * g[c];
          d[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
      });
  if (!dw) return;
  // dw, db: column sums over the rows, each column's rows in order (deterministic).
  auto column = KOKKOS_LAMBDA(int c) {
    float sw = 0.f, sb = 0.f;
    for (long i = 0; i < N; ++i) {
      const float norm = (inp[i * C + c] - mean[i]) * rstd[i];
      sw += norm * dout[i * C + c];
      sb += dout[i * C + c];
    }
    dw[c] += sw;
    db[c] += sb;
  };
  if constexpr (Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename Exec::memory_space>::accessible) {
    // Host: 16 columns an item, walking the rows once with the 16 sums in vector registers: each
    // column's rows added in the same order as a column an item, but with contiguous loads instead
    // of a stride-C walk per column with two serial chains.
    Kokkos::parallel_for(
        "layernorm_backward_params", Range<Exec>(0, (C + 15) / 16), KOKKOS_LAMBDA(long blk) {
          const int c0 = int(blk) * 16;
#ifdef MOBULA_HOST_VECTORS
          if (C - c0 >= 16) {
            HostV16 sw = HostV16{}, sb = HostV16{};
            for (long i = 0; i < N; ++i) {
              HostV16 x, g;
              __builtin_memcpy(&x, inp + i * C + c0, sizeof(HostV16));
              __builtin_memcpy(&g, dout + i * C + c0, sizeof(HostV16));
              sw += (x - mean[i]) * rstd[i] * g;
              sb += g;
            }
            for (int k = 0; k < 16; ++k) {
              dw[c0 + k] += sw[k];
              db[c0 + k] += sb[k];
            }
            return;
          }
#endif
          for (int c = c0; c < C && c < c0 + 16; ++c) column(c);
        });
  } else {
    Kokkos::parallel_for(
        "layernorm_backward_params", Range<Exec>(0, C), KOKKOS_LAMBDA(long c) { column(int(c)); });
  }
}

// ---- matmul: out = inp W^T + bias ---------------------------------------------------------------
template <class Exec>
void matmul_forward(float* out,         // (N,OC)
                    const float* inp,   // (N,C)
                    const float* W,     // (OC,C)
                    const float* bias,  // (OC) or nullptr
                    long N, int C, int OC) {
  gemm<Exec>("N", "T", 1.0f, inp, int(N), C, W, OC, C, 0.0f, out, int(N), OC);
  if (bias) {
    Kokkos::parallel_for(
        "matmul_forward_bias", Range<Exec>(0, N), KOKKOS_LAMBDA(long i) {
          float* o = out + i * OC;
          for (int j = 0; j < OC; ++j) o[j] += bias[j];
        });
  }
}

template <class Exec>
void matmul_backward(float* dinp,        // (N,C) assigned (+= with accumulate_dinp) or nullptr
                     float* dW,          // (OC,C) += or nullptr (frozen weights)
                     float* dbias,       // (OC) += or nullptr
                     const float* dout,  // (N,OC)
                     const float* inp,   // (N,C)
                     const float* W,     // (OC,C)
                     long N, int C, int OC, bool accumulate_dinp = false) {
  if (dinp) gemm<Exec>("N", "N", 1.0f, dout, int(N), OC, W, OC, C, accumulate_dinp ? 1.0f : 0.0f, dinp, int(N), C);
  if (dW) gemm<Exec>("T", "N", 1.0f, dout, int(N), OC, inp, int(N), C, 1.0f, dW, OC, C);
  if (dbias) {
    // dbias (OC,1) += dout^T (OC,N) * 1 (N,1) as a BLAS GEMM: column sums in a fixed order
    // (deterministic), and the BLAS path (KokkosBlas' gemv "T" on LayoutRight is not a TPL call).
    Kokkos::View<float*, typename Exec::memory_space> ones(Kokkos::view_alloc(Kokkos::WithoutInitializing, "ones"), N);
    Kokkos::deep_copy(ones, 1.0f);
    gemm<Exec>("T", "N", 1.0f, dout, int(N), OC, ones.data(), int(N), 1, 1.0f, dbias, OC, 1);
  }
}

// ---- GELU (tanh approximation, as GPT-2) ---------------------------------------------------------
// 0.5 x (1 + tanh(u)) == x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): one exp instead of
// libm's tanhf (which went through expm1f and cost a quarter of a training step).
template <class Exec>
void gelu_forward(float* out, const float* inp, long n) {  // (n), (n)
  Kokkos::parallel_for(
      "gelu_forward", Range<Exec>(0, n), KOKKOS_LAMBDA(long i) {
        const float x = inp[i];
        const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        out[i] = x / (1.0f + exp_fast(-2.0f * u));
      });
}

template <class Exec>
void gelu_backward(float* dinp, const float* inp, const float* dout, long n) {  // (n) assigned, (n), (n)
  Kokkos::parallel_for(
      "gelu_backward", Range<Exec>(0, n), KOKKOS_LAMBDA(long i) {
        const float x = inp[i];
        const float s = 0.7978845608028654f;
        const float u = s * (x + 0.044715f * x * x * x);
        const float sig = 1.0f / (1.0f + exp_fast(-2.0f * u));
        const float th = 2.0f * sig - 1.0f;  // tanh(u)
        const float sech2 = 1.0f - th * th;
        const float local = 0.5f * (1.0f + th) + x * 0.5f * sech2 * s * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = local * dout[i];
      });
}

// ---- residual --------------------------------------------------------------------------------------
template <class Exec>
void residual_forward(float* out, const float* a, const float* b, long n) {
  Kokkos::parallel_for(
      "residual_forward", Range<Exec>(0, n), KOKKOS_LAMBDA(long i) { out[i] = a[i] + b[i]; });
}

template <class Exec>
void add_inplace(float* dst, const float* src, long n) {  // dst += src
  Kokkos::parallel_for(
      "add_inplace", Range<Exec>(0, n), KOKKOS_LAMBDA(long i) { dst[i] += src[i]; });
}

// ---- attention -------------------------------------------------------------------------------------
// Rows (B,T, parts*C) -> heads (B,NH,T,hs) of column block `part`, contiguous per head so each
// head's products are plain GEMMs.
template <class Exec>
void rows_to_heads(float* heads,       // (B,NH,T,hs)
                   const float* rows,  // (B,T,parts*C)
                   int B, int T, int C, int NH, int part, int parts) {
  const int hs = C / NH;
  Kokkos::parallel_for(
      "rows_to_heads", Range<Exec>(0, long(B) * NH * T), KOKKOS_LAMBDA(long i) {
        const long t = i % T, h = (i / T) % NH, b = i / (long(T) * NH);
        const float* src = rows + (b * T + t) * long(parts) * C + long(part) * C + h * hs;
        for (int d = 0; d < hs; ++d) heads[i * hs + d] = src[d];
      });
}

// Heads (B,NH,T,hs) -> rows (B,T, parts*C) column block `part` (assigned).
template <class Exec>
void heads_to_rows(float* rows,         // (B,T,parts*C)
                   const float* heads,  // (B,NH,T,hs)
                   int B, int T, int C, int NH, int part, int parts) {
  const int hs = C / NH;
  Kokkos::parallel_for(
      "heads_to_rows", Range<Exec>(0, long(B) * NH * T), KOKKOS_LAMBDA(long i) {
        const long t = i % T, h = (i / T) % NH, b = i / (long(T) * NH);
        float* dst = rows + (b * T + t) * long(parts) * C + long(part) * C + h * hs;
        for (int d = 0; d < hs; ++d) dst[d] = heads[i * hs + d];
      });
}

// Row-wise causal softmax of scores (rows of length T, row r = query position r % T), in place.
template <class Exec>
void causal_softmax_forward(float* att, long rows, int T) {  // (rows,T)
  Kokkos::parallel_for(
      "causal_softmax_forward", Range<Exec>(0, rows), KOKKOS_LAMBDA(long r) {
        const int t = int(r % T);
        float* a = att + r * T;
        float mx = -3.0e38f;
        for (int j = 0; j <= t; ++j) mx = a[j] > mx ? a[j] : mx;
        float sum = 0.f;
        for (int j = 0; j <= t; ++j) {
          a[j] = exp_fast(a[j] - mx);
          sum += a[j];
        }
        const float inv = 1.0f / sum;
        for (int j = 0; j <= t; ++j) a[j] *= inv;
        for (int j = t + 1; j < T; ++j) a[j] = 0.f;
      });
}

// datt (rows,T) in: dL/datt; out: dL/dscores * scale.
template <class Exec>
void causal_softmax_backward(float* datt, const float* att, long rows, int T, float scale) {
  Kokkos::parallel_for(
      "causal_softmax_backward", Range<Exec>(0, rows), KOKKOS_LAMBDA(long r) {
        const int t = int(r % T);
        float* d = datt + r * T;
        const float* a = att + r * T;
        float dot = 0.f;
        for (int j = 0; j <= t; ++j) dot += a[j] * d[j];
        for (int j = 0; j <= t; ++j) d[j] = a[j] * (d[j] - dot) * scale;
        for (int j = t + 1; j < T; ++j) d[j] = 0.f;
      });
}

// ---- causal multi-head attention (GEMMs per head on contiguous head copies) ----------------
template <class Exec>
void attention_forward(float* atty,                             // (B,T,C)
                       float* att,                              // (B,NH,T,T) softmax probabilities
                       const float* qkv,                        // (B,T,3C)
                       float* q, float* k, float* v, float* y,  // (B,NH,T,hs) scratch
                       int B, int T, int C, int NH) {
  const int hs = C / NH;
  const float scale = 1.0f / kmath::sqrt(static_cast<float>(hs));
  rows_to_heads<Exec>(q, qkv, B, T, C, NH, 0, 3);
  rows_to_heads<Exec>(k, qkv, B, T, C, NH, 1, 3);
  rows_to_heads<Exec>(v, qkv, B, T, C, NH, 2, 3);
  const long th = long(T) * hs, tt = long(T) * T;
  for (long bh = 0; bh < long(B) * NH; ++bh)
    gemm<Exec>("N", "T", scale, q + bh * th, T, hs, k + bh * th, T, hs, 0.0f, att + bh * tt, T, T);
  causal_softmax_forward<Exec>(att, long(B) * NH * T, T);
  for (long bh = 0; bh < long(B) * NH; ++bh)
    gemm<Exec>("N", "N", 1.0f, att + bh * tt, T, T, v + bh * th, T, hs, 0.0f, y + bh * th, T, hs);
  heads_to_rows<Exec>(atty, y, B, T, C, NH, 0, 1);
}

template <class Exec>
void attention_backward(float* dqkv,                                                               // (B,T,3C) assigned
                        const float* datty,                                                        // (B,T,C)
                        const float* qkv,                                                          // (B,T,3C)
                        const float* att,                                                          // (B,NH,T,T)
                        float* q, float* k, float* v, float* dy, float* dq, float* dk, float* dv,  // (B,NH,T,hs)
                        float* datt,                                                               // (B,NH,T,T) scratch
                        int B, int T, int C, int NH) {
  const int hs = C / NH;
  const float scale = 1.0f / kmath::sqrt(static_cast<float>(hs));
  rows_to_heads<Exec>(q, qkv, B, T, C, NH, 0, 3);
  rows_to_heads<Exec>(k, qkv, B, T, C, NH, 1, 3);
  rows_to_heads<Exec>(v, qkv, B, T, C, NH, 2, 3);
  rows_to_heads<Exec>(dy, datty, B, T, C, NH, 0, 1);
  const long th = long(T) * hs, tt = long(T) * T;
  for (long bh = 0; bh < long(B) * NH; ++bh) {
    gemm<Exec>("N", "T", 1.0f, dy + bh * th, T, hs, v + bh * th, T, hs, 0.0f, datt + bh * tt, T, T);
    gemm<Exec>("T", "N", 1.0f, att + bh * tt, T, T, dy + bh * th, T, hs, 0.0f, dv + bh * th, T, hs);
  }
  causal_softmax_backward<Exec>(datt, att, long(B) * NH * T, T, scale);
  for (long bh = 0; bh < long(B) * NH; ++bh) {
    gemm<Exec>("N", "N", 1.0f, datt + bh * tt, T, T, k + bh * th, T, hs, 0.0f, dq + bh * th, T, hs);
    gemm<Exec>("T", "N", 1.0f, datt + bh * tt, T, T, q + bh * th, T, hs, 0.0f, dk + bh * th, T, hs);
  }
  heads_to_rows<Exec>(dqkv, dq, B, T, C, NH, 0, 3);
  heads_to_rows<Exec>(dqkv, dk, B, T, C, NH, 1, 3);
  heads_to_rows<Exec>(dqkv, dv, B, T, C, NH, 2, 3);
}

// ---- output: log-probabilities of targets and entropy ----------------------------------------------
// For each row: logsumexp of logits, logp of the target (0 when target < 0), entropy; keeps lse
// for the backward pass.
template <class Exec>
void logprob_forward(float* logp,          // (N)
                     float* entropy,       // (N) or nullptr
                     float* lse,           // (N)
                     const float* logits,  // (N,V)
                     const int* targets,   // (N), < 0 = no target
                     long N, int V) {
  Kokkos::parallel_for(
      "logprob_forward", Range<Exec>(0, N), KOKKOS_LAMBDA(long i) {
        const float* z = logits + i * V;
        float mx = -3.0e38f;
        for (int v = 0; v < V; ++v) mx = z[v] > mx ? z[v] : mx;
        float sum = 0.f;
        for (int v = 0; v < V; ++v) sum += kmath::exp(z[v] - mx);
        const float l = mx + kmath::log(sum);
        lse[i] = l;
        const int tg = targets[i];
        logp[i] = tg >= 0 ? z[tg] - l : 0.f;
        if (entropy) {
          float h = 0.f;
          for (int v = 0; v < V; ++v) {
            const float lp = z[v] - l;
            h -= kmath::exp(lp) * lp;
          }
          entropy[i] = h;
        }
      });
}

// dlogits = d(sum_i w_i * logp_i)/dlogits = w_i * (onehot(target_i) - softmax_i).
template <class Exec>
void logprob_backward(float* dlogits,       // (N,V) (assigned)
                      const float* logits,  // (N,V)
                      const float* lse,     // (N)
                      const int* targets,   // (N)
                      const float* w,       // (N)
                      long N, int V) {
  Kokkos::parallel_for(
      "logprob_backward", Range<Exec>(0, N), KOKKOS_LAMBDA(long i) {
        const float* z = logits + i * V;
        float* d = dlogits + i * V;
        const int tg = targets[i];
        const float wi = tg >= 0 ? w[i] : 0.f;
        for (int v = 0; v < V; ++v) d[v] = -wi * kmath::exp(z[v] - lse[i]);
        if (tg >= 0) d[tg] += wi;
      });
}

}  // namespace mobula::rl::kernels
