#include "rl/model/gpt.h"

#include <algorithm>
#include <cmath>

#include "rl/model/decode_kernels.h"
#include "rl/model/kernels.h"
#include "rl/model/lora_kernels.h"

namespace mobula::rl {

Status GptConfig::validate() const {
  auto bad = [](const std::string& k, const std::string& m) {
    return Status::invalid_argument("model." + k + ": " + m);
  };
  if (vocab < 2) return bad("vocab", "must be at least 2");
  if (max_seq < 1) return bad("max_seq", "must be at least 1");
  if (layers < 1) return bad("layers", "must be at least 1");
  if (heads < 1) return bad("heads", "must be at least 1");
  if (d_model < 1 || d_model % heads != 0)
    return bad("d_model",
               std::to_string(d_model) + " must be a positive multiple of heads (" + std::to_string(heads) + ")");
  if (mlp_ratio < 1) return bad("mlp_ratio", "must be at least 1");
  return Status::ok();
}

std::string GptConfig::to_string() const {
  return "vocab " + std::to_string(vocab) + ", context " + std::to_string(max_seq) + ", " + std::to_string(layers) +
         " layers, " + std::to_string(heads) + " heads, d_model " + std::to_string(d_model) + ", mlp x" +
         std::to_string(mlp_ratio);
}

std::vector<TensorInfo> gpt_tensors(const GptConfig& c) {
  const int V = c.vocab, T = c.max_seq, C = c.d_model, H = c.hidden();
  std::vector<TensorInfo> t;
  size_t off = 0;
  auto add = [&](std::string name, std::vector<int> shape, bool decay) {
    TensorInfo ti{std::move(name), off, std::move(shape), decay};
    off += ti.size();
    t.push_back(std::move(ti));
  };
  add("wte", {V, C}, true);  // (V,C), also the output head
  add("wpe", {T, C}, true);  // (Tmax,C)
  for (int l = 0; l < c.layers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    add(p + "ln1w", {C}, false);
    add(p + "ln1b", {C}, false);
    add(p + "qkvw", {3 * C, C}, true);
    add(p + "qkvb", {3 * C}, false);
    add(p + "attprojw", {C, C}, true);
    add(p + "attprojb", {C}, false);
    add(p + "ln2w", {C}, false);
    add(p + "ln2b", {C}, false);
    add(p + "fcw", {H, C}, true);
    add(p + "fcb", {H}, false);
    add(p + "fcprojw", {C, H}, true);
    add(p + "fcprojb", {C}, false);
  }
  add("lnfw", {C}, false);
  add("lnfb", {C}, false);
  return t;
}

GptOffsets gpt_offsets(const GptConfig& cfg) {
  const auto table = gpt_tensors(cfg);
  auto at = [&](const std::string& n) {
    for (const auto& t : table)
      if (t.name == n) return t.offset;
    return size_t{0};  // unreachable: every name below is in the table
  };
  GptOffsets o{};
  o.wte = at("wte");
  o.wpe = at("wpe");
  o.ln1w = at("h.0.ln1w");
  o.ln1b = at("h.0.ln1b");
  o.qkvw = at("h.0.qkvw");
  o.qkvb = at("h.0.qkvb");
  o.attprojw = at("h.0.attprojw");
  o.attprojb = at("h.0.attprojb");
  o.ln2w = at("h.0.ln2w");
  o.ln2b = at("h.0.ln2b");
  o.fcw = at("h.0.fcw");
  o.fcb = at("h.0.fcb");
  o.fcprojw = at("h.0.fcprojw");
  o.fcprojb = at("h.0.fcprojb");
  o.lnfw = at("lnfw");
  o.lnfb = at("lnfb");
  o.layer_stride = cfg.layers > 1 ? at("h.1.ln1w") - o.ln1w : 0;
  o.count = table.back().offset + table.back().size();
  return o;
}

int bucket_length(int t, int max_seq) {
  int b = 8;
  while (b < t) b *= 2;
  return b < max_seq ? b : max_seq;
}

namespace {

// Activation offsets for (Bmax, Tmax); per-layer tensors are strided by their max size.
struct Acts {
  size_t btc, bt, bnhtt;
  size_t encoded, ln1, ln1_mean, ln1_rstd, qkv, att, atty, residual2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu, residual3,
      lnf, lnf_mean, lnf_rstd, logits, lse, logp, entropy, total;
};

Acts act_layout(const GptConfig& c, int Bmax, bool recompute) {
  Acts a{};
  // With activation recomputation only one layer's internals are kept (slot 0); residual3 (the
  // input of the next layer) is kept for every layer.
  const size_t L = recompute ? 1 : c.layers, LR = c.layers, C = c.d_model, V = c.vocab, H = c.hidden();
  a.bt = size_t(Bmax) * c.max_seq;
  a.btc = a.bt * C;
  a.bnhtt = size_t(Bmax) * c.heads * c.max_seq * c.max_seq;
  Offsets off;
  auto take = [&](size_t n) { return off.take(n); };
  a.encoded = take(a.btc);
  a.ln1 = take(L * a.btc);
  a.ln1_mean = take(L * a.bt);
  a.ln1_rstd = take(L * a.bt);
  a.qkv = take(L * 3 * a.btc);
  a.att = take(L * a.bnhtt);
  a.atty = take(L * a.btc);
  a.residual2 = take(L * a.btc);
  a.ln2 = take(L * a.btc);
  a.ln2_mean = take(L * a.bt);
  a.ln2_rstd = take(L * a.bt);
  a.fch = take(L * a.bt * H);
  a.fch_gelu = take(L * a.bt * H);
  a.residual3 = take(LR * a.btc);
  a.lnf = take(a.btc);
  a.lnf_mean = take(a.bt);
  a.lnf_rstd = take(a.bt);
  a.logits = take(a.bt * V);
  a.lse = take(a.bt);
  a.logp = take(a.bt);
  a.entropy = take(a.bt);
  a.total = off.total;
  return a;
}

// Scratch: attention heads and activation gradients.
struct Scratch {
  size_t q, k, v, y, dq, dk, dv, dy, datt, dresidual, dln, datty, dqkv, dfch, dfch_gelu, dlogits, total;
};

Scratch scratch_layout(const GptConfig& c, int Bmax) {
  const Acts a = act_layout(c, Bmax, true);
  Scratch s{};
  Offsets off;
  auto take = [&](size_t n) { return off.take(n); };
  s.q = take(a.btc);
  s.k = take(a.btc);
  s.v = take(a.btc);
  s.y = take(a.btc);
  s.dq = take(a.btc);
  s.dk = take(a.btc);
  s.dv = take(a.btc);
  s.dy = take(a.btc);
  s.datt = take(a.bnhtt);
  s.dresidual = take(a.btc);
  s.dln = take(a.btc);
  s.datty = take(a.btc);
  s.dqkv = take(3 * a.btc);
  s.dfch = take(a.bt * c.hidden());
  s.dfch_gelu = take(a.bt * c.hidden());
  s.dlogits = take(a.bt * c.vocab);
  s.total = off.total;
  return s;
}

// Deterministic N(0, std) from a 64-bit counter stream (splitmix64 + Box-Muller), identical on
// every platform (std::normal_distribution is implementation-defined).
struct Normal {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  float operator()(float stddev) {
    const double u1 = uniform(), u2 = uniform();
    return static_cast<float>(stddev * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
};

}  // namespace

template <class Exec>
struct Gpt<Exec>::P {
  float *wte, *wpe, *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb,
      *lnfw, *lnfb;
};

// Layer-0 pointers into a flat buffer; layer l's per-layer tensor is at + l * off_.layer_stride.
template <class Exec>
typename Gpt<Exec>::P Gpt<Exec>::param_ptrs(float* base) const {
  const GptOffsets& o = off_;
  return P{base + o.wte,      base + o.wpe,      base + o.ln1w, base + o.ln1b, base + o.qkvw, base + o.qkvb,
           base + o.attprojw, base + o.attprojb, base + o.ln2w, base + o.ln2b, base + o.fcw,  base + o.fcb,
           base + o.fcprojw,  base + o.fcprojb,  base + o.lnfw, base + o.lnfb};
}

template <class Exec>
Result<Gpt<Exec>> Gpt<Exec>::create(const GptConfig& cfg, int max_batch, bool recompute) {
  if (Status s = cfg.validate(); !s) return s;
  if (max_batch < 1) return Status::invalid_argument("Gpt: max_batch must be at least 1");
  Gpt g;
  g.cfg_ = cfg;
  g.max_batch_ = max_batch;
  g.recompute_ = recompute;
  g.tensors_ = gpt_tensors(cfg);
  g.off_ = gpt_offsets(cfg);
  g.num_params_ = g.off_.count;
  g.params = Buffer("gpt_params", g.num_params_);
  g.grads = Buffer("gpt_grads", g.num_params_);
  g.acts_ =
      Buffer(Kokkos::view_alloc(Kokkos::WithoutInitializing, "gpt_acts"), act_layout(cfg, max_batch, recompute).total);
  g.scratch_ =
      Buffer(Kokkos::view_alloc(Kokkos::WithoutInitializing, "gpt_scratch"), scratch_layout(cfg, max_batch).total);
  const size_t bt = size_t(max_batch) * cfg.max_seq;
  g.tokens_ = Kokkos::View<int*, Mem>("gpt_tokens", bt);
  g.targets_ = Kokkos::View<int*, Mem>("gpt_targets", bt);
  g.wvec_ = Kokkos::View<float*, Mem>("gpt_w", bt);
  return g;
}

template <class Exec>
const TensorInfo* Gpt<Exec>::tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

template <class Exec>
void Gpt<Exec>::init(uint64_t seed) {
  auto h = Kokkos::create_mirror_view(params);
  Normal rng{seed * 0x2545F4914F6CDD1Dull + 1};
  const float proj_std = 0.02f / std::sqrt(2.0f * static_cast<float>(cfg_.layers));
  for (const auto& t : tensors_) {
    const bool is_ln_w = t.name.ends_with("ln1w") || t.name.ends_with("ln2w") || t.name == "lnfw";
    const bool is_proj = t.name.ends_with("attprojw") || t.name.ends_with("fcprojw");
    for (size_t i = 0; i < t.size(); ++i) {
      float v = 0.f;
      if (is_ln_w)
        v = 1.f;
      else if (t.decay)
        v = rng(is_proj ? proj_std : 0.02f);
      h(t.offset + i) = v;
    }
  }
  Kokkos::deep_copy(params, h);
  zero_grad();
}

template <class Exec>
void Gpt<Exec>::zero_grad() {
  Kokkos::deep_copy(grads, 0.0f);
}

template <class Exec>
Status Gpt<Exec>::forward(std::span<const int> tokens, std::span<const int> targets, int B, int T,
                          std::span<float> logp, std::span<float> entropy) {
  namespace K = kernels;
  const int V = cfg_.vocab, C = cfg_.d_model, L = cfg_.layers;
  if (B < 1 || B > max_batch_ || T < 1 || T > cfg_.max_seq)
    return Status::invalid_argument("Gpt::forward: batch " + std::to_string(B) + " x " + std::to_string(T) +
                                    " outside (1.." + std::to_string(max_batch_) + ") x (1.." +
                                    std::to_string(cfg_.max_seq) + ")");
  const size_t N = size_t(B) * T;
  for (const auto& seg : lora_)
    if (seg.row0 + seg.rows > B)
      return Status::invalid_argument("Gpt::forward: LoRA segment rows " + std::to_string(seg.row0) + ".." +
                                      std::to_string(seg.row0 + seg.rows) + " outside the batch of " +
                                      std::to_string(B));
  if (tokens.size() != N || targets.size() != N || logp.size() != N || (!entropy.empty() && entropy.size() != N))
    return Status::invalid_argument(
        "Gpt::forward: tokens/targets/logp/entropy must each hold B*T = " + std::to_string(N) + " elements");
  for (size_t i = 0; i < N; ++i) {
    if (tokens[i] < 0 || tokens[i] >= V)
      return Status::invalid_argument("Gpt::forward: token " + std::to_string(tokens[i]) + " at " + std::to_string(i) +
                                      " outside the vocabulary [0, " + std::to_string(V) + ")");
    if (targets[i] >= V)
      return Status::invalid_argument("Gpt::forward: target " + std::to_string(targets[i]) + " outside the vocabulary");
  }
  {
    auto tok = Kokkos::subview(tokens_, std::pair<size_t, size_t>(0, N));
    auto tgt = Kokkos::subview(targets_, std::pair<size_t, size_t>(0, N));
    Kokkos::View<const int*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> ht(tokens.data(), N),
        hg(targets.data(), N);
    Kokkos::deep_copy(tok, ht);
    Kokkos::deep_copy(tgt, hg);
  }
  const Acts a = act_layout(cfg_, max_batch_, recompute_);
  float* A = acts_.data();
  const P p = param_ptrs(params.data());
  K::encoder_forward<Exec>(A + a.encoded, tokens_.data(), p.wte, p.wpe, B, T, C);
  for (int l = 0; l < L; ++l) layer_forward(l, B, T);
  const float* last = A + a.residual3 + size_t(L - 1) * a.btc;
  K::layernorm_forward<Exec>(A + a.lnf, A + a.lnf_mean, A + a.lnf_rstd, last, p.lnfw, p.lnfb, long(N), C);
  proj_forward(0, 4, A + a.logits, A + a.lnf, p.wte, nullptr, C, V, B, T);
  K::logprob_forward<Exec>(A + a.logp, entropy.empty() ? nullptr : A + a.entropy, A + a.lse, A + a.logits,
                           targets_.data(), long(N), V);
  Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> hl(logp.data(), N);
  Kokkos::deep_copy(hl, Kokkos::subview(acts_, std::pair<size_t, size_t>(a.logp, a.logp + N)));
  if (!entropy.empty()) {
    Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> he(entropy.data(), N);
    Kokkos::deep_copy(he, Kokkos::subview(acts_, std::pair<size_t, size_t>(a.entropy, a.entropy + N)));
  }
  B_ = B;
  T_ = T;
  return Status::ok();
}

template <class Exec>
void Gpt<Exec>::layer_forward(int l, int B, int T) {
  namespace K = kernels;
  const int C = cfg_.d_model, NH = cfg_.heads, H = cfg_.hidden();
  const size_t N = size_t(B) * T;
  const Acts a = act_layout(cfg_, max_batch_, recompute_);
  float* A = acts_.data();
  const P p = param_ptrs(params.data());
  const Scratch s = scratch_layout(cfg_, max_batch_);
  float* S = scratch_.data();
  const size_t pl = off_.layer_stride;
  const int li = recompute_ ? 0 : l;  // slot of this layer's internal activations
  const size_t o = size_t(l) * pl;
  const float* residual = l == 0 ? A + a.encoded : A + a.residual3 + size_t(l - 1) * a.btc;
  float* ln1 = A + a.ln1 + li * a.btc;
  float* qkv = A + a.qkv + li * 3 * a.btc;
  float* att = A + a.att + li * a.bnhtt;
  float* atty = A + a.atty + li * a.btc;
  float* res2 = A + a.residual2 + li * a.btc;
  float* ln2 = A + a.ln2 + li * a.btc;
  float* fch = A + a.fch + li * a.bt * H;
  float* fchg = A + a.fch_gelu + li * a.bt * H;
  float* res3 = A + a.residual3 + l * a.btc;
  K::layernorm_forward<Exec>(ln1, A + a.ln1_mean + li * a.bt, A + a.ln1_rstd + li * a.bt, residual, p.ln1w + o,
                             p.ln1b + o, long(N), C);
  proj_forward(l, 0, qkv, ln1, p.qkvw + o, p.qkvb + o, C, 3 * C, B, T);
  K::attention_forward<Exec>(atty, att, qkv, S + s.q, S + s.k, S + s.v, S + s.y, B, T, C, NH);
  proj_forward(l, 1, res2, atty, p.attprojw + o, p.attprojb + o, C, C, B, T);
  K::add_inplace<Exec>(res2, residual, long(N) * C);
  K::layernorm_forward<Exec>(ln2, A + a.ln2_mean + li * a.bt, A + a.ln2_rstd + li * a.bt, res2, p.ln2w + o, p.ln2b + o,
                             long(N), C);
  proj_forward(l, 2, fch, ln2, p.fcw + o, p.fcb + o, C, H, B, T);
  K::gelu_forward<Exec>(fchg, fch, long(N) * H);
  proj_forward(l, 3, res3, fchg, p.fcprojw + o, p.fcprojb + o, H, C, B, T);
  K::add_inplace<Exec>(res3, res2, long(N) * C);
}

template <class Exec>
Status Gpt<Exec>::backward(std::span<const float> w) {
  namespace K = kernels;
  if (B_ == 0) return Status::invalid_argument("Gpt::backward: no forward pass to differentiate");
  const int B = B_, T = T_;
  const int V = cfg_.vocab, C = cfg_.d_model, NH = cfg_.heads, L = cfg_.layers, H = cfg_.hidden();
  const size_t N = size_t(B) * T;
  if (w.size() != N)
    return Status::invalid_argument("Gpt::backward: w must hold B*T = " + std::to_string(N) + " elements");
  {
    Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> hw(w.data(), N);
    Kokkos::deep_copy(Kokkos::subview(wvec_, std::pair<size_t, size_t>(0, N)), hw);
  }
  const Acts a = act_layout(cfg_, max_batch_, recompute_);
  const Scratch s = scratch_layout(cfg_, max_batch_);
  float* A = acts_.data();
  float* S = scratch_.data();
  const P p = param_ptrs(params.data());
  const P g = param_ptrs(grads.data());
  const size_t pl = off_.layer_stride;
  float* dres = S + s.dresidual;
  float* dln = S + s.dln;
  auto gw = [this](float* grad) { return frozen_ ? nullptr : grad; };  // base weight gradients

  K::logprob_backward<Exec>(S + s.dlogits, A + a.logits, A + a.lse, targets_.data(), wvec_.data(), long(N), V);
  proj_backward(0, 4, dln, g.wte, nullptr, S + s.dlogits, A + a.lnf, p.wte, C, V, B, T);
  Kokkos::deep_copy(Kokkos::subview(scratch_, std::pair<size_t, size_t>(s.dresidual, s.dresidual + N * C)), 0.0f);
  K::layernorm_backward<Exec>(dres, gw(g.lnfw), gw(g.lnfb), dln, A + a.residual3 + size_t(L - 1) * a.btc, p.lnfw,
                              A + a.lnf_mean, A + a.lnf_rstd, long(N), C);
  for (int l = L - 1; l >= 0; --l) {
    if (recompute_) layer_forward(l, B, T);  // same kernels, same inputs: bitwise the same values
    const int li = recompute_ ? 0 : l;
    const size_t o = size_t(l) * pl;
    const float* residual = l == 0 ? A + a.encoded : A + a.residual3 + size_t(l - 1) * a.btc;
    const float* ln1 = A + a.ln1 + li * a.btc;
    const float* qkv = A + a.qkv + li * 3 * a.btc;
    const float* att = A + a.att + li * a.bnhtt;
    const float* atty = A + a.atty + li * a.btc;
    const float* res2 = A + a.residual2 + li * a.btc;
    const float* ln2 = A + a.ln2 + li * a.btc;
    const float* fch = A + a.fch + li * a.bt * H;
    const float* fchg = A + a.fch_gelu + li * a.bt * H;
    // res3 = res2 + fcproj(gelu(fc(ln2(res2)))); dres holds dL/dres3.
    proj_backward(l, 3, S + s.dfch_gelu, g.fcprojw + o, g.fcprojb + o, dres, fchg, p.fcprojw + o, H, C, B, T);
    K::gelu_backward<Exec>(S + s.dfch, fch, S + s.dfch_gelu, long(N) * H);
    proj_backward(l, 2, dln, g.fcw + o, g.fcb + o, S + s.dfch, ln2, p.fcw + o, C, H, B, T);
    K::layernorm_backward<Exec>(dres, gw(g.ln2w + o), gw(g.ln2b + o), dln, res2, p.ln2w + o, A + a.ln2_mean + li * a.bt,
                                A + a.ln2_rstd + li * a.bt, long(N), C);
    // dres now holds dL/dres2; res2 = residual + attproj(attention(qkv(ln1(residual)))).
    proj_backward(l, 1, S + s.datty, g.attprojw + o, g.attprojb + o, dres, atty, p.attprojw + o, C, C, B, T);
    K::attention_backward<Exec>(S + s.dqkv, S + s.datty, qkv, att, S + s.q, S + s.k, S + s.v, S + s.dy, S + s.dq,
                                S + s.dk, S + s.dv, S + s.datt, B, T, C, NH);
    proj_backward(l, 0, dln, g.qkvw + o, g.qkvb + o, S + s.dqkv, ln1, p.qkvw + o, C, 3 * C, B, T);
    K::layernorm_backward<Exec>(dres, gw(g.ln1w + o), gw(g.ln1b + o), dln, residual, p.ln1w + o,
                                A + a.ln1_mean + li * a.bt, A + a.ln1_rstd + li * a.bt, long(N), C);
  }
  if (!frozen_) K::encoder_backward<Exec>(g.wte, g.wpe, dres, tokens_.data(), B, T, C, V);
  return Status::ok();
}

template <class Exec>
void Gpt<Exec>::set_frozen_base(bool frozen) {
  frozen_ = frozen;
  fwd_.clear();
  bwd_.clear();
  if (!frozen) return;
  const int C = cfg_.d_model, H = cfg_.hidden(), V = cfg_.vocab;
  const P p = param_ptrs(params.data());
  for (int l = 0; l < cfg_.layers; ++l) {
    const size_t o = size_t(l) * off_.layer_stride;
    const std::pair<const float*, std::pair<int, int>> mats[kLoraTargets] = {
        {p.qkvw + o, {3 * C, C}}, {p.attprojw + o, {C, C}}, {p.fcw + o, {H, C}}, {p.fcprojw + o, {C, H}}};
    for (const auto& [w, shape] : mats) {
      fwd_.push_back(pack_rowmat(w, shape.first, shape.second, false));
      bwd_.push_back(pack_rowmat(w, shape.first, shape.second, true));
    }
  }
  fwd_.push_back(pack_rowmat(p.wte, V, C, false));
  bwd_.push_back(pack_rowmat(p.wte, V, C, true));
}

template <class Exec>
typename Gpt<Exec>::RowMat Gpt<Exec>::pack_rowmat(const float* W, int OC, int IC, bool transpose) {
  RowMat m;
  m.out = transpose ? IC : OC;
  m.in = transpose ? OC : IC;
  m.panels = m.out % kernels::kPanel == 0;
  const int out = m.out, in = m.in;
  const size_t n = size_t(OC) * IC;
  // W^T when transposing; W itself feeds the panels as it is.
  Buffer src;
  const float* rows = W;
  if (transpose || !m.panels) {
    src = Buffer(Kokkos::view_alloc(Kokkos::WithoutInitializing, "rowmat_src"), n);
    float* d = src.data();
    if (transpose)
      Kokkos::parallel_for(
          "rowmat_transpose", kernels::Range<Exec>(0, long(out) * in), KOKKOS_LAMBDA(long i) {
            const long r = i / in, c = i % in;
            d[i] = W[c * out + r];
          });
    else
      Kokkos::deep_copy(src, Kokkos::View<const float*, Mem, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(W, n));
    rows = d;
  }
  if (!m.panels) {
    m.w = src;
    return m;
  }
  m.w = Buffer(Kokkos::view_alloc(Kokkos::WithoutInitializing, "rowmat_panels"), n);
  kernels::pack_panels<Exec>(m.w.data(), rows, in, out);
  return m;
}

template <class Exec>
void Gpt<Exec>::rowmat(const RowMat& m, float* out, const float* inp, const float* bias, long N) {
  if (m.panels)
    kernels::matmul_forward_panels<Exec>(out, inp, m.w.data(), bias, int(N), m.in, m.out, false);
  else
    kernels::matmul_forward_rows<Exec>(out, inp, m.w.data(), bias, int(N), m.in, m.out);
}

template <class Exec>
void Gpt<Exec>::proj_forward(int l, int target, float* out, const float* inp, const float* W, const float* bias, int IC,
                             int OC, int B, int T) {
  const long N = long(B) * T;
  if (frozen_)
    rowmat(fwd_[rowmat_index(l, target)], out, inp, bias, N);
  else
    kernels::matmul_forward<Exec>(out, inp, W, bias, N, IC, OC);
  if (target < 4) lora_forward(l, target, out, inp, IC, OC, T);
}

template <class Exec>
void Gpt<Exec>::proj_backward(int l, int target, float* dinp, float* dW, float* db, const float* dout, const float* inp,
                              const float* W, int IC, int OC, int B, int T) {
  const long N = long(B) * T;
  if (frozen_)
    rowmat(bwd_[rowmat_index(l, target)], dinp, dout, nullptr, N);
  else
    kernels::matmul_backward<Exec>(dinp, dW, db, dout, inp, W, N, IC, OC);
  if (target < 4) lora_backward(l, target, dinp, dout, inp, IC, OC, T);
}

template <class Exec>
Status Gpt<Exec>::set_lora(std::span<const LoraSegment<Exec>> segments) {
  int end = 0, rank = 0;
  for (const auto& seg : segments) {
    if (seg.row0 < end || seg.rows < 0)
      return Status::invalid_argument("Gpt::set_lora: segments must be in row order and not overlap");
    end = seg.row0 + seg.rows;
    if (!seg.adapter) continue;
    const GptConfig& b = seg.adapter->base();
    if (b.to_string() != cfg_.to_string())
      return Status::invalid_argument("Gpt::set_lora: adapter made for base (" + b.to_string() + "), this model is (" +
                                      cfg_.to_string() + ")");
    rank = std::max(rank, seg.adapter->config().rank);
  }
  lora_.assign(segments.begin(), segments.end());
  const size_t need = 2 * size_t(max_batch_) * cfg_.max_seq * size_t(rank);
  if (lora_scratch_.extent(0) < need)
    lora_scratch_ = Buffer(Kokkos::view_alloc(Kokkos::WithoutInitializing, "lora_scratch"), need);
  return Status::ok();
}

template <class Exec>
void Gpt<Exec>::lora_forward(int l, int target, float* out, const float* inp, int IC, int OC, int T) {
  for (const auto& seg : lora_) {
    if (!seg.adapter || seg.rows == 0) continue;
    const auto& a = *seg.adapter;
    const float* w = a.params.data();
    kernels::lora_forward<Exec>(out, inp, w + a.a_offset(l, LoraTarget(target)), w + a.b_offset(l, LoraTarget(target)),
                                a.config().scale(), long(seg.row0) * T, long(seg.row0 + seg.rows) * T, IC, OC,
                                a.config().rank);
  }
}

template <class Exec>
void Gpt<Exec>::lora_backward(int l, int target, float* dinp, const float* dout, const float* inp, int IC, int OC,
                              int T) {
  const size_t half = lora_scratch_.extent(0) / 2;
  for (const auto& seg : lora_) {
    if (!seg.adapter || seg.rows == 0) continue;
    auto& a = *seg.adapter;
    const LoraTarget t = LoraTarget(target);
    const float* w = a.params.data();
    float* G = a.grads.data();
    const int r = a.config().rank;
    const long p0 = long(seg.row0) * T, p1 = long(seg.row0 + seg.rows) * T;
    float* tmp = lora_scratch_.data();
    float* dtmp = lora_scratch_.data() + half;
    kernels::lora_backward<Exec>(dinp, G + a.a_offset(l, t), G + a.b_offset(l, t), tmp, dtmp, dout, inp,
                                 w + a.a_offset(l, t), w + a.b_offset(l, t), a.config().scale(), p0, p1, IC, OC, r);
  }
}

template <class Exec>
std::vector<float> Gpt<Exec>::logits_host() const {
  const Acts a = act_layout(cfg_, max_batch_, recompute_);
  const size_t n = size_t(B_) * T_ * cfg_.vocab;
  std::vector<float> out(n);
  Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(out.data(), n);
  Kokkos::deep_copy(h, Kokkos::subview(acts_, std::pair<size_t, size_t>(a.logits, a.logits + n)));
  return out;
}

template class Gpt<Kokkos::DefaultExecutionSpace>;

}  // namespace mobula::rl
