// The engine's internal state (serve/engine.h), shared by engine.cc (queues, batching) and
// engine_ops.cc (the calls other than forward_backward / forward). Not a public header.
#pragma once

#include <atomic>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "rl/model/lora.h"
#include "rl/model/sampler.h"
#include "rl/optim/adamw.h"
#include "serve/engine.h"

namespace mobula::serve {

struct Engine::Base {
  rl::GptConfig cfg;
  std::unique_ptr<rl::Gpt<>> model;  // frozen
  std::unique_ptr<rl::Sampler<>> sampler;
};

struct Engine::Adapter {
  Adapter(AdapterRow r, rl::LoraAdapter<> l) : row(std::move(r)), lora(std::move(l)) {}
  AdapterRow row;
  rl::LoraAdapter<> lora;
  std::unique_ptr<rl::AdamW<>> opt;
  double tokens = 0;         // trained tokens accumulated in the gradients since the last optim_step
  std::atomic<int> step{0};  // optimizer steps (read by list_adapters)
};

struct Engine::Pending {
  RequestRow row;
  nlohmann::json body;
  bool replay = false;  // done before a restart: run again for its effect on the state only
};

namespace detail {

inline std::string deleted(const RequestRow& r) {
  return "adapter " + std::to_string(r.adapter) + " was deleted";
}

template <class V>
std::vector<float> to_host(const V& v) {
  std::vector<float> out(v.extent(0));
  Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(out.data(), out.size());
  Kokkos::deep_copy(h, v);
  return out;
}

template <class V>
Status from_host(const V& v, const std::vector<float>& data, const std::string& what) {
  if (data.size() != v.extent(0))
    return Status::invalid_argument(what + ": " + std::to_string(data.size()) + " values, expected " +
                                    std::to_string(v.extent(0)));
  Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(data.data(), data.size());
  Kokkos::deep_copy(v, h);
  return Status::ok();
}

// An adapter's full state (weights, AdamW moments, step) as one safetensors file.
inline Status write_state(const std::string& path, rl::LoraAdapter<>& a, rl::AdamW<>& opt) {
  io::StFile f;
  const auto p = to_host(a.params), m = to_host(opt.m), v = to_host(opt.v);
  const int64_t n = int64_t(p.size());
  f.tensors["params"] = io::StTensor::f32({n}, p.data());
  f.tensors["m"] = io::StTensor::f32({n}, m.data());
  f.tensors["v"] = io::StTensor::f32({n}, v.data());
  f.metadata = {{"format", "mobula-lora-state"},
                {"format_version", "1"},
                {"rank", std::to_string(a.config().rank)},
                {"alpha", std::to_string(a.config().alpha)},
                {"step", std::to_string(opt.steps_done())}};
  return io::write_safetensors(path, f);
}

inline Status read_state(const std::string& path, rl::LoraAdapter<>& a, rl::AdamW<>& opt) {
  auto f = io::read_safetensors(path);
  if (!f) return f.status();
  auto get = [&](const char* k) -> Result<std::vector<float>> {
    auto it = f->tensors.find(k);
    if (it == f->tensors.end() || it->second.dtype != "F32")
      return Status::io(path + ": " + k + ": missing (not an adapter state written by mobula serve)");
    return it->second.as_f32();
  };
  auto rank = f->metadata.find("rank"), step = f->metadata.find("step");
  if (rank == f->metadata.end() || step == f->metadata.end() || std::stoi(rank->second) != a.config().rank)
    return Status::invalid_argument(path + ": rank: the saved state's LoRA rank differs from the adapter's (" +
                                    std::to_string(a.config().rank) + ")");
  auto p = get("params"), m = get("m"), v = get("v");
  for (const Status& s : {p.status(), m.status(), v.status()})
    if (!s) return s;
  MOBULA_RETURN_IF_ERROR(from_host(a.params, *p, path + ": params"));
  MOBULA_RETURN_IF_ERROR(from_host(opt.m, *m, path + ": m"));
  MOBULA_RETURN_IF_ERROR(from_host(opt.v, *v, path + ": v"));
  opt.set_steps_done(std::stoi(step->second));
  a.zero_grad();
  return Status::ok();
}

}  // namespace detail

}  // namespace mobula::serve
