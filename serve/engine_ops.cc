// The engine's calls other than forward_backward / forward (those share a pass: engine.cc). Each
// runs on the worker thread and adds its completion (result, and what it changed for the journal's
// same transaction) to `done`.
#include <spdlog/spdlog.h>

#include <filesystem>

#include "rl/algo/lora_batch.h"
#include "rl/model/weights.h"
#include "serve/codec.h"
#include "serve/engine_state.h"

namespace mobula::serve {

using nlohmann::json;
using namespace detail;

namespace {

Store::Completion failed(const RequestRow& r, const std::string& message) {
  return {r.seq, false, message, {}};
}

Store::Completion ok(const RequestRow& r, const json& result, Store::Effect e = {}) {
  return {r.seq, true, result.dump(), std::move(e)};
}

}  // namespace

void Engine::execute_other(Pending& p, std::vector<Store::Completion>& done) {
  const RequestRow& r = p.row;
  const std::string client_dir = opts_.state_dir + "/clients/" + std::to_string(r.client);
  if (r.op == "create_adapter") {
    auto lc = parse_lora(p.body, opts_.default_rank, opts_.default_alpha);
    if (!lc) return done.push_back(failed(r, lc.status().message()));
    const AdapterRow row{r.seq, r.client, lc->rank, double(lc->alpha), int64_t(lc->seed), "", 0};
    auto ad = make_adapter(row);
    if (!ad) return done.push_back(failed(r, ad.status().message()));
    {
      std::lock_guard lk(mu_);
      adapters_[r.seq] = std::move(*ad);
    }
    Store::Effect e;
    e.new_adapter = row;
    return done.push_back(ok(r, {{"adapter_id", r.seq}, {"rank", lc->rank}, {"alpha", lc->alpha}}, e));
  }
  Adapter* a = adapter_of(r);
  if (!a) return done.push_back(failed(r, deleted(r)));
  if (r.op == "optim_step") return optim_step(p, *a, done);
  if (r.op == "delete_adapter") {
    {
      std::lock_guard lk(mu_);
      adapters_.erase(r.adapter);
    }
    Store::Effect e;
    e.deleted_adapter = r.adapter;
    return done.push_back(ok(r, {{"deleted", r.adapter}}, e));
  }
  auto name = parse_name(p.body);
  if (!name) return done.push_back(failed(r, name.status().message()));
  std::error_code ec;
  std::filesystem::create_directories(client_dir, ec);
  if (r.op == "save_state") {
    const std::string path = client_dir + "/" + *name + ".state.safetensors";
    if (Status s = write_state(path, a->lora, *a->opt); !s) return done.push_back(failed(r, s.message()));
    Store::Effect e;
    e.saved = {r.client, SavedRow{*name, path, r.adapter}};
    return done.push_back(ok(r, {{"name", *name}, {"step", a->opt->steps_done()}}, e));
  }
  if (r.op == "load_state") return load_state(p, *a, *name, done);
  // save_weights_for_sampler: the merged weights as a full model file (rl/model/weights.h).
  std::vector<float> merged = to_host(base_->model->params);
  a->lora.merge_into(merged);
  Kokkos::View<float*> v("merged", merged.size());
  (void)from_host(v, merged, "merged");
  const std::string path = client_dir + "/" + *name + ".weights.safetensors";
  if (Status s = rl::save_weights(path, base_->cfg, v); !s) return done.push_back(failed(r, s.message()));
  done.push_back(ok(r, {{"name", *name}, {"path", path}}));
}

Status Engine::checkpoint(Adapter& a, int64_t seq, Store::Effect& e) {
  const std::string path =
      opts_.state_dir + "/adapters/" + std::to_string(a.row.id) + "-" + std::to_string(seq) + ".state.safetensors";
  MOBULA_RETURN_IF_ERROR(write_state(path, a.lora, *a.opt));
  AdapterRow row = a.row;
  row.ckpt_path = path;
  row.ckpt_seq = seq;
  e.checkpoint = row;
  obsolete_.push_back(a.row.ckpt_path);  // removed once the journal points at the new one
  a.row = row;
  return Status::ok();
}

void Engine::optim_step(Pending& p, Adapter& a, std::vector<Store::Completion>& done) {
  auto cfg = parse_adam(p.body);
  if (!cfg) return done.push_back(failed(p.row, cfg.status().message()));
  if (a.tokens <= 0)
    return done.push_back(failed(p.row,
                                 "optim_step: no trained token since the last optim_step "
                                 "(call forward_backward with weights > 0 first)"));
  a.opt->set_config(*cfg);
  const float norm = rl::lora_step(a.lora, *a.opt, a.tokens);
  a.tokens = 0;
  a.step = a.opt->steps_done();
  Store::Effect e;
  if (Status s = checkpoint(a, p.row.seq, e); !s) return done.push_back(failed(p.row, s.message()));
  done.push_back(ok(p.row, {{"step", a.opt->steps_done()}, {"grad_norm", norm}}, e));
}

void Engine::load_state(Pending& p, Adapter& a, const std::string& name, std::vector<Store::Completion>& done) {
  auto saved = store_->saved(p.row.client, name);
  if (!saved) return done.push_back(failed(p.row, saved.status().message()));
  if (!*saved) return done.push_back(failed(p.row, "load_state: no saved state \"" + name + "\" for this client"));
  if (Status s = read_state((*saved)->path, a.lora, *a.opt); !s) return done.push_back(failed(p.row, s.message()));
  a.tokens = 0;
  a.step = a.opt->steps_done();
  Store::Effect e;
  if (Status s = checkpoint(a, p.row.seq, e); !s) return done.push_back(failed(p.row, s.message()));
  done.push_back(ok(p.row, {{"name", name}, {"step", a.opt->steps_done()}}, e));
}

void Engine::sample_round(std::vector<Pending*>& reqs, std::vector<Store::Completion>& done) {
  // Whole requests side by side in one decode batch (their adapters' deltas per row), up to the
  // sampler's rows.
  std::vector<rl::SampleBatch<>> batch;
  std::vector<Pending*> in_batch;
  int rows = 0;
  auto flush = [&] {
    if (batch.empty()) return;
    auto s = base_->sampler->sample_many(base_->model->params, batch);
    for (size_t k = 0; k < batch.size(); ++k)
      done.push_back(s ? ok(in_batch[k]->row, to_json((*s)[k])) : failed(in_batch[k]->row, s.status().message()));
    batch.clear();
    in_batch.clear();
    rows = 0;
  };
  for (Pending* p : reqs) {
    Adapter* a = adapter_of(p->row);
    auto req = parse_sample(p->body, base_->cfg, opts_.sample_rows);
    if (!a || !req) {
      done.push_back(failed(p->row, !a ? deleted(p->row) : req.status().message()));
      continue;
    }
    const int n = int(req->prompts.size()) * req->num_samples;
    if (rows + n > base_->sampler->max_rows()) flush();
    // Sample i's stream: a hash of (request seed, i), like the GRPO rollouts.
    std::vector<uint64_t> seeds(static_cast<size_t>(n));
    for (size_t i = 0; i < seeds.size(); ++i) seeds[i] = req->seed * 0x9E3779B97F4A7C15ull + i + 1;
    batch.push_back({std::move(req->prompts), req->num_samples, std::move(seeds), req->params, &a->lora});
    in_batch.push_back(p);
    rows += n;
  }
  flush();
}

}  // namespace mobula::serve
