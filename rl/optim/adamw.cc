#include "rl/optim/adamw.h"

#include "rl/model/kernels.h"

#include <cmath>

namespace mobula::rl {

float lr_at(const AdamWConfig& c, int step) {
  if (c.warmup_steps > 0 && step < c.warmup_steps) return c.lr * static_cast<float>(step + 1) / c.warmup_steps;
  if (c.total_steps <= 0) return c.lr;
  const int span = c.total_steps - c.warmup_steps;
  if (span <= 0) return c.lr;
  const double progress = std::min(1.0, static_cast<double>(step - c.warmup_steps) / span);
  const double cosine = 0.5 * (1.0 + std::cos(3.141592653589793 * progress));
  return static_cast<float>(c.lr * (c.min_lr_ratio + (1.0 - c.min_lr_ratio) * cosine));
}

template <class Exec>
AdamW<Exec>::AdamW(const AdamWConfig& cfg, const std::vector<TensorInfo>& tensors, size_t n)
    : m("adamw_m", n), v("adamw_v", n), cfg_(cfg), decay_("adamw_decay", n) {
  auto h = Kokkos::create_mirror_view(decay_);
  for (size_t i = 0; i < n; ++i) h(i) = 0.f;
  for (const auto& t : tensors)
    if (t.decay)
      for (size_t i = 0; i < t.size(); ++i) h(t.offset + i) = 1.f;
  Kokkos::deep_copy(decay_, h);
}

template <class Exec>
float AdamW<Exec>::step(Buffer params, Buffer grads) {
  using Range = Kokkos::RangePolicy<Exec, Kokkos::IndexType<long>>;
  constexpr bool kHost = Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename Exec::memory_space>::accessible;
  // Host: both loops go over blocks of kBlock elements with plain inner loops that vectorize. One
  // item per element kept the reduction's running double in memory (a store-to-load chain per
  // element) and left the update scalar (the five arrays may alias for the compiler): AdamW was ~5 %
  // of bench_model's training step. The blocks' sums are added in order (deterministic).
  constexpr long kBlock = 4096;
  const long n = static_cast<long>(params.extent(0));
  const long nb = (n + kBlock - 1) / kBlock;
  const float* g = grads.data();
  double sumsq = 0;
  if constexpr (kHost) {
    Kokkos::parallel_reduce(
        "adamw_grad_norm", Range(0, nb),
        KOKKOS_LAMBDA(long b, double& acc) {
          const long i0 = b * kBlock, i1 = i0 + kBlock < n ? i0 + kBlock : n;
          const float* gb = g + i0;
          acc += kernels::sum16<double>(int(i1 - i0), [&](int k) { return static_cast<double>(gb[k]) * gb[k]; });
        },
        sumsq);
  } else {
    Kokkos::parallel_reduce(
        "adamw_grad_norm", Range(0, n), KOKKOS_LAMBDA(long i, double& acc) { acc += static_cast<double>(g[i]) * g[i]; },
        sumsq);
  }
  const float norm = static_cast<float>(std::sqrt(sumsq));
  const float clip = (cfg_.grad_clip > 0 && norm > cfg_.grad_clip) ? cfg_.grad_clip / norm : 1.0f;
  const float lr = lr_at(cfg_, t_);
  ++t_;
  const float b1 = cfg_.beta1, b2 = cfg_.beta2, eps = cfg_.eps, wd = cfg_.weight_decay;
  const float c1 = 1.0f - static_cast<float>(std::pow(b1, t_));
  const float c2 = 1.0f - static_cast<float>(std::pow(b2, t_));
  float* p = params.data();
  float* mm = m.data();
  float* vv = v.data();
  const float* dk = decay_.data();
  auto update = KOKKOS_LAMBDA(long i, float* __restrict pr, float* __restrict mr, float* __restrict vr,
                              const float* __restrict gr, const float* __restrict dr) {
    const float gi = gr[i] * clip;
    const float mi = b1 * mr[i] + (1.0f - b1) * gi;
    const float vi = b2 * vr[i] + (1.0f - b2) * gi * gi;
    mr[i] = mi;
    vr[i] = vi;
    const float mhat = mi / c1, vhat = vi / c2;
    pr[i] -= lr * (mhat / (kernels::kmath::sqrt(vhat) + eps) + wd * dr[i] * pr[i]);
  };
  if constexpr (kHost) {
    Kokkos::parallel_for(
        "adamw_update", Range(0, nb), KOKKOS_LAMBDA(long b) {
          const long i0 = b * kBlock, i1 = i0 + kBlock < n ? i0 + kBlock : n;
          for (long i = i0; i < i1; ++i) update(i, p, mm, vv, g, dk);
        });
  } else {
    Kokkos::parallel_for(
        "adamw_update", Range(0, n), KOKKOS_LAMBDA(long i) { update(i, p, mm, vv, g, dk); });
  }
  return norm;
}

template class AdamW<Kokkos::DefaultExecutionSpace>;

}  // namespace mobula::rl
