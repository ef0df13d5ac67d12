// The multi-tenant training engine behind `mobula serve` (docs/serve.md): one frozen base model,
// many clients, each owning LoRA adapters with their own AdamW state; Tinker's calls
// (forward_backward, forward, optim_step, sample, save_state, load_state,
// save_weights_for_sampler) become journaled requests that return future ids.
//
//  * Ordering: a client's requests run in submission order; requests of different clients run
//    side by side. Each round, the worker takes the oldest request of every client that has one;
//    all forward_backward / forward requests of the round share ONE pass over the base weights
//    (rl/algo/lora_batch.h), all sample requests one decode batch (rl/model/sampler.h,
//    sample_many: every row with its adapter's delta), and the other calls run after them.
//  * Isolation: a client reaches only its own adapters and saved states; another client's adapter
//    id reads as unknown (404), never as forbidden, so ids reveal nothing.
//  * Durability: serve/store.h. Requests are journaled before they are acknowledged; adapters
//    are checkpointed at every optim_step and load_state; open() re-runs what a crash lost.
//  * The wire format is JSON (the HTTP layer passes bodies through): the in-process benchmark and
//    the HTTP server call the same methods.
//
// Thread safety: every public method may be called from any thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "rl/model/config.h"
#include "serve/store.h"

namespace mobula::serve {

struct EngineOptions {
  rl::GptConfig model;       // the base's shape (from base_weights when set)
  std::string base_weights;  // safetensors (rl/model/weights.h); "" = initialise from `seed`
  uint64_t seed = 0;
  std::string state_dir;  // serve.db and the adapters' checkpoints
  int pass_rows = 32;     // rows of one pass over the base (several clients' chunks)
  int chunk_rows = 8;     // rows of one chunk (the unit results do not depend on batching below)
  int max_rows = 64;      // data per forward_backward / forward request
  int sample_rows = 64;   // prompts x num_samples of one sample request
  int max_adapters = 8;   // per client
  int max_pending = 256;  // queued requests per client (more: 429)
  int default_rank = 8;
  double default_alpha = 16;
};

// What the HTTP layer sends back: a status code and a JSON body.
struct Reply {
  int http = 200;
  nlohmann::json body;
  static Reply error(int http, const std::string& message) { return {http, {{"error", message}}}; }
};

class Engine {
 public:
  // Opens (or creates) the state in opts.state_dir, loads the base and every adapter, re-queues
  // what a previous run left unfinished, and starts the worker.
  static Result<std::unique_ptr<Engine>> open(const EngineOptions& opts);
  ~Engine();  // stop()
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Finishes the round in progress and stops the worker; queued requests stay journaled.
  void stop();

  // Journals a request of `client` and queues it: 202 {"future_id", "request_id", "duplicate"}.
  // op: create_adapter (adapter 0), forward_backward, forward, optim_step, sample, save_state,
  // load_state, save_weights_for_sampler, delete_adapter. request_id "" = a fresh one (no retry
  // protection). 400 malformed, 404 unknown adapter, 429 too many queued, 503 stopping.
  Reply submit(int64_t client, const std::string& request_id, const std::string& op, int64_t adapter,
               const nlohmann::json& body);
  // The future's state, waiting up to timeout_s while it is pending: {"future_id", "state":
  // "pending"|"done"|"failed", "result" | "error"}; 404 for an id of another client.
  Reply retrieve(int64_t client, int64_t future_id, double timeout_s);
  // This client's adapters: [{"adapter_id", "rank", "alpha", "step"}].
  Reply list_adapters(int64_t client);
  // The base model and the limits.
  nlohmann::json info() const;

  Store& store() { return *store_; }

 private:
  struct Adapter;
  struct Pending;
  explicit Engine(const EngineOptions& o);
  Status load();
  void run();
  void run_round(std::vector<Pending>& round);
  void execute_other(Pending& p, std::vector<Store::Completion>& done);
  void optim_step(Pending& p, Adapter& a, std::vector<Store::Completion>& done);
  void load_state(Pending& p, Adapter& a, const std::string& name, std::vector<Store::Completion>& done);
  // Every sample request of a round, in as few sampler calls as its rows allow.
  void sample_round(std::vector<Pending*>& reqs, std::vector<Store::Completion>& done);
  // Writes the adapter's state as of journal seq `seq` and records it in `e`.
  Status checkpoint(Adapter& a, int64_t seq, Store::Effect& e);
  void complete(std::vector<Store::Completion>& done);
  Adapter* find(int64_t client, int64_t adapter);  // under mu_
  // The request's adapter, looked up under mu_; null when it was deleted since it was queued.
  Adapter* adapter_of(const RequestRow& r);
  // An adapter as its row says: initialised from its seed, or loaded from its checkpoint.
  Result<std::unique_ptr<Adapter>> make_adapter(const AdapterRow& r);

  EngineOptions opts_;
  std::unique_ptr<Store> store_;
  struct Base;
  std::unique_ptr<Base> base_;
  std::map<int64_t, std::unique_ptr<Adapter>> adapters_;  // worker-owned state; the map under mu_

  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::map<int64_t, std::deque<Pending>> queues_;  // per client, submission order
  std::map<int64_t, int64_t> pending_;             // seq -> client, queued or running
  bool stop_ = false;
  std::vector<std::string> obsolete_;  // checkpoint files the journal no longer points at (worker)
  std::thread worker_;
};

}  // namespace mobula::serve
