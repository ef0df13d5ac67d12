#include "rl/model/sampler.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <tuple>

#include "rl/model/decode_kernels.h"
#include "rl/model/gpt.h"
#include "rl/model/lora_kernels.h"

namespace mobula::rl {

double stream_uniform(uint64_t seed, uint64_t index) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + (index + 1) * 0xD1B54A32D192ED03ull;
  for (int i = 0; i < 2; ++i) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
  }
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
}

std::pair<int, float> pick_token(const float* z, int V, const SamplingParams& sp, double u) {
  if (sp.temperature <= 0.0f) {
    const int best = static_cast<int>(std::max_element(z, z + V) - z);
    return {best, 0.0f};  // greedy: a deterministic choice, log-probability 0
  }
  // Descending by logit, ties by index (deterministic): one 64-bit key per token, the logit's bits
  // made order-preserving and inverted above the index, sorted as integers (no comparator reading
  // the logits).
  std::vector<uint64_t> key(static_cast<size_t>(V));
  for (int v = 0; v < V; ++v) {
    const uint32_t b = std::bit_cast<uint32_t>(z[v] + 0.0f);              // + 0: -0 ties with +0
    const uint32_t ordered = (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // ascending as unsigned
    key[size_t(v)] = (uint64_t(~ordered) << 32) | uint32_t(v);
  }
  std::sort(key.begin(), key.end());
  auto idx = [&](size_t i) { return static_cast<int>(key[i] & 0xffffffffu); };
  int keep = V;
  if (sp.top_k > 0 && sp.top_k < keep) keep = sp.top_k;
  std::vector<double> p(static_cast<size_t>(keep));
  const double mx = z[idx(0)] / sp.temperature;
  double sum = 0;
  for (int i = 0; i < keep; ++i)
    sum += p[static_cast<size_t>(i)] = std::exp(z[idx(static_cast<size_t>(i))] / sp.temperature - mx);
  if (sp.top_p < 1.0f) {
    double cum = 0;
    int k = 0;
    while (k < keep) {
      cum += p[static_cast<size_t>(k)] / sum;
      ++k;
      if (cum >= sp.top_p) break;
    }
    keep = k;
    sum = 0;
    for (int i = 0; i < keep; ++i) sum += p[static_cast<size_t>(i)];
  }
  double acc = 0;
  const double target = u * sum;
  int chosen = keep - 1;
  for (int i = 0; i < keep; ++i) {
    acc += p[static_cast<size_t>(i)];
    if (target < acc) {
      chosen = i;
      break;
    }
  }
  return {idx(static_cast<size_t>(chosen)), static_cast<float>(std::log(p[static_cast<size_t>(chosen)] / sum))};
}

namespace {

#ifdef MOBULA_HOST_VECTORS
// y (16 NV) = sum over j < n of (a[j] * inv) * V[j] (rows of 16 NV floats), summed in order of j:
// NV vector accumulators that stay in registers (the decode attention's weighted sum of values).
template <int NV>
inline void av_accumulate(float* y, const float* a, float inv, const float* V, int n) {
  kernels::HostV16 acc[NV] = {};
  for (int j = 0; j < n; ++j) {
    const float w = a[j] * inv;
    for (int c = 0; c < NV; ++c) {
      kernels::HostV16 v;
      __builtin_memcpy(&v, V + (long(j) * NV + c) * 16, sizeof v);
      acc[c] += w * v;
    }
  }
  __builtin_memcpy(y, acc, sizeof acc);
}
#endif

// The KV cache's layout, (L, Rmax, NH, Lmax, hs) floats each for K and V: the offset of a layer's
// block, and of a (slot, head)'s Lmax x hs rows within it. One place for the kernels and the
// prefetch plan.
struct KvLayout {
  long rows, heads, len, hs;
  KOKKOS_INLINE_FUNCTION long layer(long l) const { return l * rows * heads * len * hs; }
  KOKKOS_INLINE_FUNCTION long head(long slot, long h) const { return (slot * heads + h) * len * hs; }
};
KvLayout kv_layout(const GptConfig& c, int max_rows, int max_len) {
  return {max_rows, c.heads, max_len, c.head_size()};
}

// Per-step activation offsets for R rows.
struct Work {
  size_t x, ln, qkv, atty, res, fch, fchg, lnf, mean, rstd, scores, total;
};
Work work_layout(const GptConfig& c, int R, int max_len) {
  Work w{};
  Offsets off;
  auto take = [&](size_t n) { return off.take(n); };
  const size_t C = c.d_model;
  w.x = take(R * C);
  w.ln = take(R * C);
  w.qkv = take(R * 3 * C);
  w.atty = take(R * C);
  w.res = take(R * C);
  w.fch = take(R * size_t(c.hidden()));
  w.fchg = take(R * size_t(c.hidden()));
  w.lnf = take(R * C);
  w.mean = take(R);
  w.rstd = take(R);
  w.scores = take(size_t(R) * c.heads * max_len);
  w.total = off.total;
  return w;
}

}  // namespace

template <class Exec>
Result<Sampler<Exec>> Sampler<Exec>::create(const GptConfig& cfg, int max_rows, int max_len) {
  if (Status s = cfg.validate(); !s) return s;
  if (max_rows < 1 || max_len < 2 || max_len > cfg.max_seq)
    return Status::invalid_argument("Sampler: need max_rows >= 1 and 2 <= max_len <= context " +
                                    std::to_string(cfg.max_seq) + " (got " + std::to_string(max_rows) + ", " +
                                    std::to_string(max_len) + ")");
  Sampler s;
  s.cfg_ = cfg;
  s.max_rows_ = max_rows;
  s.max_len_ = max_len;
  s.off_ = gpt_offsets(cfg);
  const size_t cache = size_t(cfg.layers) * max_rows * max_len * cfg.d_model;
  s.kcache_ = Buffer(Kokkos::view_alloc(Kokkos::WithoutInitializing, "kv_k"), cache);
  s.vcache_ = Buffer(Kokkos::view_alloc(Kokkos::WithoutInitializing, "kv_v"), cache);
  s.work_ = Buffer(Kokkos::view_alloc(Kokkos::WithoutInitializing, "sampler_work"),
                   work_layout(cfg, max_rows, max_len).total);
  s.tok_ = Kokkos::View<int*, Mem>("sampler_tok", max_rows);
  s.pos_ = Kokkos::View<int*, Mem>("sampler_pos", max_rows);
  s.slot_ = Kokkos::View<int*, Mem>("sampler_slot", max_rows);
  s.tok_h_ = Kokkos::create_mirror_view(s.tok_);
  s.pos_h_ = Kokkos::create_mirror_view(s.pos_);
  s.slot_h_ = Kokkos::create_mirror_view(s.slot_);
  s.logits_ = Buffer("sampler_logits", size_t(max_rows) * cfg.vocab);
  s.logits_h_ = Kokkos::create_mirror_view(s.logits_);
  if (Kokkos::SpaceAccessibility<Kokkos::HostSpace, Mem>::accessible && cfg.d_model % kernels::kPanel == 0 &&
      cfg.hidden() % kernels::kPanel == 0) {
    s.panels_ = Buffer(Kokkos::view_alloc(Kokkos::WithoutInitializing, "sampler_panels"), s.off_.count);
    s.head_panels_ = cfg.vocab % kernels::kPanel == 0;
  }
  s.kv_pf_ = std::make_shared<kernels::PrefetchStream>();
  s.kv_pf_->twin = long(reinterpret_cast<std::uintptr_t>(s.vcache_.data()) -
                        reinterpret_cast<std::uintptr_t>(s.kcache_.data()));  // V beside each K line
  return s;
}

template <class Exec>
void Sampler<Exec>::pack(const Buffer& params) {
  if (panels_.extent(0) == 0 || (fixed_weights_ && packed_from_ == params.data())) return;
  packed_from_ = params.data();
  const int C = cfg_.d_model, H = cfg_.hidden();
  const GptOffsets& o = off_;
  for (int l = 0; l < cfg_.layers; ++l) {
    const size_t lo = size_t(l) * o.layer_stride;
    kernels::pack_panels<Exec>(panels_.data() + o.qkvw + lo, params.data() + o.qkvw + lo, C, 3 * C);
    kernels::pack_panels<Exec>(panels_.data() + o.attprojw + lo, params.data() + o.attprojw + lo, C, C);
    kernels::pack_panels<Exec>(panels_.data() + o.fcw + lo, params.data() + o.fcw + lo, C, H);
    kernels::pack_panels<Exec>(panels_.data() + o.fcprojw + lo, params.data() + o.fcprojw + lo, H, C);
  }
  if (head_panels_) kernels::pack_panels<Exec>(panels_.data() + o.wte, params.data() + o.wte, C, cfg_.vocab);
}

template <class Exec>
void Sampler<Exec>::plan_kv_prefetch(int l, int R) {
  // The next attention's K and V rows, streamed toward the cache while the matmuls before it run
  // (the weight prefetch is kernels::matmul_forward_panels'; figures in docs/perf.md).
  //
  // Only the first kKvLead bytes of each (row, head)'s K and V: the attention's own prefetches (into
  // L2) and the hardware prefetcher stream the rest once it starts: fetching all of them stalls the
  // matmuls (a core has few misses in flight). docs/perf.md has the measurements.
  constexpr long kKvLead = 1024;
  const int C = cfg_.d_model, NH = cfg_.heads, hs = cfg_.head_size(), H = cfg_.hidden();
  const int next = l + 1 < cfg_.layers ? l + 1 : 0;
  const int ahead = next == 0 ? 2 : 1;  // positions 0..pos (this step) or 0..pos + 1 (the next one)
  const long fb = long(sizeof(float)), row_bytes = hs * fb;
  const KvLayout kv = kv_layout(cfg_, max_rows_, max_len_);
  kernels::PrefetchStream& pf = *kv_pf_;
  pf.base = reinterpret_cast<const char*>(kcache_.data() + kv.layer(next));
  pf.ranges.clear();
  for (int i = 0; i < R; ++i) {
    const int n = std::min(pos_h_(i) + ahead, max_len_);
    for (int h = 0; h < NH; ++h) {
      const long begin = kv.head(slot_h_(i), h) * fb;
      pf.ranges.emplace_back(begin, begin + std::min(n * row_bytes, kKvLead));
    }
  }
  // Spread over this layer's attention projection and MLP, and the next layer's QKV matmul.
  pf.start(kernels::panel_ticks(R, C, C) + kernels::panel_ticks(R, C, H) + kernels::panel_ticks(R, H, C) +
           kernels::panel_ticks(R, C, 3 * C));
}

template <class Exec>
void Sampler<Exec>::step(const Buffer& params, int R, bool logits) {
  namespace K = kernels;
  // Host, no panels: matmul_forward_rows (batch-invariant, like the panels); a GPU: BLAS.
  constexpr bool kHostRows = Kokkos::SpaceAccessibility<Kokkos::HostSpace, Mem>::accessible;
  using Range = K::Range<Exec>;
  const int C = cfg_.d_model, NH = cfg_.heads, hs = cfg_.head_size(), H = cfg_.hidden(), V = cfg_.vocab;
  const int Lmax = max_len_, Rmax = max_rows_;
  row_steps_ += R;
  Kokkos::deep_copy(tok_, tok_h_);
  Kokkos::deep_copy(pos_, pos_h_);
  Kokkos::deep_copy(slot_, slot_h_);
  const GptOffsets& o = off_;
  float* const P = params.data();
  const Work w = work_layout(cfg_, R, max_len_);
  float* W = work_.data();
  float *x = W + w.x, *ln = W + w.ln, *qkv = W + w.qkv, *atty = W + w.atty, *res = W + w.res, *fch = W + w.fch,
        *fchg = W + w.fchg, *scores = W + w.scores;
  const int* tok = tok_.data();
  const int* pos = pos_.data();
  const int* slot = slot_.data();
  const float* wte = P + o.wte;
  const float* wpe = P + o.wpe;
  Kokkos::parallel_for(
      "decode_embed", Range(0, R), KOKKOS_LAMBDA(long r) {
        const float* e = wte + long(tok[r]) * C;
        const float* p = wpe + long(pos[r]) * C;
        for (int c = 0; c < C; ++c) x[r * C + c] = e[c] + p[c];
      });
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const bool panels = panels_.extent(0) > 0;
  K::PrefetchStream* const pf = panels && prefetch_ ? kv_pf_.get() : nullptr;
  // out (R,OC) = inp (R,IC) W^T + bias, the weights at offset wo of the parameters (packed into
  // panels_ at the same offset when `packed`); the K/V prefetch stream ticks along when given.
  auto matmul_at = [&](float* out, const float* inp, size_t wo, const float* bias, int IC, int OC, bool packed,
                       K::PrefetchStream* stream) {
    if (packed)
      K::matmul_forward_panels<Exec>(out, inp, panels_.data() + wo, bias, R, IC, OC, prefetch_, stream);
    else if (kHostRows)
      K::matmul_forward_rows<Exec>(out, inp, P + wo, bias, R, IC, OC);
    else
      K::matmul_forward<Exec>(out, inp, P + wo, bias, R, IC, OC);
  };
  // The layers' matmuls: weights and bias at offsets wo, bo.
  auto matmul = [&](float* out, const float* inp, size_t wo, size_t bo, int IC, int OC) {
    matmul_at(out, inp, wo, P + bo, IC, OC, panels, pf);
  };
  const KvLayout kv = kv_layout(cfg_, Rmax, Lmax);
  for (int l = 0; l < cfg_.layers; ++l) {
    const size_t lo = size_t(l) * o.layer_stride;  // this layer's offset from layer 0
    float* kc = kcache_.data() + kv.layer(l);      // (Rmax, NH, Lmax, hs)
    float* vc = vcache_.data() + kv.layer(l);
    K::layernorm_forward<Exec>(ln, W + w.mean, W + w.rstd, x, P + o.ln1w + lo, P + o.ln1b + lo, R, C);
    matmul(qkv, ln, o.qkvw + lo, o.qkvb + lo, C, 3 * C);
    lora_rows(l, 0, qkv, ln, C, 3 * C, R);
    // K and V are cached as (Lmax, hs) per (slot, head): the store of a new position is contiguous
    // (a transposed K makes every store a cache miss). The q.k dot products
    // use kernels::sum16, so they vectorize without reassociating (deterministic).
    Kokkos::parallel_for(
        "decode_kv_store", Range(0, long(R) * NH), KOKKOS_LAMBDA(long i) {  // one (row, head): hs floats
          const long r = i / NH, h = i % NH;
          const long at_pos = kv.head(slot[r], h) + long(pos[r]) * hs;
          const float* kn = qkv + r * 3 * C + C + h * hs;
          const float* vn = kn + C;
          for (int d = 0; d < hs; ++d) kc[at_pos + d] = kn[d];
          for (int d = 0; d < hs; ++d) vc[at_pos + d] = vn[d];
        });
    if (!logits && l + 1 == cfg_.layers) return;  // prefill: the cache entries are all it needs
    Kokkos::parallel_for(
        "decode_attention", Range(0, long(R) * NH), KOKKOS_LAMBDA(long i) {
          const long r = i / NH, h = i % NH;
          const float* q = qkv + r * 3 * C + h * hs;
          const float* kr = kc + kv.head(slot[r], h);
          const float* vr = vc + kv.head(slot[r], h);
          float* s = scores + i * Lmax;
          const int n = pos[r] + 1;
#ifdef MOBULA_HOST_VECTORS
          // Host: the K and V rows come from memory (at batch 64 the cache and the weights outgrow
          // L3), so each row is prefetched: K 16 rows ahead, running on into the next (row, head)'s
          // K, and V one pass ahead of the weighted sum. 23% less time in this kernel. Into L2
          // (T1), not L1: the lines ahead would crowd out the ones in use (see plan_kv_prefetch).
          const long inext = i + 1 < long(R) * NH ? i + 1 : i;
          const float* knext = kc + kv.head(slot[inext / NH], inext % NH);
#endif
          for (int j = 0; j < n; ++j) {
            const float* krow = kr + long(j) * hs;
#ifdef MOBULA_HOST_VECTORS
            const float* kahead = j + 16 < n ? krow + 16 * hs : knext + long(j + 16 - n) * hs;
            for (int d = 0; d < hs; d += 16) {
              __builtin_prefetch(kahead + d, 0, 2);
              __builtin_prefetch(vr + long(j) * hs + d, 0, 2);
            }
#endif
            s[j] = K::sum16(hs, [&](int d) { return q[d] * krow[d]; }) * scale;
          }
          float mx = -3.0e38f;
          for (int j = 0; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
          float sum = 0.f;
          for (int j = 0; j < n; ++j) {
            s[j] = K::exp_fast(s[j] - mx);  // as in the training forward's softmax
            sum += s[j];
          }
          const float inv = 1.0f / sum;
          float* y = atty + r * C + h * hs;
#ifdef MOBULA_HOST_VECTORS
          // Host: hs / 16 register accumulators, each V row read once, whole; the same sums in the
          // same order as the loop below (where GCC keeps y in memory, as it may alias the cache: a
          // load and a store per FMA).
          if (hs == 16 || hs == 32 || hs == 64 || hs == 128) {
            if (hs == 16) av_accumulate<1>(y, s, inv, vr, n);
            if (hs == 32) av_accumulate<2>(y, s, inv, vr, n);
            if (hs == 64) av_accumulate<4>(y, s, inv, vr, n);
            if (hs == 128) av_accumulate<8>(y, s, inv, vr, n);
            return;
          }
#endif
          for (int d = 0; d < hs; ++d) y[d] = 0.f;
          for (int j = 0; j < n; ++j) {
            const float a = s[j] * inv;
            const float* vrow = vr + long(j) * hs;
            for (int d = 0; d < hs; ++d) y[d] += a * vrow[d];
          }
        });
    if (pf && (logits || l + 2 < cfg_.layers)) plan_kv_prefetch(l, R);  // the attention it fetches for runs
    matmul(res, atty, o.attprojw + lo, o.attprojb + lo, C, C);
    lora_rows(l, 1, res, atty, C, C, R);
    K::add_inplace<Exec>(res, x, long(R) * C);
    K::layernorm_forward<Exec>(ln, W + w.mean, W + w.rstd, res, P + o.ln2w + lo, P + o.ln2b + lo, R, C);
    matmul(fch, ln, o.fcw + lo, o.fcb + lo, C, H);
    lora_rows(l, 2, fch, ln, C, H, R);
    K::gelu_forward<Exec>(fchg, fch, long(R) * H);
    matmul(x, fchg, o.fcprojw + lo, o.fcprojb + lo, H, C);
    lora_rows(l, 3, x, fchg, H, C, R);
    K::add_inplace<Exec>(x, res, long(R) * C);
  }
  K::layernorm_forward<Exec>(W + w.lnf, W + w.mean, W + w.rstd, x, P + o.lnfw, P + o.lnfb, R, C);
  // The head (tied to wte, no bias): no K/V stream to tick here (its lines were planned over the
  // layers' matmuls).
  matmul_at(logits_.data(), W + w.lnf, o.wte, nullptr, C, V, head_panels_, nullptr);
  Kokkos::deep_copy(logits_h_, logits_);
}

template <class Exec>
Result<std::vector<Sample>> Sampler<Exec>::sample(const Buffer& params, const std::vector<std::vector<int>>& prompts,
                                                  const std::vector<uint64_t>& seeds, const SamplingParams& sp) {
  return sample_groups(params, prompts, 1, seeds, sp);
}

template <class Exec>
void Sampler<Exec>::lora_rows(int l, int target, float* out, const float* inp, int IC, int OC, int R) {
  for (int i0 = 0; i0 < R;) {
    LoraAdapter<Exec>* a = row_lora_[size_t(i0)];
    int i1 = i0 + 1;
    while (i1 < R && row_lora_[size_t(i1)] == a) ++i1;
    if (a) {
      const float* w = a->params.data();
      kernels::lora_forward<Exec>(out, inp, w + a->a_offset(l, LoraTarget(target)),
                                  w + a->b_offset(l, LoraTarget(target)), a->config().scale(), i0, i1, IC, OC,
                                  a->config().rank);
    }
    i0 = i1;
  }
}

template <class Exec>
Result<std::vector<Sample>> Sampler<Exec>::sample_groups(const Buffer& params,
                                                         const std::vector<std::vector<int>>& prompts, int group,
                                                         const std::vector<uint64_t>& seeds, const SamplingParams& sp) {
  const SampleBatch<Exec> one{prompts, group, seeds, sp, nullptr};
  auto r = sample_many(params, std::span(&one, 1));
  if (!r) return r.status();
  return std::move((*r)[0]);
}

template <class Exec>
Result<std::vector<std::vector<Sample>>> Sampler<Exec>::sample_many(const Buffer& params,
                                                                    std::span<const SampleBatch<Exec>> reqs) {
  const int V = cfg_.vocab;
  // Rows: request q's follow request q-1's; prompt p of request q owns `group` rows from its slot.
  struct Prompt {
    const std::vector<int>* tokens;
    int slot, group;
  };
  std::vector<Prompt> prompts;
  std::vector<int> row_req, first_row;
  int R = 0;
  for (size_t q = 0; q < reqs.size(); ++q) {
    const SampleBatch<Exec>& b = reqs[q];
    const int P = static_cast<int>(b.prompts.size());
    if (b.group < 1 || R + P * b.group > max_rows_)
      return Status::invalid_argument("Sampler: " + std::to_string(R + P * b.group) + " rows exceed max_rows " +
                                      std::to_string(max_rows_));
    if (static_cast<int>(b.seeds.size()) != P * b.group)
      return Status::invalid_argument("Sampler: need one seed per row (" + std::to_string(P * b.group) + "), got " +
                                      std::to_string(b.seeds.size()));
    if (b.adapter && b.adapter->base().to_string() != cfg_.to_string())
      return Status::invalid_argument("Sampler: a LoRA adapter made for another base (" +
                                      b.adapter->base().to_string() + ")");
    for (int p = 0; p < P; ++p) {
      const auto& pr = b.prompts[size_t(p)];
      if (pr.empty() || static_cast<int>(pr.size()) >= max_len_)
        return Status::invalid_argument("Sampler: prompt " + std::to_string(p) + " has " + std::to_string(pr.size()) +
                                        " tokens; need 1.." + std::to_string(max_len_ - 1));
      for (int t : pr)
        if (t < 0 || t >= V)
          return Status::invalid_argument("Sampler: prompt token " + std::to_string(t) + " outside vocabulary");
      prompts.push_back({&pr, R + p * b.group, b.group});
    }
    first_row.push_back(R);
    for (int r = 0; r < P * b.group; ++r) row_req.push_back(static_cast<int>(q));
    R += P * b.group;
  }
  if (params.extent(0) < off_.count)
    return Status::invalid_argument("Sampler: parameter buffer smaller than the model");
  row_lora_.assign(size_t(max_rows_), nullptr);
  row_steps_ = 0;
  timing_ = Timing{};
  const auto t_call = std::chrono::steady_clock::now();
  kv_pf_->stop();  // a plan left by the last call points at its rows
  pack(params);
  // Prefill: each distinct prompt once, into the cache slot of its first row, all but its last token.
  // Its (prompt, position) rows go through step() max_rows at a time, by position: within a step
  // every row's K and V are stored before any row attends, so a row finds all earlier positions of
  // its prompt, whether they came in an earlier step or in this one. Each row computes exactly what
  // it would one position per step (a row's results do not depend on the rows beside it), in fewer,
  // fuller steps: a GRPO batch of 8 prompts x 8 samples prefills 8 rows per position otherwise.
  int maxlen = 0;
  for (const auto& pr : prompts) maxlen = std::max(maxlen, static_cast<int>(pr.tokens->size()));
  int rows = 0;
  for (int s = 0; s + 1 < maxlen; ++s)
    for (const Prompt& pr : prompts) {
      if (s + 1 >= static_cast<int>(pr.tokens->size())) continue;
      tok_h_(rows) = (*pr.tokens)[size_t(s)];
      pos_h_(rows) = s;
      slot_h_(rows) = pr.slot;
      row_lora_[size_t(rows)] = reqs[size_t(row_req[size_t(pr.slot)])].adapter;
      if (++rows == max_rows_) {
        step(params, rows, false);
        rows = 0;
      }
    }
  if (rows) step(params, rows, false);
  share_prefixes(prompts.size(), [&](size_t k) {
    return std::make_tuple(prompts[k].slot, prompts[k].group, int(prompts[k].tokens->size()) - 1);
  });
  // Decode: every row starts from its prompt's last token.
  std::vector<Sample> out(static_cast<size_t>(R));
  std::vector<int> cur_tok(static_cast<size_t>(R)), cur_pos(static_cast<size_t>(R));
  std::vector<int> active;
  for (const Prompt& pr : prompts)
    for (int g = 0; g < pr.group; ++g) {
      const int r = pr.slot + g;
      cur_tok[size_t(r)] = pr.tokens->back();
      cur_pos[size_t(r)] = static_cast<int>(pr.tokens->size()) - 1;
      if (reqs[size_t(row_req[size_t(r)])].params.max_new_tokens > 0) active.push_back(r);
    }
  std::sort(active.begin(), active.end());
  while (!active.empty()) {
    const int n = static_cast<int>(active.size());
    for (int i = 0; i < n; ++i) {
      const int r = active[size_t(i)];
      tok_h_(i) = cur_tok[size_t(r)];
      pos_h_(i) = cur_pos[size_t(r)];
      slot_h_(i) = r;
      row_lora_[size_t(i)] = reqs[size_t(row_req[size_t(r)])].adapter;
    }
    step(params, n);
    const auto t_pick = std::chrono::steady_clock::now();
    std::vector<int> still;
    for (int i = 0; i < n; ++i) {
      const int r = active[size_t(i)];
      const int q = row_req[size_t(r)];
      const SamplingParams& sp = reqs[size_t(q)].params;
      const float* z = logits_h_.data() + size_t(i) * V;
      Sample& smp = out[size_t(r)];
      const uint64_t seed = reqs[size_t(q)].seeds[size_t(r - first_row[size_t(q)])];
      const auto [t, lp] = pick_token(z, V, sp, stream_uniform(seed, smp.tokens.size()));
      float mx = *std::max_element(z, z + V);
      double sum = 0;
      for (int v = 0; v < V; ++v) sum += std::exp(double(z[v]) - mx);
      smp.tokens.push_back(t);
      smp.logprobs.push_back(lp);
      smp.model_logprobs.push_back(static_cast<float>(double(z[t]) - mx - std::log(sum)));
      const bool stop = std::find(sp.stop_tokens.begin(), sp.stop_tokens.end(), t) != sp.stop_tokens.end();
      const bool full = static_cast<int>(smp.tokens.size()) >= sp.max_new_tokens || cur_pos[size_t(r)] + 2 >= max_len_;
      if (!stop && full) smp.finished_by_length = true;
      if (!stop && !full) {
        cur_tok[size_t(r)] = t;
        cur_pos[size_t(r)] += 1;
        still.push_back(r);
      }
    }
    active.swap(still);
    timing_.pick_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_pick).count();
    timing_.picked += n;
  }
  timing_.total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_call).count();
  std::vector<std::vector<Sample>> split(reqs.size());
  for (size_t q = 0; q < reqs.size(); ++q) {
    const int end = q + 1 < reqs.size() ? first_row[q + 1] : R;
    split[q].assign(std::make_move_iterator(out.begin() + first_row[q]), std::make_move_iterator(out.begin() + end));
  }
  return split;
}

template <class Exec>
template <class F>
void Sampler<Exec>::share_prefixes(size_t prompts, F&& prompt) {
  // Every (prompt, g >= 1): copy the prompt's prefix KV (positions [0, length - 1)) from its first
  // row's slot into row g's.
  std::vector<int> src, dst, len;
  for (size_t k = 0; k < prompts; ++k) {
    const auto [slot, group, plen] = prompt(k);
    for (int g = 1; g < group; ++g) {
      src.push_back(slot);
      dst.push_back(slot + g);
      len.push_back(plen);
    }
  }
  if (src.empty()) return;
  const long n = static_cast<long>(src.size());
  Kokkos::View<int*, Mem> triples("prefix_copies", size_t(3 * n));
  auto th = Kokkos::create_mirror_view(triples);
  for (long i = 0; i < n; ++i)
    th(3 * i) = src[size_t(i)], th(3 * i + 1) = dst[size_t(i)], th(3 * i + 2) = len[size_t(i)];
  Kokkos::deep_copy(triples, th);
  const int NH = cfg_.heads, hs = cfg_.head_size(), L = cfg_.layers;
  const KvLayout kv = kv_layout(cfg_, max_rows_, max_len_);
  const int* c = triples.data();
  float* kc = kcache_.data();
  float* vc = vcache_.data();
  Kokkos::parallel_for(
      "prefix_share", kernels::Range<Exec>(0, long(L) * n * NH), KOKKOS_LAMBDA(long i) {
        const long h = i % NH, k = (i / NH) % n, l = i / (long(NH) * n);
        const long from = kv.layer(l) + kv.head(c[3 * k], h);
        const long to = kv.layer(l) + kv.head(c[3 * k + 1], h);
        for (long e = 0; e < long(c[3 * k + 2]) * hs; ++e) {  // positions [0, prompt length - 1)
          kc[to + e] = kc[from + e];
          vc[to + e] = vc[from + e];
        }
      });
}

template class Sampler<Kokkos::DefaultExecutionSpace>;

}  // namespace mobula::rl
