// Kernels only the sampler's decode runs (a few rows per matmul): row-independent matmuls (sum16
// rows, packed weight panels) and prefetching across kernels. Same conventions as kernels.h.
#pragma once

#include "rl/model/kernels.h"

namespace mobula::rl::kernels {

// out (R,OC) = inp (R,C) W^T + bias with each output one sum16 dot product, so that a row's result
// does not depend on R or on the other rows. A BLAS GEMM does not promise that: OpenBLAS's Haswell
// and Prescott kernels block the rows by M, and a sampled sequence's log-probs then changed in their
// last bits with the batch around it (Sampler.SequenceDoesNotDependOnItsBatch on an Intel host).
// The sampler's matmuls where the panels do not apply (the output head when vocab % 16 != 0,
// d_model % 16 != 0). One item per output: cheap at decode's few rows, not a training GEMM.
template <class Exec>
void matmul_forward_rows(float* out,         // (R,OC)
                         const float* inp,   // (R,C)
                         const float* W,     // (OC,C)
                         const float* bias,  // (OC) or nullptr
                         int R, int C, int OC) {
  Kokkos::parallel_for(
      "matmul_forward_rows", Range<Exec>(0, long(R) * OC), KOKKOS_LAMBDA(long i) {
        const long r = i / OC, o = i % OC;
        const float* x = inp + r * C;
        const float* w = W + o * C;
        out[i] = sum16(C, [&](int c) { return x[c] * w[c]; }) + (bias ? bias[o] : 0.0f);
      });
}

// ---- matmul for a few rows (decode) ------------------------------------------------------------------
// At decode a matmul has R = the rows in flight (16..64) and a weight matrix of 0.25-1 M floats.
// Through BLAS, each call re-packs the whole weight matrix (OpenBLAS's sgemm_incopy: half of a
// batch-16 decode step). Instead the weights are packed once per sampling call into panels of 16
// output rows, column-interleaved: panel p = W[16p..16p+15][c] for c = 0..C-1, stored (C, 16), so a
// step streams every weight once and the 16 outputs of a panel are one vector wide.
constexpr int kPanel = 16;
constexpr int kPanelRows = 8;  // rows per block of matmul_forward_panels: 8 x 16 (x 2 panels) accumulators

template <class Exec>
void pack_panels(float* panels,   // (OC/16, C, 16)
                 const float* W,  // (OC,C)
                 int C, int OC) {
  // One item per (panel, c): its 16 floats are contiguous in the panels, so one division per 16
  // floats, not two per float (docs/perf.md).
  Kokkos::parallel_for(
      "pack_panels", Range<Exec>(0, long(OC / kPanel) * C), KOKKOS_LAMBDA(long i) {
        const long p = i / C, c = i % C;
        const float* w = W + p * kPanel * long(C) + c;
        float* o = panels + i * kPanel;
        for (int k = 0; k < kPanel; ++k) o[k] = w[long(k) * C];
      });
}

// ---- prefetching across kernels (host) -----------------------------------------------------------
// Byte ranges pulled toward the cache a line at a time while a compute-bound kernel runs, so that the
// memory-bound kernel after it finds its data there (software pipelining across kernels). The
// sampler's decode matmuls carry the next attention's K and V rows: at batch 64 the KV cache and the
// weights outgrow L3, and the attention would otherwise wait on DRAM while the matmuls leave the
// memory bus idle. A hint only: nothing it does changes a result. A cursor, so one consumer thread.
struct PrefetchStream {
  const char* base = nullptr;
  long twin = 0;                              // each line is also fetched at +twin bytes; 0: none
  std::vector<std::pair<long, long>> ranges;  // [begin, end) byte offsets from base, in order
  size_t at_range = 0;
  long at = 0;
  int every = 0;  // one line (and its twin) per `every` ticks of the consumer; 0: off
  long credit = 0;

  // Starts over on `ranges`, their lines spread evenly over the `ticks` ticks to come.
  void start(long ticks) {
    at_range = 0;
    credit = 0;
    enter_range();
    long lines = 0;
    for (const auto& r : ranges) lines += (r.second - r.first + 63) / 64;
    every = lines == 0 ? 0 : int(ticks / lines > 1 ? ticks / lines : 1);
  }
  void stop() { every = 0; }
  // n ticks of the consumer: the lines due by now, in runs along the ranges (a call per line, with
  // its range checks, cost bench_model's sampling 1.5-2% at batch 64).
  void tick(long n) {
    if (every == 0) return;
    credit += n;
    long due = credit / every;
    credit -= due * every;
    while (due > 0 && at_range < ranges.size()) {
      const long end = ranges[at_range].second;
      long a = at;
      for (; due > 0 && a < end; --due, a += 64) fetch(a);
      at = a;
      if (at >= end) {
        ++at_range;
        enter_range();
      }
    }
  }
  bool done() const { return every == 0 || at_range >= ranges.size(); }
  void fetch_one() {
    if (at_range >= ranges.size()) return;
    fetch(at);
    at += 64;
    if (at >= ranges[at_range].second) {
      ++at_range;
      enter_range();
    }
  }
  void fetch(long a) const {
#if defined(__GNUC__)
    // Non-temporal: ahead of T0 and well ahead of T2 (L2) in bench_model on this machine.
    __builtin_prefetch(base + a, 0, 0);
    if (twin) __builtin_prefetch(base + a + twin, 0, 0);
#else
    (void)a;
#endif
  }
  void enter_range() {  // the first non-empty range from at_range on
    while (at_range < ranges.size() && ranges[at_range].first >= ranges[at_range].second) ++at_range;
    if (at_range < ranges.size()) at = ranges[at_range].first;
  }
};

#ifdef MOBULA_HOST_VECTORS
// What one block of matmul_forward_panels prefetches, spread over its loop over c: the caller's
// stream (one tick per c, handed over kPrefetchTick at a time), and `ahead_lines` cache lines of
// weights from `ahead` (its share of the next panels).
constexpr int kPrefetchTick = 64;
struct PanelPrefetch {
  PrefetchStream* stream = nullptr;
  const char* ahead = nullptr;
  long ahead_lines = 0;
};

// One block of matmul_forward_panels on the host: rows [r0, r0 + RN) x panels [p, p + NP), RN and
// NP compile-time so the RN x NP accumulators are registers (GCC vectors; with plain arrays GCC
// keeps them in memory: 4x slower). Per c: NP weight vectors, RN broadcasts, RN x NP FMAs.
template <int NP, int RN>
inline void panel_block(float* out, const float* inp, const float* panels, const float* bias, long r0, long p, int C,
                        int OC, const PanelPrefetch& pf) {
  HostV16 acc[RN][NP];
  for (int r = 0; r < RN; ++r)
    for (int q = 0; q < NP; ++q) acc[r][q] = HostV16{};
  const float* P0 = panels + p * long(C) * kPanel;
  const float* x0 = inp + r0 * C;
  PrefetchStream* const stream = pf.stream && !pf.stream->done() ? pf.stream : nullptr;
  // One prefetch per c, unconditional (no branch or counter in this loop): `ahead` advances by its
  // lines' bytes over C; without weights to fetch it runs over the panel being read.
  const char* ahead = pf.ahead_lines > 0 ? pf.ahead : reinterpret_cast<const char*>(P0);
  const long wstride = pf.ahead_lines > 0 ? pf.ahead_lines * 64 / C : 64;
  for (int c0 = 0; c0 < C; c0 += kPrefetchTick) {
    // The stream is ticked outside the loop over c: inside it, its state takes registers and GCC
    // spills the row offsets.
    if (stream) stream->tick(kPrefetchTick);
    const int c1 = c0 + kPrefetchTick < C ? c0 + kPrefetchTick : C;
    for (int c = c0; c < c1; ++c) {
      __builtin_prefetch(ahead + c * wstride, 0, 3);
      HostV16 w[NP];
      for (int q = 0; q < NP; ++q) __builtin_memcpy(&w[q], P0 + (q * long(C) + c) * kPanel, sizeof(HostV16));
      for (int r = 0; r < RN; ++r) {
        const float xv = x0[long(r) * C + c];
        for (int q = 0; q < NP; ++q) acc[r][q] += xv * w[q];
      }
    }
  }
  for (int r = 0; r < RN; ++r)
    for (int q = 0; q < NP; ++q) {
      HostV16 b = HostV16{};
      if (bias) __builtin_memcpy(&b, bias + (p + q) * kPanel, sizeof b);
      const HostV16 o = acc[r][q] + b;
      __builtin_memcpy(out + (r0 + r) * OC + (p + q) * kPanel, &o, sizeof o);
    }
}
// Rows r0 .. r0 + rn (1 <= rn <= kPanelRows) of a block: a full block, or the tail one row-count at a
// time, each a compile-time count so the tail keeps its accumulators in registers too (a table of
// the kPanelRows instantiations, indexed by rn - 1).
template <int NP, int... RNm1>
constexpr auto panel_block_table(std::integer_sequence<int, RNm1...>) {
  return std::array{&panel_block<NP, RNm1 + 1>...};
}
template <int NP>
inline void panel_rows(float* out, const float* inp, const float* panels, const float* bias, long r0, int rn, long p,
                       int C, int OC, const PanelPrefetch& pf) {
  static constexpr auto blocks = panel_block_table<NP>(std::make_integer_sequence<int, kPanelRows>{});
  blocks[size_t(rn - 1)](out, inp, panels, bias, r0, p, C, OC, pf);
}
#endif

// out (R,OC) = inp (R,C) W^T + bias, W packed by pack_panels; OC a multiple of 16. Each output is
// summed over c in order, per row: a row's result does not depend on the other rows (nor on how
// rows and panels are blocked).
//
// Host prefetching (hints; results are the same without): with `prefetch`, each block fetches its
// share of the next two panels' weights; `stream` (single-threaded execution spaces only, else
// ignored) is ticked once per (block, c), panel_ticks(R, C, OC) ticks per call.
// Host blocks per call: pairs of panels (an odd last one alone) x blocks of kPanelRows rows.
inline long panel_blocks(int R, int OC) {
  return (long(OC / kPanel) + 1) / 2 * ((R + kPanelRows - 1) / kPanelRows);
}
inline long panel_ticks(int R, int C, int OC) {
  return panel_blocks(R, OC) * long(C);
}
template <class Exec>
void matmul_forward_panels(float* out,           // (R,OC)
                           const float* inp,     // (R,C)
                           const float* panels,  // (OC/16, C, 16)
                           const float* bias,    // (OC) or nullptr
                           int R, int C, int OC, bool prefetch = true, PrefetchStream* stream = nullptr) {
  constexpr int kRows = kPanelRows;
  const long npanels = OC / kPanel, nrb = (R + kRows - 1) / kRows;
#ifdef MOBULA_HOST_VECTORS
  // Host: blocks of 2 panels x 8 rows (16 accumulators, 2 weight loads and 8 broadcasts per 16
  // FMAs; the row count is a compile-time constant, never tested inside the loop over c). An odd
  // last panel goes alone. Figures: docs/perf.md.
  static_assert(kPanel == 16, "a panel is one HostV16 wide");
  if (Exec().concurrency() > 1) stream = nullptr;  // a cursor: one thread
  Kokkos::parallel_for(
      "matmul_forward_panels", Range<Exec>(0, panel_blocks(R, OC)), KOKKOS_LAMBDA(long i) {
        const long p = (i / nrb) * 2, rb = i % nrb, r0 = rb * kRows;
        const int rn = R - r0 < kRows ? int(R - r0) : kRows;
        PanelPrefetch pf{prefetch ? stream : nullptr, nullptr, 0};
        if (prefetch && p + 2 < npanels) {
          // The next pair's weights (the row blocks of this pair share them out): their first
          // block then does not wait for the hardware prefetcher to find two new streams
          // (bench_model --prefetch-ab measures it; docs/perf.md).
          const long lines = (npanels - p - 2 < 2 ? 1 : 2) * long(C) * kPanel * long(sizeof(float)) / 64;
          const long b0 = lines * rb / nrb, b1 = lines * (rb + 1) / nrb;
          pf.ahead = reinterpret_cast<const char*>(panels + (p + 2) * long(C) * kPanel) + b0 * 64;
          pf.ahead_lines = b1 - b0;
        }
        if (p + 1 < npanels)
          panel_rows<2>(out, inp, panels, bias, r0, rn, p, C, OC, pf);
        else
          panel_rows<1>(out, inp, panels, bias, r0, rn, p, C, OC, pf);
      });
#else
  (void)prefetch;
  (void)stream;
  Kokkos::parallel_for(
      "matmul_forward_panels", Range<Exec>(0, npanels * nrb), KOKKOS_LAMBDA(long i) {
        const long p = i / nrb, r0 = (i % nrb) * kRows;
        const float* P = panels + p * long(C) * kPanel;
        const int rn = R - r0 < kRows ? int(R - r0) : kRows;
        float acc[kRows][kPanel] = {};
        for (int c = 0; c < C; ++c) {
          const float* w = P + long(c) * kPanel;
          for (int r = 0; r < rn; ++r) {
            const float xv = inp[(r0 + r) * C + c];
            for (int k = 0; k < kPanel; ++k) acc[r][k] += xv * w[k];
          }
        }
        for (int r = 0; r < rn; ++r) {
          float* o = out + (r0 + r) * OC + p * kPanel;
          for (int k = 0; k < kPanel; ++k) o[k] = acc[r][k] + (bias ? bias[p * kPanel + k] : 0.0f);
        }
      });
#endif
}

}  // namespace mobula::rl::kernels
