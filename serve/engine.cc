#include "serve/engine.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <random>

#include "io/safetensors.h"
#include "rl/algo/lora_batch.h"
#include "rl/model/lora.h"
#include "rl/model/sampler.h"
#include "rl/model/weights.h"
#include "serve/codec.h"
#include "serve/engine_state.h"

namespace mobula::serve {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace detail;

namespace {

bool is_pass_op(const std::string& op) {
  return op == "forward_backward" || op == "forward";
}

const char* const kOps[] = {"create_adapter", "forward_backward", "forward",    "optim_step",
                            "sample",         "save_state",       "load_state", "save_weights_for_sampler",
                            "delete_adapter"};

std::string fingerprint(const std::vector<float>& params) {
  return sha256_hex(std::string(reinterpret_cast<const char*>(params.data()), params.size() * sizeof(float)));
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::open(const EngineOptions& opts) {
  std::unique_ptr<Engine> e(new Engine(opts));
  MOBULA_RETURN_IF_ERROR(e->load());
  e->worker_ = std::thread([p = e.get()] { p->run(); });
  return e;
}

Engine::Engine(const EngineOptions& o) : opts_(o) {}

Engine::~Engine() {
  stop();
}

void Engine::stop() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  done_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

Status Engine::load() {
  std::error_code ec;
  for (const char* sub : {"", "/adapters", "/clients"}) {
    fs::create_directories(opts_.state_dir + sub, ec);
    if (ec) return Status::io(opts_.state_dir + sub + ": cannot create: " + ec.message());
  }
  auto st = Store::open(opts_.state_dir + "/serve.db");
  if (!st) return st.status();
  store_ = std::move(*st);

  base_ = std::make_unique<Base>();
  base_->cfg = opts_.model;
  if (!opts_.base_weights.empty()) {
    auto cfg = rl::read_weights_config(opts_.base_weights);
    if (!cfg) return cfg.status();
    base_->cfg = *cfg;
  }
  auto m = rl::Gpt<>::create(base_->cfg, opts_.pass_rows);
  if (!m) return m.status();
  base_->model = std::make_unique<rl::Gpt<>>(std::move(*m));
  if (opts_.base_weights.empty())
    base_->model->init(opts_.seed);
  else
    MOBULA_RETURN_IF_ERROR(rl::load_weights(opts_.base_weights, base_->cfg, base_->model->params));
  base_->model->set_frozen_base(true);
  auto sampler = rl::Sampler<>::create(base_->cfg, std::max(opts_.sample_rows, opts_.pass_rows), base_->cfg.max_seq);
  if (!sampler) return sampler.status();
  base_->sampler = std::make_unique<rl::Sampler<>>(std::move(*sampler));
  base_->sampler->set_fixed_weights(true);  // the base never changes: pack it once

  // The adapters only make sense on the base they were trained on.
  const std::string fp = fingerprint(to_host(base_->model->params));
  auto known = store_->meta("base_sha256");
  if (!known) return known.status();
  if (known->empty())
    MOBULA_RETURN_IF_ERROR(store_->set_meta("base_sha256", fp));
  else if (*known != fp)
    return Status::invalid_spec(opts_.state_dir +
                                ": serve.base: the base model differs from the one this state was created with; "
                                "point serve.state_dir at a new directory or restore the old base");

  auto rows = store_->adapters();
  if (!rows) return rows.status();
  for (const AdapterRow& r : *rows) {
    auto ad = make_adapter(r);
    if (!ad) return ad.status();
    adapters_[r.id] = std::move(*ad);
  }
  auto replay = store_->replay_requests();
  if (!replay) return replay.status();
  size_t again = 0;
  for (RequestRow& r : *replay) {
    json body = json::parse(r.body, nullptr, false);
    const bool replay_only = r.state == "done";
    again += replay_only ? 1 : 0;
    pending_[r.seq] = r.client;
    queues_[r.client].push_back(Pending{std::move(r), std::move(body), replay_only});
  }
  if (!replay->empty())
    spdlog::info(
        "serve: {} adapters; re-running {} requests from the journal ({} done before the restart, for "
        "their gradients)",
        adapters_.size(), replay->size(), again);
  return Status::ok();
}

Result<std::unique_ptr<Engine::Adapter>> Engine::make_adapter(const AdapterRow& r) {
  auto a = rl::LoraAdapter<>::create(base_->cfg, rl::LoraConfig{r.rank, float(r.alpha), uint64_t(r.seed)});
  if (!a) return a.status();
  std::unique_ptr<Adapter> ad(new Adapter(r, std::move(*a)));
  ad->opt = std::make_unique<rl::AdamW<>>(rl::AdamWConfig{}, ad->lora.tensors(), ad->lora.num_params());
  if (!r.ckpt_path.empty()) MOBULA_RETURN_IF_ERROR(read_state(r.ckpt_path, ad->lora, *ad->opt));
  ad->step = ad->opt->steps_done();
  return ad;
}

Engine::Adapter* Engine::adapter_of(const RequestRow& r) {
  std::lock_guard lk(mu_);
  return find(r.client, r.adapter);
}

Engine::Adapter* Engine::find(int64_t client, int64_t adapter) {
  auto it = adapters_.find(adapter);
  return it == adapters_.end() || it->second->row.client != client ? nullptr : it->second.get();
}

Reply Engine::submit(int64_t client, const std::string& request_id, const std::string& op, int64_t adapter,
                     const json& body) {
  if (std::find(std::begin(kOps), std::end(kOps), op) == std::end(kOps))
    return Reply::error(404, "unknown operation \"" + op + "\"");
  if (op != "create_adapter") {  // another client's adapter is unknown, whatever the body says
    std::lock_guard lk(mu_);
    if (!find(client, adapter)) return Reply::error(404, "no adapter " + std::to_string(adapter) + " for this client");
  }
  // Validate before journaling: a malformed request is refused, not stored.
  Status valid = Status::ok();
  if (is_pass_op(op)) {
    auto loss = parse_loss(body);
    valid =
        loss ? parse_data(body, *loss, base_->cfg, opts_.max_rows, op == "forward_backward").status() : loss.status();
  } else if (op == "optim_step") {
    valid = parse_adam(body).status();
  } else if (op == "sample") {
    valid = parse_sample(body, base_->cfg, opts_.sample_rows).status();
  } else if (op == "save_state" || op == "load_state" || op == "save_weights_for_sampler") {
    valid = parse_name(body).status();
  } else if (op == "create_adapter") {
    valid = parse_lora(body.is_null() ? json::object() : body, opts_.default_rank, opts_.default_alpha).status();
  }
  if (!valid) return Reply::error(400, op + ": " + valid.message());

  json stored = body.is_object() ? body : json::object();
  if (op == "sample" && !stored.contains("seed")) stored["seed"] = std::random_device{}();  // replays the same
  if (op == "create_adapter" && !stored.contains("seed")) stored["seed"] = std::random_device{}() & 0x7fffffff;
  std::lock_guard lk(mu_);
  if (stop_) return Reply::error(503, "the service is stopping; retry the same request_id after its restart");
  if (op != "create_adapter" && !find(client, adapter))
    return Reply::error(404, "no adapter " + std::to_string(adapter) + " for this client");
  auto& q = queues_[client];
  if (int(q.size()) >= opts_.max_pending)
    return Reply::error(429, "more than serve.max_pending = " + std::to_string(opts_.max_pending) +
                                 " requests of this client are queued; retrieve some futures first");
  if (op == "create_adapter") {
    int owned = 0;
    for (const auto& [id, a] : adapters_) owned += a->row.client == client ? 1 : 0;
    if (owned >= opts_.max_adapters)
      return Reply::error(409, "this client owns serve.max_adapters = " + std::to_string(opts_.max_adapters) +
                                   " adapters; delete one first");
  }
  bool existed = false;
  std::string rid = request_id;
  if (rid.empty()) {
    auto r = random_hex(12);
    if (!r) return Reply::error(500, r.status().message());
    rid = "auto-" + *r;
  }
  auto row = store_->append(client, rid, op == "create_adapter" ? 0 : adapter, op, stored.dump(), &existed);
  if (!row) return Reply::error(500, row.status().message());
  if (existed && (row->op != op || row->adapter != (op == "create_adapter" ? 0 : adapter)))
    return Reply::error(409, "request_id \"" + rid + "\" was used for another request (" + row->op + ")");
  if (!existed) {
    pending_[row->seq] = client;
    q.push_back(Pending{*row, std::move(stored), false});
    work_cv_.notify_one();
  }
  return Reply{202, {{"future_id", row->seq}, {"request_id", rid}, {"duplicate", existed}}};
}

Reply Engine::retrieve(int64_t client, int64_t future_id, double timeout_s) {
  {
    std::unique_lock lk(mu_);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    done_cv_.wait_until(lk, deadline, [&] {
      auto it = pending_.find(future_id);
      return stop_ || it == pending_.end() || it->second != client;
    });
  }
  auto row = store_->request(client, future_id);
  if (!row) return Reply::error(500, row.status().message());
  if (!*row) return Reply::error(404, "no future " + std::to_string(future_id) + " for this client");
  json out = {{"future_id", future_id}, {"request_id", (*row)->request_id}, {"state", (*row)->state}};
  if ((*row)->state == "done") out["result"] = json::parse((*row)->result, nullptr, false);
  if ((*row)->state == "failed") out["error"] = (*row)->result;
  return Reply{200, out};
}

Reply Engine::list_adapters(int64_t client) {
  std::lock_guard lk(mu_);
  json arr = json::array();
  for (const auto& [id, a] : adapters_)
    if (a->row.client == client)
      arr.push_back({{"adapter_id", id}, {"rank", a->row.rank}, {"alpha", a->row.alpha}, {"step", a->step.load()}});
  return Reply{200, {{"adapters", arr}}};
}

json Engine::info() const {
  const rl::GptConfig& c = base_->cfg;
  return {{"base",
           {{"vocab", c.vocab},
            {"max_seq", c.max_seq},
            {"layers", c.layers},
            {"heads", c.heads},
            {"d_model", c.d_model},
            {"mlp_ratio", c.mlp_ratio}}},
          {"limits",
           {{"max_rows", opts_.max_rows},
            {"sample_rows", opts_.sample_rows},
            {"max_adapters", opts_.max_adapters},
            {"max_pending", opts_.max_pending},
            {"max_rank", rl::kMaxLoraRank}}},
          {"lora_targets", {"qkv", "attproj", "fc", "fcproj"}}};
}

void Engine::run() {
  for (;;) {
    std::vector<Pending> round;
    {
      std::unique_lock lk(mu_);
      work_cv_.wait(lk, [&] {
        if (stop_) return true;
        for (const auto& [c, q] : queues_)
          if (!q.empty()) return true;
        return false;
      });
      if (stop_) return;
      for (auto& [c, q] : queues_) {
        if (q.empty()) continue;
        round.push_back(std::move(q.front()));
        q.pop_front();
      }
    }
    run_round(round);
  }
}

void Engine::run_round(std::vector<Pending>& round) {
  std::vector<Store::Completion> done;
  std::vector<rl::LoraWork> work;
  std::vector<std::vector<rl::Datum>> data;  // owned here; work holds spans
  std::vector<size_t> index;
  std::vector<Adapter*> owner;
  data.reserve(round.size());
  for (size_t i = 0; i < round.size(); ++i) {
    Pending& p = round[i];
    if (!is_pass_op(p.row.op)) continue;
    Adapter* a = adapter_of(p.row);
    auto loss = parse_loss(p.body);
    auto d = loss ? parse_data(p.body, *loss, base_->cfg, opts_.max_rows, p.row.op == "forward_backward")
                  : Result<std::vector<rl::Datum>>(loss.status());
    if (!a || !d) {
      done.push_back({p.row.seq, false, !a ? deleted(p.row) : d.status().message(), {}});
      continue;
    }
    data.push_back(std::move(*d));
    work.push_back({&a->lora, data.back(), *loss, p.row.op == "forward_backward"});
    index.push_back(i);
    owner.push_back(a);
  }
  if (!work.empty()) {
    auto res = rl::forward_backward_lora(*base_->model, work, opts_.chunk_rows);
    for (size_t k = 0; k < work.size(); ++k) {
      const Pending& p = round[index[k]];
      auto& r = res[k];
      if (r.out && work[k].backward) owner[k]->tokens += r.tokens;  // worker-owned state
      if (p.replay) continue;                                       // its result is in the journal already
      done.push_back(
          {p.row.seq, r.out.is_ok(), r.out ? to_json(*r.out, work[k].backward).dump() : r.out.status().message(), {}});
    }
  }
  std::vector<Pending*> samples;
  for (Pending& p : round)
    if (p.row.op == "sample") samples.push_back(&p);
  if (!samples.empty()) sample_round(samples, done);
  for (Pending& p : round)
    if (!is_pass_op(p.row.op) && p.row.op != "sample") execute_other(p, done);
  complete(done);
  std::lock_guard lk(mu_);
  for (const Pending& p : round) pending_.erase(p.row.seq);
  done_cv_.notify_all();
}

void Engine::complete(std::vector<Store::Completion>& done) {
  if (Status st = store_->finish(done); !st) {
    // The journal could not record the results: they stay pending there and re-run after a restart
    // (deterministic, so with the same results). Say so; retrieve keeps answering "pending".
    spdlog::error("serve: {} (results of {} requests not recorded; they re-run after a restart)", st.message(),
                  done.size());
    obsolete_.clear();  // the journal may still point at them
    return;
  }
  std::error_code ec;
  for (const std::string& f : obsolete_)
    if (!f.empty()) fs::remove(f, ec);  // best effort: a leftover file is only disk space
  obsolete_.clear();
}

}  // namespace mobula::serve
