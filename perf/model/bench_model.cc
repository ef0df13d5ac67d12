// Model engine benchmark: training tokens/s (forward + backward + AdamW), sampling tokens/s with
// the KV cache, MFU against the single-core SGEMM peak measured in the same run, and the ratio to
// PyTorch running the identical config (perf/model/bench_torch.py) in the same run.
//
//   taskset -c 0 build/perf/model/bench_model [--repeat 3 --layers 4 --d-model 256 --heads 4 --context 128
//                                              --vocab 64 --batch 16 --iters 5 --no-torch --no-train
//                                              --python /usr/bin/python3 --torch-script perf/model/bench_torch.py]
#include <KokkosBlas3_gemm.hpp>
#include <Kokkos_Core.hpp>
#include <bit>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/runtime/blas_cpu.h"
#include "core/runtime/process.h"
#include "perf/harness.h"
#include "rl/model/gpt.h"
#include "rl/model/sampler.h"
#include "rl/optim/adamw.h"

using namespace mobula;
using namespace mobula::rl;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median GFLOP/s of a 512^3 SGEMM through KokkosBlas (the BLAS the model uses).
double sgemm_peak() {
  const int n = 512;
  Kokkos::View<float**, Kokkos::LayoutRight> a("a", n, n), b("b", n, n), c("c", n, n);
  Kokkos::deep_copy(a, 0.5f);
  Kokkos::deep_copy(b, 0.25f);
  std::vector<double> t;
  for (int i = 0; i < 7; ++i) {
    const double t0 = now();
    KokkosBlas::gemm("N", "N", 1.0f, a, b, 0.0f, c);
    Kokkos::fence();
    if (i) t.push_back(now() - t0);
  }
  return 2.0 * n * n * n / perf::median(t) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  reexec_with_openblas_fix(argv);  // as mobula does (core/runtime/blas_cpu.h)
  Kokkos::ScopeGuard kokkos(argc, argv);
  GptConfig cfg;
  int batch = 16, iters = 5, prompt = 8, new_tokens = 56, repeat = 3;
  bool torch = true, train = true, prefetch_ab = false;
  std::string python = "/usr/bin/python3", torch_script = MOBULA_BENCH_TORCH_SCRIPT, torch_version;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (a == "--layers")
      cfg.layers = next();
    else if (a == "--d-model")
      cfg.d_model = next();
    else if (a == "--heads")
      cfg.heads = next();
    else if (a == "--context")
      cfg.max_seq = next();
    else if (a == "--vocab")
      cfg.vocab = next();
    else if (a == "--batch")
      batch = next();
    else if (a == "--iters")
      iters = next();
    else if (a == "--no-torch")
      torch = false;
    else if (a == "--no-train")  // sampling only (profiling)
      train = false;
    else if (a == "--python" && i + 1 < argc)  // the interpreter that has PyTorch (a venv's, a module's)
      python = argv[++i];
    else if (a == "--torch-script" && i + 1 < argc)  // bench_torch.py, when the source tree has moved
      torch_script = argv[++i];
    else if (a == "--prefetch-ab")  // also sample without the decode prefetches, interleaved
      prefetch_ab = true;
    else if (a == "--repeat")
      repeat = std::max(1, next());
    else {
      std::fprintf(stderr, "bench_model: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  const int T = cfg.max_seq;
  auto model = Gpt<>::create(cfg, batch);
  if (!model) {
    std::fprintf(stderr, "bench_model: %s\n", model.status().message().c_str());
    return 2;
  }
  model->init(1);
  AdamWConfig oc;
  oc.lr = 1e-4f;
  AdamW<> opt(oc, model->tensors(), model->num_params());
  std::vector<int> tok(size_t(batch) * T), tg(size_t(batch) * T);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int(i * 7 % cfg.vocab), tg[i] = int(i * 13 % cfg.vocab);
  std::vector<float> lp(tok.size()), w(tok.size(), -1.0f / float(tok.size()));
  // One measurement round: training tokens/s, then sampling tokens/s at batch 16 and 64.
  auto measure_train = [&]() -> double {
    std::vector<double> ts;
    for (int i = 0; i <= iters; ++i) {
      const double t0 = now();
      if (!model->forward(tok, tg, batch, T, lp).is_ok()) return 0;
      model->zero_grad();
      if (!model->backward(w).is_ok()) return 0;
      opt.step(model->params, model->grads);
      Kokkos::fence();
      if (i) ts.push_back(now() - t0);
    }
    return batch * T / perf::median(ts);
  };
  // FNV-1a over a sampling call's tokens and log-prob bits: the first round's, per batch size, with
  // and without the prefetches. Equal before and after a change that must not alter results (a
  // speed-up that reorders no arithmetic), for the same flags: a bitwise check in one line.
  uint64_t sums[2][2] = {};  // [batch 16, 64][prefetch off, on]
  auto checksum = [](const std::vector<Sample>& out) {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&](uint32_t v) {
      for (int b = 0; b < 4; ++b) h = (h ^ ((v >> (8 * b)) & 0xffu)) * 1099511628211ull;
    };
    for (const Sample& s : out) {
      for (int t : s.tokens) mix(uint32_t(t));
      for (float f : s.logprobs) mix(std::bit_cast<uint32_t>(f));
      for (float f : s.model_logprobs) mix(std::bit_cast<uint32_t>(f));
    }
    return h;
  };
  // The host side of sampling (choosing each token from its logits): us a token, share of the call.
  std::vector<double> pick[2], pick_share[2];
  auto measure_sample = [&](int sb, bool prefetch = true) -> double {
    auto sampler = Sampler<>::create(cfg, sb, prompt + new_tokens);
    if (!sampler) return 0;
    sampler->set_prefetch(prefetch);
    std::vector<std::vector<int>> prompts(static_cast<size_t>(sb));
    for (int b = 0; b < sb; ++b)
      for (int t = 0; t < prompt; ++t) prompts[size_t(b)].push_back((b * 3 + t) % cfg.vocab);
    SamplingParams sp;
    sp.max_new_tokens = new_tokens;
    std::vector<double> st;
    for (int r = 0; r < 4; ++r) {
      std::vector<uint64_t> seeds(static_cast<size_t>(sb));
      for (int b = 0; b < sb; ++b) seeds[size_t(b)] = uint64_t(r * 1000 + b);
      const double t0 = now();
      auto out = sampler->sample(model->params, prompts, seeds, sp);
      Kokkos::fence();
      if (!out) return 0;
      uint64_t& sum = sums[sb == 16 ? 0 : 1][prefetch ? 1 : 0];
      if (r == 0 && sum == 0) sum = checksum(*out);
      if (r) st.push_back(now() - t0);
      if (r && prefetch) {
        const auto& tm = sampler->last_timing();
        pick[sb == 16 ? 0 : 1].push_back(tm.pick_s / double(tm.picked) * 1e6);
        pick_share[sb == 16 ? 0 : 1].push_back(tm.pick_s / tm.total_s);
      }
    }
    return sb * new_tokens / perf::median(st);
  };
  const double peak = sgemm_peak();
  const double n = double(model->num_params());
  const double attn = 3.0 * 4.0 * batch * cfg.heads * double(T) * T * cfg.head_size() * cfg.layers;
  const double flops = 6.0 * n * batch * T + attn;  // per training step
  std::string blas = blas_description();
  if (blas.empty()) blas = "BLAS not OpenBLAS";
  std::printf(
      "# bench_model: %s, batch %d, %zu params; SGEMM peak %.1f GFLOP/s (KokkosBlas, 512^3; %s); %d rounds, "
      "mobula and PyTorch interleaved, medians\n",
      cfg.to_string().c_str(), batch, model->num_params(), peak, blas.c_str(), repeat);
  std::vector<double> mt, m16, m64, pt, p16, p64, o16, o64;
  for (int round = 0; round < repeat; ++round) {
    if (train) mt.push_back(measure_train());
    m16.push_back(measure_sample(16));
    m64.push_back(measure_sample(64));
    if (prefetch_ab) {
      o16.push_back(measure_sample(16, false));
      o64.push_back(measure_sample(64, false));
    }
    if (!torch) continue;
    auto r = run_capture({python,          torch_script,
                          "--layers",      std::to_string(cfg.layers),
                          "--d-model",     std::to_string(cfg.d_model),
                          "--heads",       std::to_string(cfg.heads),
                          "--context",     std::to_string(T),
                          "--vocab",       std::to_string(cfg.vocab),
                          "--batch",       std::to_string(batch),
                          "--train-iters", std::to_string(iters),
                          "--prompt",      std::to_string(prompt),
                          "--new-tokens",  std::to_string(new_tokens)},
                         1200);
    if (!r || r->exit_code != 0) {
      std::printf("pytorch  not available (%s): no ratios\n",
                  r ? r->err.substr(0, r->err.find('\n')).c_str() : r.status().message().c_str());
      torch = false;
      continue;
    }
    // bench_torch.py prints one JSON object: {"torch", "train_tokens_per_s", "sample": {"16", "64"}}.
    const auto out = nlohmann::json::parse(r->out, nullptr, /*allow_exceptions=*/false);
    if (out.is_discarded() || !out.is_object()) {
      std::printf("pytorch  printed no JSON (%s): no ratios\n", r->out.substr(0, r->out.find('\n')).c_str());
      torch = false;
      continue;
    }
    const auto sample = out.value("sample", nlohmann::json::object());
    torch_version = out.value("torch", std::string());
    pt.push_back(out.value("train_tokens_per_s", 0.0));
    p16.push_back(sample.value("16", 0.0));
    p64.push_back(sample.value("64", 0.0));
  }
  const double train_tps = train ? perf::median(mt) : 0.0;
  if (train)
    std::printf("train    %8.0f tokens/s  step %.1f ms  %.1f GFLOP/s  MFU %.2f\n", train_tps,
                batch * T / train_tps * 1e3, flops * train_tps / (batch * T) / 1e9,
                flops * train_tps / (batch * T) / 1e9 / peak);
  std::printf("sample   %8.0f tokens/s  batch 16, prompt %d, %d new tokens, KV cache\n", perf::median(m16), prompt,
              new_tokens);
  std::printf("sample   %8.0f tokens/s  batch 64\n", perf::median(m64));
  std::printf(
      "sample   choosing tokens on the host: b16 %.2f us a token (%.1f %% of sampling), b64 %.2f us (%.1f %%)\n",
      perf::median(pick[0]), 100 * perf::median(pick_share[0]), perf::median(pick[1]),
      100 * perf::median(pick_share[1]));
  std::printf("sample   results checksum b16 %016llx, b64 %016llx\n", static_cast<unsigned long long>(sums[0][1]),
              static_cast<unsigned long long>(sums[1][1]));
  if (prefetch_ab) {
    std::printf("sample   without the decode prefetches: b16 %.0f, b64 %.0f tokens/s; with/without %.3f, %.3f\n",
                perf::median(o16), perf::median(o64), perf::median(m16) / perf::median(o16),
                perf::median(m64) / perf::median(o64));
    if (sums[0][0] != sums[0][1] || sums[1][0] != sums[1][1]) {
      std::printf("sample   ERROR: the results differ without the prefetches (they are hints)\n");
      return 1;
    }
  }
  if (torch && !pt.empty()) {
    std::printf(
        "pytorch  train %.0f tokens/s, sample b16 %.0f, b64 %.0f tokens/s (PyTorch %s, same config, eager, 1 "
        "thread)\n",
        perf::median(pt), perf::median(p16), perf::median(p64), torch_version.c_str());
    if (train) std::printf("ratio    train mobula/pytorch %.2f", train_tps / perf::median(pt));
    std::printf("%ssample b16 %.2f   sample b64 %.2f\n", train ? "   " : "ratio    ",
                perf::median(m16) / perf::median(p16), perf::median(m64) / perf::median(p64));
  }
  return 0;
}
