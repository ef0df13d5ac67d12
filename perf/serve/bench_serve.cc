// Multi-tenant service benchmarks (docs/perf.md, "The training service"):
//
//  1. Multi-LoRA batching: forward_backward of K adapters' requests (--rows datums of --len tokens
//     each) in ONE pass over the frozen base, against the same K requests run one after another
//     (the baseline, same run). Prints both times, tokens/s and the aggregate ratio; checks that
//     every adapter's gradients are the same bits both ways ("wrong" = differing adapters). Also the
//     BLAS training path on the same rows, for what the row-invariant kernels cost.
//  2. Multi-LoRA sampling: K adapters' sample requests in one decode batch vs one after another
//     ("wrong" = sequences whose tokens differ between the two).
//  3. Request overhead: one small forward (1 datum) as a direct call, through the engine in-process
//     (submit + retrieve: journal commit, queue, worker), and over HTTP (POST + retrieve_future).
//
//   build/perf/serve/bench_serve [--layers 2 --d-model 64 --heads 4 --context 16 --vocab 15 --rows 4
//                                 --len 16 --adapters 1,4,16 --iters 5 --calls 50 --no-http]
#include <httplib.h>

#include <Kokkos_Core.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/runtime/blas_cpu.h"
#include "perf/harness.h"
#include "rl/algo/lora_batch.h"
#include "rl/model/sampler.h"
#include "serve/engine.h"
#include "serve/http.h"

using namespace mobula;
using namespace mobula::rl;
using nlohmann::json;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

[[noreturn]] void fail(const std::string& m) {
  std::fprintf(stderr, "bench_serve: %s\n", m.c_str());
  std::exit(1);
}

std::vector<Datum> make_data(const GptConfig& c, int rows, int len, uint64_t seed) {
  std::vector<Datum> out;
  uint64_t s = seed * 2654435761u + 1;
  auto next = [&] {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return int((s >> 33) % uint64_t(c.vocab));
  };
  for (int r = 0; r < rows; ++r) {
    Datum d;
    for (int t = 0; t < len; ++t) {
      d.tokens.push_back(next());
      d.target_tokens.push_back(next());
      d.weights.push_back(t > 0 ? 1.f : 0.f);
    }
    out.push_back(std::move(d));
  }
  return out;
}

std::vector<float> grads_of(LoraAdapter<>& a) {
  std::vector<float> g(a.grads.extent(0));
  Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(g.data(), g.size());
  Kokkos::deep_copy(h, a.grads);
  return g;
}

void bench_batching(const GptConfig& cfg, int rows, int len, const std::vector<int>& ks, int iters) {
  std::printf("# multi-LoRA forward_backward: %s; rank-8 adapters; each request %d x %d tokens\n",
              cfg.to_string().c_str(), rows, len);
  std::printf("%9s %12s %12s %14s %14s %9s %13s %9s %6s\n", "adapters", "seq_ms", "batched_ms", "seq_tok/s",
              "batched_tok/s", "ratio", "blas_train_ms", "inv/blas", "wrong");
  for (int K : ks) {
    auto m = Gpt<>::create(cfg, K * rows);
    if (!m) fail(m.status().message());
    m->init(1);
    m->set_frozen_base(true);
    auto full = Gpt<>::create(cfg, K * rows);  // the BLAS training path on the same rows
    if (!full) fail(full.status().message());
    full->init(1);
    std::vector<LoraAdapter<>> ads;
    std::vector<std::vector<Datum>> data;
    for (int k = 0; k < K; ++k) {
      auto a = LoraAdapter<>::create(cfg, LoraConfig{8, 16, uint64_t(k + 1)});
      if (!a) fail(a.status().message());
      ads.push_back(std::move(*a));
      data.push_back(make_data(cfg, rows, len, uint64_t(k)));
    }
    std::vector<LoraWork> work;
    std::vector<Datum> all;
    for (int k = 0; k < K; ++k) {
      work.push_back({&ads[size_t(k)], data[size_t(k)], {}, true});
      all.insert(all.end(), data[size_t(k)].begin(), data[size_t(k)].end());
    }
    std::vector<double> seq, bat, blas;
    std::vector<std::vector<float>> seq_grads(static_cast<size_t>(K)), bat_grads(static_cast<size_t>(K));
    for (int it = 0; it < iters + 1; ++it) {  // the first round warms up
      for (auto& a : ads) a.zero_grad();
      double t0 = now();
      for (int k = 0; k < K; ++k)
        if (!forward_backward_lora(*m, std::span(&work[size_t(k)], 1), rows)[0].out) fail("sequential run failed");
      Kokkos::fence();
      const double ts = now() - t0;
      for (int k = 0; k < K; ++k) seq_grads[size_t(k)] = grads_of(ads[size_t(k)]);
      for (auto& a : ads) a.zero_grad();
      t0 = now();
      for (const auto& r : forward_backward_lora(*m, work, rows))
        if (!r.out) fail("batched run failed");
      Kokkos::fence();
      const double tb = now() - t0;
      for (int k = 0; k < K; ++k) bat_grads[size_t(k)] = grads_of(ads[size_t(k)]);
      double tokens = 0;
      t0 = now();
      if (!forward_backward_batch(*full, all, {}, &tokens)) fail("BLAS run failed");
      Kokkos::fence();
      const double tf = now() - t0;
      if (it == 0) continue;
      seq.push_back(ts);
      bat.push_back(tb);
      blas.push_back(tf);
    }
    int wrong = 0;
    for (int k = 0; k < K; ++k)
      wrong += std::memcmp(seq_grads[size_t(k)].data(), bat_grads[size_t(k)].data(),
                           seq_grads[size_t(k)].size() * sizeof(float)) != 0;
    const double s = perf::median(seq), b = perf::median(bat), f = perf::median(blas);
    const double tok = double(K) * rows * len;
    std::printf("%9d %12.3f %12.3f %14.0f %14.0f %8.2fx %13.3f %8.2fx %6d\n", K, s * 1e3, b * 1e3, tok / s, tok / b,
                s / b, f * 1e3, b / f, wrong);
    if (wrong) std::exit(1);
  }
}

void bench_sampling(const GptConfig& cfg, const std::vector<int>& ks, int iters) {
  const int prompts = 2, group = 4, new_tokens = 8;
  std::printf("\n# multi-LoRA sampling: %d prompts x %d samples x %d new tokens per request, rank-8 adapters\n",
              prompts, group, new_tokens);
  std::printf("%9s %12s %12s %14s %14s %9s %6s\n", "adapters", "seq_ms", "batched_ms", "seq_tok/s", "batched_tok/s",
              "ratio", "wrong");
  for (int K : ks) {
    auto m = Gpt<>::create(cfg, 1);
    if (!m) fail(m.status().message());
    m->init(1);
    auto sampler = Sampler<>::create(cfg, K * prompts * group, cfg.max_seq);
    if (!sampler) fail(sampler.status().message());
    sampler->set_fixed_weights(true);  // as the service: the base is packed once, not per call
    std::vector<LoraAdapter<>> ads;
    std::vector<SampleBatch<>> reqs;
    for (int k = 0; k < K; ++k) {
      auto a = LoraAdapter<>::create(cfg, LoraConfig{8, 16, uint64_t(k + 1)});
      if (!a) fail(a.status().message());
      ads.push_back(std::move(*a));
    }
    for (int k = 0; k < K; ++k) {
      SampleBatch<> b;
      for (int p = 0; p < prompts; ++p) b.prompts.push_back({(3 + k + p) % cfg.vocab, (5 + 2 * k) % cfg.vocab, 1});
      b.group = group;
      for (int i = 0; i < prompts * group; ++i) b.seeds.push_back(uint64_t(k * 100 + i));
      b.params.max_new_tokens = new_tokens;
      b.adapter = &ads[size_t(k)];
      reqs.push_back(std::move(b));
    }
    std::vector<double> seq, bat;
    int wrong = 0;
    for (int it = 0; it < iters + 1; ++it) {
      std::vector<std::vector<Sample>> alone;
      double t0 = now();
      for (int k = 0; k < K; ++k) {
        auto r = sampler->sample_many(m->params, std::span(&reqs[size_t(k)], 1));
        if (!r) fail(r.status().message());
        alone.push_back(std::move((*r)[0]));
      }
      const double ts = now() - t0;
      t0 = now();
      auto together = sampler->sample_many(m->params, reqs);
      const double tb = now() - t0;
      if (!together) fail(together.status().message());
      wrong = 0;
      for (int k = 0; k < K; ++k)
        for (size_t i = 0; i < alone[size_t(k)].size(); ++i)
          wrong += alone[size_t(k)][i].tokens != (*together)[size_t(k)][i].tokens;
      if (it == 0) continue;
      seq.push_back(ts);
      bat.push_back(tb);
    }
    const double sm = perf::median(seq), b = perf::median(bat), tok = double(K) * prompts * group * new_tokens;
    std::printf("%9d %12.3f %12.3f %14.0f %14.0f %8.2fx %6d\n", K, sm * 1e3, b * 1e3, tok / sm, tok / b, sm / b, wrong);
    if (wrong) std::exit(1);
  }
}

json one_forward(int vocab) {
  return {{"data", {{{"tokens", {3, 4, 5, 6}}, {"target_tokens", {4, 5, 6, 7 % vocab}}, {"weights", {1, 1, 1, 1}}}}}};
}

void bench_overhead(const GptConfig& cfg, int calls, bool http) {
  namespace fs = std::filesystem;
  const std::string dir = (fs::temp_directory_path() / ("bench_serve_" + std::to_string(::getpid()))).string();
  fs::remove_all(dir);
  serve::EngineOptions o;
  o.model = cfg;
  o.state_dir = dir;
  auto e = serve::Engine::open(o);
  if (!e) fail(e.status().message());
  auto client = (*e)->store().add_client("bench", serve::sha256_hex("bench-token"));
  if (!client) fail(client.status().message());
  auto wait = [&](int64_t fid) {
    for (;;) {
      const serve::Reply r = (*e)->retrieve(*client, fid, 5);
      if (r.body["state"] != "pending") return r.body;
    }
  };
  const serve::Reply cr = (*e)->submit(*client, "", "create_adapter", 0, json::object());
  const int64_t ad = wait(cr.body["future_id"])["result"]["adapter_id"];
  // Direct: the same forward through forward_backward_lora on a model of its own.
  auto m = Gpt<>::create(cfg, 8);
  m->init(0);
  m->set_frozen_base(true);
  auto a = LoraAdapter<>::create(cfg, LoraConfig{8, 16, 0});
  const auto d = make_data(cfg, 1, 4, 3);
  std::vector<double> direct, inproc, over_http;
  for (int i = 0; i < calls; ++i) {
    LoraWork w{&*a, d, {}, false};
    double t0 = now();
    (void)forward_backward_lora(*m, std::span(&w, 1), 1);
    direct.push_back(now() - t0);
    t0 = now();
    const serve::Reply r = (*e)->submit(*client, "", "forward", ad, one_forward(cfg.vocab));
    if (r.http != 202) fail("in-process submit: " + r.body.dump());
    if (wait(r.body["future_id"])["state"] != "done") fail("in-process forward failed");
    inproc.push_back(now() - t0);
  }
  std::printf("\n# request overhead: forward of 1 datum x 4 tokens, median of %d calls\n", calls);
  std::printf("%-34s %10.3f ms\n", "direct (forward_backward_lora)", perf::median(direct) * 1e3);
  std::printf("%-34s %10.3f ms  (%.1fx direct)\n", "engine in-process (submit+retrieve)", perf::median(inproc) * 1e3,
              perf::median(inproc) / perf::median(direct));
  if (http) {
    auto srv = serve::HttpServer::start(**e, serve::HttpOptions{});
    if (!srv) fail(srv.status().message());
    httplib::Client c("127.0.0.1", (*srv)->port());
    c.set_keep_alive(true);
    c.set_tcp_nodelay(true);
    const httplib::Headers h = {{"Authorization", "Bearer bench-token"}};
    const std::string path = "/v1/adapters/" + std::to_string(ad) + "/forward", body = one_forward(cfg.vocab).dump();
    for (int i = 0; i < calls; ++i) {
      const double t0 = now();
      auto r = c.Post(path.c_str(), h, body, "application/json");
      if (!r || r->status != 202) fail("HTTP submit failed");
      const json f = {{"future_id", json::parse(r->body)["future_id"]}, {"timeout_s", 5}};
      for (;;) {
        auto g = c.Post("/v1/retrieve_future", h, f.dump(), "application/json");
        if (!g || g->status != 200) fail("HTTP retrieve failed");
        if (json::parse(g->body)["state"] != "pending") break;
      }
      over_http.push_back(now() - t0);
    }
    std::printf("%-34s %10.3f ms  (%.1fx in-process)\n", "HTTP (POST + retrieve_future)", perf::median(over_http) * 1e3,
                perf::median(over_http) / perf::median(inproc));
  }
  e->reset();
  fs::remove_all(dir);
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(std::stoi(x));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  reexec_with_openblas_fix(argv);
  Kokkos::ScopeGuard kokkos(argc, argv);
  GptConfig cfg;
  cfg.vocab = 15;
  cfg.max_seq = 16;
  cfg.layers = 2;
  cfg.heads = 4;
  cfg.d_model = 64;
  int rows = 4, len = 16, iters = 5, calls = 50;
  bool http = true;
  std::vector<int> ks = {1, 4, 16};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) fail(a + " needs a value");
      return argv[++i];
    };
    if (a == "--layers")
      cfg.layers = std::stoi(val());
    else if (a == "--d-model")
      cfg.d_model = std::stoi(val());
    else if (a == "--heads")
      cfg.heads = std::stoi(val());
    else if (a == "--context")
      cfg.max_seq = std::stoi(val());
    else if (a == "--vocab")
      cfg.vocab = std::stoi(val());
    else if (a == "--rows")
      rows = std::stoi(val());
    else if (a == "--len")
      len = std::stoi(val());
    else if (a == "--adapters")
      ks = parse_list(val());
    else if (a == "--iters")
      iters = std::stoi(val());
    else if (a == "--calls")
      calls = std::stoi(val());
    else if (a == "--no-http")
      http = false;
    else
      fail("unknown option " + a + " (see the top of perf/serve/bench_serve.cc)");
  }
  if (Status s = cfg.validate(); !s) fail(s.message());
  if (len > cfg.max_seq) fail("--len exceeds --context");
  bench_batching(cfg, rows, len, ks, iters);
  bench_sampling(cfg, ks, iters);
  bench_overhead(cfg, calls, http);
  return 0;
}
