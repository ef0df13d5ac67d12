// workload "grpo": supervised warm start, then synchronous GRPO with a trainer group and a rollout
// group (docs/rl.md).
//
// Per RL step k:
//   1. weight sync, trainers -> rollouts (version k; buckets spread over all trainers),
//   2. every rollout rank samples G completions for its share of the step's prompts (prefix
//      shared), rewards them with the task's verifier and normalises advantages per group,
//   3. each rollout rank sends record j of its batch straight to trainer j % T (no controller in
//      between; transport.rollouts),
//   4. trainers run PPO-clip on what they received, all-reduce the gradient token sums
//      deterministically (transport.gradients) and step AdamW in lockstep, so their weights stay
//      bitwise identical.
// Trainer 0 (world rank 0) prints one line per step and writes summary.json in the work dir.
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "core/metrics/events.h"
#include "core/metrics/registry.h"
#include "core/objects/object_store.h"
#include "core/runtime/environment.h"
#include "core/runtime/files.h"
#include "core/runtime/log.h"
#include "core/runtime/mpi.h"
#include "core/transport/transport.h"
#include "core/transport/weight_sync.h"
#include "io/checkpoint.h"
#include "rl/algo/batch.h"
#include "rl/algo/grpo.h"
#include "rl/api/sampling_client.h"
#include "rl/api/training_client.h"
#include "rl/api/transport_group.h"
#include "rl/model/weights.h"
#include "rl/optim/adamw.h"
#include "rl/roles/workload.h"

namespace mobula::rl {

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- rollout records on the wire -------------------------------------------------------------
struct Record {
  std::vector<int32_t> seq;  // prompt + completion
  int32_t first = 0;         // index in seq of the first completion token
  float advantage = 0;
  std::vector<float> logp_old;  // behaviour log-probs of the completion tokens
};

struct RolloutStats {
  double reward_sum = 0, reward_sq_sum = 0, correct = 0, samples = 0, completion_tokens = 0;
  double neg_logp_sum = 0;  // -log p of the sampled tokens under the model: sum / tokens estimates entropy
  double sample_seconds = 0, reward_seconds = 0;
  double version = 0;  // policy version the batch was sampled with
};

class Writer {
 public:
  template <class T>
  void put(const T& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  template <class T>
  void put_vec(const std::vector<T>& v) {
    put<uint64_t>(v.size());
    const auto* p = reinterpret_cast<const uint8_t*>(v.data());
    bytes.insert(bytes.end(), p, p + v.size() * sizeof(T));
  }
  std::vector<uint8_t> bytes;
};

class Reader {
 public:
  explicit Reader(const std::vector<uint8_t>& b) : b_(b) {}
  template <class T>
  bool get(T* v) {
    if (pos_ + sizeof(T) > b_.size()) return false;
    std::memcpy(v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  template <class T>
  bool get_vec(std::vector<T>* v) {
    uint64_t n = 0;
    if (!get(&n) || n > (b_.size() - pos_) / sizeof(T)) return false;
    v->resize(n);
    std::memcpy(v->data(), b_.data() + pos_, n * sizeof(T));
    pos_ += n * sizeof(T);
    return true;
  }
  bool done() const { return pos_ == b_.size(); }

 private:
  const std::vector<uint8_t>& b_;
  size_t pos_ = 0;
};

std::vector<uint8_t> encode(const RolloutStats& st, const std::vector<const Record*>& recs) {
  Writer w;
  w.put(st);
  w.put<uint64_t>(recs.size());
  for (const Record* r : recs) {
    w.put_vec(r->seq);
    w.put(r->first);
    w.put(r->advantage);
    w.put_vec(r->logp_old);
  }
  return w.bytes;
}

Status decode(const std::vector<uint8_t>& bytes, RolloutStats* st, std::vector<Record>* out) {
  Reader rd(bytes);
  uint64_t n = 0;
  if (!rd.get(st) || !rd.get(&n)) return Status::external("grpo: truncated rollout message");
  for (uint64_t i = 0; i < n; ++i) {
    Record r;
    if (!rd.get_vec(&r.seq) || !rd.get(&r.first) || !rd.get(&r.advantage) || !rd.get_vec(&r.logp_old))
      return Status::external("grpo: malformed rollout record " + std::to_string(i));
    if (r.first < 1 || static_cast<size_t>(r.first) + r.logp_old.size() != r.seq.size())
      return Status::external("grpo: inconsistent rollout record " + std::to_string(i));
    out->push_back(std::move(r));
  }
  if (!rd.done()) return Status::external("grpo: trailing bytes in rollout message");
  return Status::ok();
}

// ---- trainer group hooks of the SPMD TrainingClient ---------------------------------------------
// save_weights_for_sampler("<version>") -> weight sync to the rollout group.
class RolloutSink final : public SamplerSink {
 public:
  RolloutSink(Transport& t, const WeightGroups& g) : t_(t), g_(g) {}
  Status publish(std::span<const float> params, const std::string& name) override {
    int64_t version = 0;
    try {
      version = std::stoll(name);
    } catch (const std::exception&) {
      return Status::invalid_argument("grpo: weight version name '" + name + "' is not a number");
    }
    return sync_weights(t_, g_, params, nullptr, version);
  }

 private:
  Transport& t_;
  const WeightGroups& g_;
};

struct StepResult {
  double loss = 0, tokens = 0, clip_fraction = 0, kl = 0, grad_norm = 0;
  double blocked_s = 0;  // waiting for before_update
};

// One data-parallel optimizer step through the API: forward_backward on this trainer's share, then
// optim_step (which sums the gradients over the group) unless the group trained no token at all
// (every group of samples had equal rewards).
// before_update runs right before the weights change (an async checkpoint still copying them) and
// returns the seconds it blocked.
Result<StepResult> train_step(TrainingClient& client, std::vector<Datum> batch, const LossConfig& loss, float lr,
                              const std::function<double()>& before_update = {}) {
  auto fb = client.forward_backward(std::move(batch), loss).get();
  if (!fb) return fb.status();
  StepResult out;
  out.tokens = static_cast<double>(fb->stats.tokens);
  if (out.tokens <= 0) return out;
  out.loss = fb->stats.loss;
  out.clip_fraction = fb->stats.clip_fraction;
  out.kl = fb->stats.kl;
  AdamParams ap;
  ap.lr = lr;
  if (before_update) out.blocked_s = before_update();
  auto st = client.optim_step(ap).get();
  if (!st) return st.status();
  out.grad_norm = st->grad_norm;
  return out;
}

// Held-out greedy accuracy of the client's current weights.
Result<double> evaluate(TrainingClient& client, Sampler<>& sampler, const Task& task, const Tokenizer& tok, int n,
                        int max_new_tokens) {
  double acc = 0;
  auto done = client
                  .with_state([&](TrainingState& st) -> Status {
                    auto a = evaluate_params(sampler, st.model.params, task, tok, n, max_new_tokens);
                    if (!a) return a.status();
                    acc = *a;
                    return Status::ok();
                  })
                  .get();
  if (!done) return done.status();
  return acc;
}

// One RL step as trainer 0 saw it: the printed line, summary.json's "steps" (docs/rl.md).
struct StepMetrics {
  int64_t step = 0, lag = 0;
  double reward = 0, reward_std = 0, accuracy = 0, entropy = 0, kl = 0, clip = 0, loss = 0;
  double trained_tokens = 0, completion_tokens = 0, tokens_per_s = 0;
  double step_s = 0, sync_s = 0, sample_s = 0, reward_s = 0, transfer_s = 0, wait_s = 0, train_s = 0, checkpoint_s = 0;
  std::string json() const {
    char b[768];
    std::snprintf(b, sizeof b,
                  "{\"step\": %lld, \"reward\": %.4f, \"reward_std\": %.4f, \"accuracy\": %.4f, \"entropy\": %.4f, "
                  "\"kl\": %.6f, \"clip_fraction\": %.4f, \"loss\": %.5f, \"trained_tokens\": %.0f, "
                  "\"completion_tokens\": %.0f, \"tokens_per_s\": %.1f, \"lag\": %lld, \"step_s\": %.5f, "
                  "\"sync_ms\": %.3f, \"sample_s\": %.5f, \"reward_s\": %.5f, \"transfer_s\": %.5f, "
                  "\"wait_s\": %.5f, \"train_s\": %.5f, \"checkpoint_s\": %.5f}",
                  static_cast<long long>(step), reward, reward_std, accuracy, entropy, kl, clip, loss, trained_tokens,
                  completion_tokens, tokens_per_s, static_cast<long long>(lag), step_s, sync_s * 1e3, sample_s,
                  reward_s, transfer_s, wait_s, train_s, checkpoint_s);
    return b;
  }
};

// Trainer 0's view of a step into the metrics registry (Prometheus, docs/observability.md).
void record_step(const StepMetrics& m) {
  auto& r = metrics::registry();
  static auto& steps = r.counter("mobula_steps_total", "GRPO steps trained (this attempt)");
  static auto& last = r.gauge("mobula_step", "Last GRPO step trained");
  static auto& tokens = r.counter("mobula_completion_tokens_total", "Completion tokens sampled");
  static auto& step_s =
      r.histogram("mobula_step_seconds", "Wall time of one GRPO step", metrics::exponential_buckets(1e-3, 2.5, 14));
  static auto& lag = r.gauge("mobula_policy_lag", "Policy versions between sampling and training");
  steps.inc();
  last.set(static_cast<double>(m.step));
  tokens.inc(m.completion_tokens);
  step_s.observe(m.step_s);
  lag.set(static_cast<double>(m.lag));
  const std::pair<const char*, double> gauges[] = {
      {"reward", m.reward}, {"reward_std", m.reward_std}, {"accuracy", m.accuracy},  {"loss", m.loss},
      {"kl", m.kl},         {"entropy", m.entropy},       {"clip_fraction", m.clip}, {"tokens_per_s", m.tokens_per_s}};
  for (const auto& [name, v] : gauges)
    r.gauge(std::string("mobula_") + name, std::string("Last step's ") + name).set(v);
  const std::pair<const char*, double> phases[] = {
      {"sample", m.sample_s}, {"reward", m.reward_s}, {"transfer", m.transfer_s},    {"wait", m.wait_s},
      {"train", m.train_s},   {"sync", m.sync_s},     {"checkpoint", m.checkpoint_s}};
  for (const auto& [phase, v] : phases)
    r.counter("mobula_step_phase_seconds_total", "Step time by phase (trainer 0's view)", {{"phase", phase}}).inc(v);
}

Status write_summary(const std::string& dir, const std::string& text) {
  return write_file_atomically(dir + "/summary.json", text);
}

}  // namespace

Status run_grpo(const WorkloadContext& ctx) {
  const JobSpec& spec = ctx.spec;
  const RlSpec& rl = spec.rl;
  const Placement& me = ctx.layout.at(ctx.rank);
  const bool trainer = me.role == "trainer", rollout = me.role == "rollout";
  const int T = static_cast<int>(ctx.layout.ranks_of("trainer").size());
  const int R = static_cast<int>(ctx.layout.ranks_of("rollout").size());
  auto task_r = make_task(rl.task, rl.digits);
  if (!task_r) return Status::invalid_spec(spec.where("rl.task") + ": rl.task: " + task_r.status().message());
  const Task& task = **task_r;
  CharTokenizer tok(task.alphabet());
  GptConfig cfg;
  cfg.vocab = tok.vocab_size();
  cfg.max_seq = spec.model.context;
  cfg.layers = spec.model.layers;
  cfg.heads = spec.model.heads;
  cfg.d_model = spec.model.d_model;
  cfg.mlp_ratio = spec.model.mlp_ratio;
  MOBULA_RETURN_IF_ERROR(cfg.validate());
  const int G = rl.group_size, P = rl.prompts_per_step;
  const int prompt_len = static_cast<int>(task.example(0, 0).prompt.size());
  if (prompt_len + rl.max_new_tokens > cfg.max_seq)
    return Status::invalid_spec(spec.where("model.context") + ": model.context: " + std::to_string(cfg.max_seq) +
                                " is shorter than prompt (" + std::to_string(prompt_len) + ") + rl.max_new_tokens (" +
                                std::to_string(rl.max_new_tokens) + ")");
  if (!trainer && !rollout) {
    spdlog::info("role {} has no part in workload grpo; idle", me.role);
    return Status::ok();
  }

  // Transports, created in the same order on every member of each communicator.
  MPI_Comm link = ctx.comms.link("trainer", "rollout");
  auto choose = [&](const std::string& key, const std::string& v) {
    return resolve_transport(spec, key, v, MemoryPlace::kHost);
  };
  auto wname = choose("transport.weights", spec.transport.weights);
  auto rname = choose("transport.rollouts", spec.transport.rollouts);
  if (!wname) return wname.status();
  if (!rname) return rname.status();
  auto wt = make_transport(*wname, link);
  if (!wt) return wt.status();
  std::unique_ptr<Transport> rt_own;
  Transport* rt = wt->get();
  if (*rname != *wname) {
    auto r = make_transport(*rname, link);
    if (!r) return r.status();
    rt_own = std::move(r).value();
    rt = rt_own.get();
  }
  // Rollout batches travel as object refs (core/objects) over the same link communicator.
  // Its server threads sleep 200 us when idle (not 20): a rollout batch is pulled once per step, and
  // on busy cores a fast-polling thread slows sampling and training measurably.
  ObjectStoreOptions so;
  so.idle_sleep_us = 200;
  auto store_r = ObjectStore::create(link, so);
  if (!store_r) return store_r.status();
  std::unique_ptr<ObjectStore> objects = std::move(store_r).value();
  WeightGroups groups;
  for (int i = 0; i < T; ++i) groups.trainers.push_back(i);  // link ranks: trainers first
  for (int i = 0; i < R; ++i) groups.rollouts.push_back(T + i);
  const size_t nparams = gpt_tensors(cfg).back().offset + gpt_tensors(cfg).back().size();

  // Trainers: a SPMD TrainingClient each (rl/api): the loop below is written on its calls.
  std::unique_ptr<Transport> gt;
  std::unique_ptr<TransportGroup> group;
  std::unique_ptr<RolloutSink> sink;
  std::unique_ptr<TrainingClient> client;
  std::unique_ptr<Gpt<>> ref_model;          // the frozen reference policy of the KL penalty (rl.kl_coef > 0)
  std::unique_ptr<SamplingClient> sampling;  // rollouts: the API's sampling half
  std::unique_ptr<Sampler<>> eval_sampler;
  std::unique_ptr<WeightStore> store;
  const bool with_kl = rl.kl_coef > 0;
  const bool async = rl.max_staleness > 0;
  // One-step-off: batch k is sampled with v_(k-1), so a checkpoint at boundary k carries v_(k-1)
  // too (trainers copy the weights before each update; cheap next to the update itself).
  std::vector<float> prev_params;
  if (trainer) {
    auto g = make_transport(*choose("transport.gradients", spec.transport.gradients), ctx.comms.role());
    if (!g) return g.status();
    gt = std::move(g).value();
    group = std::make_unique<TransportGroup>(*gt);
    sink = std::make_unique<RolloutSink>(**wt, groups);
    ClientOptions co;
    co.model = cfg;
    co.seed = static_cast<uint64_t>(spec.seed);  // same seed on every trainer: identical replicas
    co.max_batch = spec.model.microbatch;
    auto c = TrainingClient::create_spmd(co, *group, sink.get());
    if (!c) return c.status();
    client = std::move(c).value();
    if (with_kl) {
      auto m = Gpt<>::create(cfg, spec.model.microbatch);
      if (!m) return m.status();
      ref_model = std::make_unique<Gpt<>>(std::move(m).value());
    }
    if (async) prev_params.assign(nparams, 0.f);
    if (me.role_rank == 0) {
      auto s = Sampler<>::create(cfg, std::min(128, rl.eval_problems), cfg.max_seq);
      if (!s) return s.status();
      eval_sampler = std::make_unique<Sampler<>>(std::move(s).value());
    }
  } else {
    const int my_prompts = (P + R - 1) / R;
    auto s = SamplingClient::create(cfg, std::max(1, my_prompts) * G);
    if (!s) return s.status();
    sampling = std::move(s).value();
    store = std::make_unique<WeightStore>(nparams);
  }
  const bool lead = trainer && me.role_rank == 0;
  auto beat = [&](const char* phase, int64_t step) {
    if (ctx.watchdog) ctx.watchdog->beat(phase, step);
    if (ctx.metrics) ctx.metrics->tick();
  };
  const double t_start = now();

  // ---- resume (trainers read the newest checkpoint that verifies; everyone learns the step) ----
  int64_t start = 0;
  double base_acc = 0;
  auto ckpt_state = [&](TrainingState& st) {
    io::CheckpointState c;
    c.buffers = {{"params", {st.model.params.data(), nparams}},
                 {"adam_m", {st.optimizer.m.data(), nparams}},
                 {"adam_v", {st.optimizer.v.data(), nparams}}};
    if (with_kl) c.buffers.push_back({"ref_params", {ref_model->params.data(), nparams}});
    if (async) c.buffers.push_back({"prev_params", std::span<float>(prev_params)});
    return c;
  };
  Status resume = Status::ok();
  if (trainer) {
    io::CheckpointState c;
    Result<std::optional<std::string>> found = std::optional<std::string>();
    std::vector<std::string> rejected;
    auto done = client
                    ->with_state([&](TrainingState& st) -> Status {
                      c = ckpt_state(st);
                      found = io::load_latest_checkpoint(spec.checkpoint.dir, &c, ctx.comms.role(), &rejected);
                      if (found && *found) st.optimizer.set_steps_done(static_cast<int>(c.optimizer_steps));
                      return Status::ok();
                    })
                    .get();
    if (!done) return done.status();
    if (lead)
      for (const auto& r : rejected) {
        spdlog::warn("checkpoint rejected: {}", r);
        events::emit(spec.workdir, "checkpoint_rejected", {{"reason", events::str(r)}}, ctx.rank);
      }
    if (!found) {
      resume = found.status();
    } else if (*found) {
      start = c.step;
      base_acc = c.scalar;
      if (lead)
        events::emit(spec.workdir, "checkpoint_loaded", {{"path", events::str(**found)}, {"step", events::num(start)}},
                     ctx.rank);
      if (lead)
        spdlog::info("resumed from {} (step {}, written by spec {}{})", **found, start, c.spec_hash,
                     c.spec_hash == spec.hash() ? "" : ", not this spec's hash " + spec.hash());
    }
    // Fencing: from now on no rank of an earlier launch may publish a checkpoint here.
    if (lead && resume.is_ok() && spec.checkpoint.every > 0)
      resume = io::fence_checkpoints(spec.checkpoint.dir, env_long("MOBULA_STEP_ATTEMPT", 0));
  }
  // The trainers' verdict reaches every rank (start = -1: no usable checkpoint), so all of them
  // stop with the same one-line error instead of the rollouts waiting forever.
  int64_t verdict = resume.is_ok() ? start : -1;
  MOBULA_MPI(MPI_Bcast(&verdict, 1, MPI_INT64_T, 0, link));  // link rank 0 = trainer 0
  if (verdict < 0)
    return Status::invalid_argument(resume.is_ok() ? "grpo: the trainers could not resume (see trainer 0's error)"
                                                   : resume.message());
  start = verdict;

  // ---- warm start (trainers): cross-entropy on noisy-labeler data, data-parallel --------------
  if (trainer && start == 0) {
    const int B = rl.warm_start_batch;
    for (int s = 0; s < rl.warm_start_steps; ++s) {
      beat("warm start", s);
      std::vector<Datum> batch;
      for (int i = me.role_rank; i < B; i += T) {
        auto d = sft_datum(tok, task.warm_start_example(uint64_t(spec.seed), uint64_t(s) * uint64_t(B) + uint64_t(i),
                                                        rl.warm_start_noise));
        if (!d) return d.status();
        batch.push_back(std::move(d).value());
      }
      auto st = train_step(*client, std::move(batch), {}, static_cast<float>(rl.warm_start_lr));
      if (!st) return st.status();
      if (lead && (s + 1) % 100 == 0)
        spdlog::info("warm start {}/{}: loss {:.4f}", s + 1, rl.warm_start_steps, st->loss);
    }
  }
  if (lead && start == 0) {
    auto a = evaluate(*client, *eval_sampler, task, tok, rl.eval_problems, rl.max_new_tokens);
    if (!a) return a.status();
    base_acc = *a;
    spdlog::info("warm start done in {:.1f} s: held-out greedy accuracy {:.3f} ({} problems)", now() - t_start,
                 base_acc, rl.eval_problems);
  }
  // Every trainer holds the warm-start accuracy: it goes into checkpoints (a collective attribute).
  if (trainer) MOBULA_MPI(MPI_Bcast(&base_acc, 1, MPI_DOUBLE, 0, ctx.comms.role()));
  // The KL reference is the policy RL starts from (after the warm start); a resumed job has it from
  // the checkpoint.
  if (trainer && with_kl && start == 0) {
    auto copied = client
                      ->with_state([&](TrainingState& st) {
                        Kokkos::deep_copy(ref_model->params, st.model.params);
                        return Status::ok();
                      })
                      .get();
    if (!copied) return copied.status();
  }

  // ---- RL ------------------------------------------------------------------------------------
  LossConfig loss;
  loss.fn = LossFn::kPpo;
  loss.clip_low = static_cast<float>(rl.clip);
  loss.clip_high = static_cast<float>(rl.clip_high);
  loss.kl_coef = static_cast<float>(rl.kl_coef);
  std::vector<StepMetrics> history;  // trainer 0: this attempt's steps
  const double t_rl = now();
  // Versions: v_j = the weights after j optimizer steps. Synchronous (max_staleness 0): batch k is
  // sampled with v_k, synced at the start of step k. One-step-off (max_staleness 1): batch k is
  // sampled with v_max(0,k-1), so rollouts sample batch k+1 while trainers train on batch k; the
  // trainers sync v_(k+1) right after training batch k (when batch k+2 will need it) and the
  // rollouts receive it at the start of step k+2. Rollout sends stay in flight across one step so
  // the two orders never wait on each other.
  struct Pending {
    std::vector<std::vector<std::byte>> refs;
    std::vector<int64_t> sizes;
    std::vector<RequestPtr> reqs;
  };
  std::unique_ptr<Pending> pending;
  auto sync_version = [&](int64_t v) -> Status {
    if (trainer) {  // the API's save_weights_for_sampler publishes version v to the rollout group
      auto r = client->save_weights_for_sampler(std::to_string(v)).get();
      return r ? Status::ok() : r.status();
    }
    return sync_weights(**wt, groups, {}, store.get(), v);
  };
  int64_t max_lag = 0;
  const long kill_after = env_long("MOBULA_FAULT_KILL_AFTER_STEP", -1);
  const long kill_rank = env_long("MOBULA_FAULT_KILL_RANK", 0);
  const long kill_attempt = env_long("MOBULA_FAULT_KILL_ATTEMPT", 0);  // launch it applies to; -1: all
  const long attempt = env_long("MOBULA_STEP_ATTEMPT", 0);
  // Checkpoints. Synchronous: every trainer takes part (vote) and waits until the file is durable.
  // Asynchronous: trainer 0 stages a copy and its background thread publishes it; the others go on.
  std::unique_ptr<io::AsyncCheckpointer> async_ckpt;
  if (lead && spec.checkpoint.every > 0 && spec.checkpoint.async)
    async_ckpt = std::make_unique<io::AsyncCheckpointer>(
        spec.checkpoint.dir, spec.checkpoint.keep,
        [dir = spec.workdir, rank = ctx.rank](int64_t step, const char* what, const Status& st, double secs) {
          events::Fields f = {
              {"step", events::num(step)}, {"mode", events::str("async")}, {"seconds", events::num(secs)}};
          if (!st.is_ok()) f.push_back({"reason", events::str(st.message())});
          events::emit(dir, std::string("checkpoint_") + what, f, rank);
        });
  // The state after `steps_done` steps, as a checkpoint of this attempt.
  auto checkpoint_of = [&](TrainingState& ws, int64_t steps_done) {
    io::CheckpointState c = ckpt_state(ws);
    c.step = steps_done;
    c.optimizer_steps = ws.optimizer.steps_done();
    c.scalar = base_acc;
    c.spec_hash = spec.hash();
    c.attempt = attempt;
    return c;
  };
  auto save_after = [&](int64_t steps_done) -> Status {
    if (spec.checkpoint.async && !lead) return Status::ok();
    auto r = client
                 ->with_state([&](TrainingState& ws) -> Status {
                   const io::CheckpointState c = checkpoint_of(ws, steps_done);
                   if (async_ckpt) return async_ckpt->stage(c);  // the previous save's outcome
                   return io::save_checkpoint(spec.checkpoint.dir, c, spec.checkpoint.keep, ctx.comms.role());
                 })
                 .get();
    return r ? Status::ok() : r.status();
  };
  // Stopped by a signal at the boundary of step k: the trainers publish the state after k steps
  // synchronously (after any save in flight), then everybody leaves with "preempted".
  auto preempt = [&](int64_t k, int sig) -> Status {
    beat("preemption checkpoint", k);
    Status saved = Status::ok();
    // One-step-off: before boundary k the trainers shipped v_(k-1) and v_k, which a rollout takes
    // at steps k and k+1; take them now, or the trainers' sends never end.
    if (rollout && async && k >= 2) saved = sync_version(k - 1);
    if (rollout && async && saved.is_ok() && k >= 1 && k + 1 < spec.steps) saved = sync_version(k);
    if (pending && saved.is_ok()) saved = wait_all(pending->reqs);
    if (trainer) {
      if (async_ckpt) (void)async_ckpt->wait();
      auto r = client
                   ->with_state([&](TrainingState& ws) {
                     return io::save_checkpoint(spec.checkpoint.dir, checkpoint_of(ws, k), spec.checkpoint.keep,
                                                ctx.comms.role());
                   })
                   .get();
      if (!r) saved = r.status();
    }
    if (lead && !saved.is_ok()) spdlog::error("preemption checkpoint at step {}: {}", k, saved.message());
    if (lead) record_preemption(ctx, k, sig, saved.is_ok());
    return Status::preempted(
        "preempted by signal " + std::to_string(sig) + " at the boundary of step " + std::to_string(k) +
        (saved.is_ok() && trainer ? "; the checkpoint of " + std::to_string(k) + " steps is durable" : "") +
        "; exiting with 3 so that the launcher restarts the job");
  };
  const long signal_after = env_long("MOBULA_FAULT_SIGNAL_AFTER_STEP", -1);
  const long hang_after = env_long("MOBULA_FAULT_HANG_AFTER_STEP", -1);
  // Test knob: trainer 0 sleeps this long after every step, so a job's length in seconds is known
  // whatever the machine's speed (the Slurm time-limit test).
  const long step_delay_ms = env_long("MOBULA_FAULT_STEP_DELAY_MS", 0);
  // Test knob: every rank waits after this step until its stop signal arrives (up to 120 s), so a
  // test that signals the job from outside (scancel, Slurm) hits it mid-run however loaded the machine.
  // All ranks sleep: one rank waiting would leave its peers spinning in MPI calls, and on a 2-core CI
  // machine that starved a second job and slurmctld itself for 90 s.
  const long await_signal_after = env_long("MOBULA_FAULT_AWAIT_SIGNAL_AFTER_STEP", -1);
  const int64_t stop_delay = 1 + rl.max_staleness;
  int stop_mine[3] = {0, 0, 0}, stop_any[3] = {0, 0, 0};
  MPI_Request stop_req[3] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  for (int64_t k = start; k < spec.steps; ++k) {
    beat("step boundary", k);
    // Preemption (core/health): a non-blocking all-reduce of the ranks' stop signals starts at
    // every step boundary and is completed D boundaries later (D = 1 + rl.max_staleness), so every
    // rank learns of a signal at the same boundary without an extra synchronisation per step (a
    // blocking one deadlocks the one-step-off mode, whose roles run a step apart). Then the trainers
    // save the state after k steps (durably) and every rank returns "preempted" (exit 3).
    if (k - stop_delay >= start) {
      const size_t i = size_t((k - stop_delay) % 3);
      MOBULA_MPI(MPI_Wait(&stop_req[i], MPI_STATUS_IGNORE));
      if (stop_any[i]) return preempt(k, stop_any[i]);
    }
    stop_mine[size_t(k % 3)] = health::stop_signal();
    MOBULA_MPI(MPI_Iallreduce(&stop_mine[size_t(k % 3)], &stop_any[size_t(k % 3)], 1, MPI_INT, MPI_MAX, link,
                              &stop_req[size_t(k % 3)]));
    const double t0 = now();
    beat("weight sync", k);
    if (!async || (k == start && start == 0)) MOBULA_RETURN_IF_ERROR(sync_version(k));
    if (async && k == start && start > 0) {
      // Resumed one-step-off: batch k needs v_(k-1) (from the checkpoint); the trainers also ship
      // v_k now, as they did after training step k-1, for the rollouts' step k+1.
      if (trainer) {
        MOBULA_RETURN_IF_ERROR(sink->publish(prev_params, std::to_string(k - 1)));
        if (k + 1 < spec.steps) MOBULA_RETURN_IF_ERROR(sync_version(k));
      } else {
        MOBULA_RETURN_IF_ERROR(sync_version(k - 1));
      }
    }
    if (async && rollout && k >= 2 && k > start) MOBULA_RETURN_IF_ERROR(sync_version(k - 1));
    const double t_sync = now() - t0;
    const int64_t expect_version = async ? std::max<int64_t>(0, k - 1) : k;

    const int64_t tag_base = 1000 + 2 * (k % 10000);
    RolloutStats stats;
    std::vector<Record> mine;
    if (rollout) {
      beat("sampling", k);
      const auto w = store->current();
      if (w->version != expect_version)
        return Status::external("grpo: rollout holds weights version " + std::to_string(w->version) + ", expected " +
                                std::to_string(expect_version));
      stats.version = static_cast<double>(w->version);
      if (sampling->version() != w->version) MOBULA_RETURN_IF_ERROR(sampling->set_weights(w->params, w->version));
      std::vector<TaskExample> ex;
      std::vector<std::vector<int>> prompts;
      for (int p = me.role_rank; p < P; p += R) {
        ex.push_back(task.example(uint64_t(spec.seed) + 1, uint64_t(k) * uint64_t(P) + uint64_t(p)));
        auto ids = tok.encode(ex.back().prompt);
        if (!ids) return ids.status();
        prompts.push_back(*ids);
      }
      SamplingParams sp;
      sp.temperature = static_cast<float>(rl.temperature);
      sp.max_new_tokens = rl.max_new_tokens;
      sp.stop_tokens = {tok.eos()};
      std::vector<uint64_t> seeds;
      for (size_t i = 0; i < prompts.size(); ++i)
        for (int g = 0; g < G; ++g)
          seeds.push_back(uint64_t(spec.seed) * 0x9E3779B97F4A7C15ull + uint64_t(k) * 1000003ull +
                          uint64_t(me.role_rank + int(i) * R) * 1009ull + uint64_t(g));
      const double ts0 = now();
      auto out = sampling->sample(prompts, G, sp, seeds).get();
      if (!out) return out.status();
      stats.sample_seconds = now() - ts0;
      const double tr0 = now();
      std::vector<float> rewards;
      for (size_t i = 0; i < prompts.size(); ++i)
        for (int g = 0; g < G; ++g) {
          rewards.push_back(task.reward(ex[i], completion_text(tok, (*out)[i * size_t(G) + size_t(g)].tokens)));
        }
      auto adv = group_advantages(rewards, G, rl.advantage_std);
      if (!adv) return adv.status();
      stats.reward_seconds = now() - tr0;
      for (size_t i = 0; i < prompts.size(); ++i)
        for (int g = 0; g < G; ++g) {
          const size_t j = i * size_t(G) + size_t(g);
          const Sample& s = (*out)[j];
          stats.reward_sum += rewards[j];
          stats.reward_sq_sum += double(rewards[j]) * rewards[j];
          stats.correct += rewards[j] >= 1.0f ? 1 : 0;
          stats.samples += 1;
          stats.completion_tokens += double(s.tokens.size());
          for (float lp : s.model_logprobs) stats.neg_logp_sum -= lp;
          if (s.tokens.empty() || (*adv)[j] == 0.f) continue;  // no learning signal
          Record r;
          r.seq.assign(prompts[i].begin(), prompts[i].end());
          r.seq.insert(r.seq.end(), s.tokens.begin(), s.tokens.end());
          r.first = static_cast<int32_t>(prompts[i].size());
          r.advantage = (*adv)[j];
          r.logp_old = sp.temperature == 1.0f ? s.model_logprobs : s.logprobs;
          mine.push_back(std::move(r));
        }
      // Record j -> trainer j % T. Each trainer's part stays in this rank's object store; the
      // trainer gets a small ref (size + bytes, eager) and pulls the part from the store's server
      // thread, which answers while this thread samples the next batch (one-step-off async).
      auto next = std::make_unique<Pending>();
      next->refs.resize(static_cast<size_t>(T));
      next->sizes.resize(static_cast<size_t>(T));
      auto& refs = next->refs;
      auto& sizes = next->sizes;
      auto& reqs = next->reqs;
      for (int t = 0; t < T; ++t) {
        std::vector<const Record*> part;
        for (size_t j = static_cast<size_t>(t); j < mine.size(); j += static_cast<size_t>(T)) part.push_back(&mine[j]);
        std::vector<uint8_t> bytes = encode(stats, part);
        const auto n = static_cast<int64_t>(bytes.size());
        auto ref = objects->put({Tensor::from_vector(std::move(bytes), {n})}, /*holders=*/1);
        if (!ref) return ref.status();
        refs[size_t(t)] = ref->serialize();
        sizes[size_t(t)] = static_cast<int64_t>(refs[size_t(t)].size());
        Options o;
        o.tag = int(tag_base);
        auto a = rt->isend(host_buffer(&sizes[size_t(t)], 1), t, o);
        if (!a) return a.status();
        reqs.push_back(std::move(a).value());
        o.tag = int(tag_base + 1);
        auto b = rt->isend({refs[size_t(t)].data(), refs[size_t(t)].size(), DType::kU8, MemoryPlace::kHost}, t, o);
        if (!b) return b.status();
        reqs.push_back(std::move(b).value());
      }
      if (pending) MOBULA_RETURN_IF_ERROR(wait_all(pending->reqs));  // the previous step's batch
      pending = std::move(next);
      if (!async) {
        MOBULA_RETURN_IF_ERROR(wait_all(pending->reqs));
        pending.reset();
      }
    }

    if (trainer) {
      beat("waiting for rollouts", k);
      std::vector<Record> recs;
      RolloutStats total;
      const double tx0 = now();
      for (int r = 0; r < R; ++r) {
        int64_t size = 0;
        Options o;
        o.tag = int(tag_base);
        MOBULA_RETURN_IF_ERROR(rt->recv(host_buffer(&size, 1), T + r, o));
        if (size < 0 || size > (int64_t{1} << 20)) return Status::external("grpo: bad rollout ref size");
        std::vector<std::byte> ref_bytes(static_cast<size_t>(size));
        o.tag = int(tag_base + 1);
        MOBULA_RETURN_IF_ERROR(
            rt->recv({ref_bytes.data(), ref_bytes.size(), DType::kU8, MemoryPlace::kHost}, T + r, o));
        auto ref = ObjectRef::parse(ref_bytes);
        if (!ref) return ref.status();
        if (ref->owner != T + r || ref->tensors.size() != 1)
          return Status::external("grpo: rollout " + std::to_string(r) + " sent a ref that is not its batch");
        std::vector<uint8_t> bytes(ref->bytes());
        const Buffer dst{bytes.data(), bytes.size(), DType::kU8, MemoryPlace::kHost};
        MOBULA_RETURN_IF_ERROR(objects->get_into(*ref, std::span<const Buffer>(&dst, 1)));
        MOBULA_RETURN_IF_ERROR(objects->release(*ref));
        RolloutStats st;
        MOBULA_RETURN_IF_ERROR(decode(bytes, &st, &recs));
        total.reward_sum += st.reward_sum;
        total.reward_sq_sum += st.reward_sq_sum;
        total.correct += st.correct;
        total.samples += st.samples;
        total.completion_tokens += st.completion_tokens;
        total.neg_logp_sum += st.neg_logp_sum;
        total.sample_seconds = std::max(total.sample_seconds, st.sample_seconds);
        total.reward_seconds = std::max(total.reward_seconds, st.reward_seconds);
        total.version = st.version;
      }
      // Waiting for and receiving the batch, less the rollouts' own sampling and reward time.
      const double t_wait = now() - tx0;
      std::vector<Datum> batch;
      for (const auto& r : recs)
        batch.push_back(completion_datum(r.seq, static_cast<size_t>(r.first), r.logp_old, r.advantage));
      beat("training", k);
      const double tt0 = now();
      double blocked_by_save = 0;
      if (async) {  // v_k, for a checkpoint at boundary k+1
        // prev_params is part of a staged checkpoint: its copy must be done before it changes
        // (found by comparing dataset checksums of restarted and clean runs).
        if (async_ckpt) blocked_by_save = async_ckpt->wait_staged();
        auto copied = client
                          ->with_state([&](TrainingState& ws) {
                            std::memcpy(prev_params.data(), ws.model.params.data(), nparams * sizeof(float));
                            return Status::ok();
                          })
                          .get();
        if (!copied) return copied.status();
      }
      if (with_kl && !batch.empty()) {  // log-probs under the frozen reference
        auto lr = forward_batch(*ref_model, batch);
        if (!lr) return lr.status();
        for (size_t i = 0; i < batch.size(); ++i) batch[i].logprobs_ref = std::move((*lr)[i]);
      }
      auto st = train_step(*client, std::move(batch), loss, static_cast<float>(rl.lr),
                           [&] { return async_ckpt ? async_ckpt->wait_staged() : 0.0; });
      if (!st) return st.status();
      const double t_train = now() - tt0;
      double t_ckpt = 0;
      if (spec.checkpoint.every > 0 && (k + 1) % spec.checkpoint.every == 0) {
        beat("checkpoint", k);
        const double tc = now();
        Status saved = save_after(k + 1);
        t_ckpt = now() - tc;
        // A failed save is reported and training goes on: `latest` still names the previous
        // checkpoint (io/checkpoint.h); the next interval tries again.
        // (Asynchronous saves log their failure from the background thread when it happens.)
        if (!saved.is_ok() && lead && !async_ckpt) record_checkpoint_failure(ctx, k, saved);
        if (saved.is_ok() && lead && !async_ckpt) {
          spdlog::info("checkpoint after step {} published in {:.3f} s", k, t_ckpt);
          events::emit(spec.workdir, "checkpoint_durable",
                       {{"step", events::num(k + 1)}, {"mode", events::str("sync")}, {"seconds", events::num(t_ckpt)}},
                       ctx.rank);
        }
      }
      // The trainers now hold v_(k+1). One-step-off: ship it now; batch k+2 is the first to use it.
      double t_sync_after = 0;
      if (async && k + 2 < spec.steps) {
        const double ta = now();
        MOBULA_RETURN_IF_ERROR(sync_version(k + 1));
        t_sync_after = now() - ta;
      }
      // Lag between the policy being trained (v_k) and the one that sampled the batch.
      const int64_t lag = k - static_cast<int64_t>(total.version);
      if (lag > rl.max_staleness)
        return Status::external("grpo: batch " + std::to_string(k) + " was sampled " + std::to_string(lag) +
                                " versions behind, over rl.max_staleness " + std::to_string(rl.max_staleness));
      max_lag = std::max(max_lag, lag);
      if (lead) {
        StepMetrics m;
        m.step = k;
        m.lag = lag;
        const double ns = std::max(1.0, total.samples);
        m.reward = total.reward_sum / ns;
        m.reward_std = std::sqrt(std::max(0.0, total.reward_sq_sum / ns - m.reward * m.reward));
        m.accuracy = total.correct / ns;
        m.entropy = total.neg_logp_sum / std::max(1.0, total.completion_tokens);
        m.kl = st->kl;
        m.clip = st->clip_fraction;
        m.loss = st->loss;
        m.trained_tokens = st->tokens;
        m.completion_tokens = total.completion_tokens;
        m.step_s = now() - t0;
        m.tokens_per_s = total.completion_tokens / m.step_s;
        m.sync_s = t_sync + t_sync_after;
        m.sample_s = total.sample_seconds;
        m.reward_s = total.reward_seconds;
        m.wait_s = t_wait;
        // Synchronous: the trainers' wait covers the rollouts' sampling and rewards; the rest is
        // the transfer. Async: sampling overlaps training, the wait is all that is left of it.
        m.transfer_s = async ? t_wait : std::max(0.0, t_wait - m.sample_s - m.reward_s);
        m.train_s = t_train;
        m.checkpoint_s = t_ckpt + st->blocked_s + blocked_by_save;  // training blocked by checkpoints
        const std::string step_line = fmt::format(
            "step {:4d}  reward {:.3f}±{:.3f}  accuracy {:.3f}  tokens/s {:7.0f}  sync {:6.1f} ms  sample {:.3f} s  "
            "train {:.3f} s  wait {:.3f} s  kl {:.4f}  entropy {:.3f}  clip {:.3f}  lag {}",
            k, m.reward, m.reward_std, m.accuracy, m.tokens_per_s, m.sync_s * 1e3, m.sample_s, m.train_s, m.wait_s,
            m.kl, m.entropy, m.clip, lag);
        // On a terminal, `mobula run` draws a progress line instead (launch/commands.cc).
        if (console_progress()) {
          log_to_files(spdlog::level::info, step_line);
        } else {
          spdlog::info("{}", step_line);
        }
        history.push_back(m);
        record_step(m);
        // The time series survives a crash and spans attempts (summary.json has the last one only).
        std::string line = m.json();
        line.insert(1,
                    "\"time\": " + events::str(events::now_utc()) + ", \"attempt\": " + std::to_string(attempt) + ", ");
        if (Status a = events::append_line(spec.workdir, "metrics.jsonl", line, /*durable=*/false); !a.is_ok())
          spdlog::warn("metrics.jsonl: {}", a.message());
      }
    }
    // Fault injection for the restart tests (docs/testing.md): this rank dies after step k.
    if (kill_after == k && kill_rank == ctx.rank && (kill_attempt < 0 || kill_attempt == attempt)) {
      // Deterministic for the tests: a save in flight becomes durable first (the kill-in-save
      // switch covers a crash during a save).
      if (async_ckpt) (void)async_ckpt->wait();
      spdlog::warn("fault injection: SIGKILL after step {}", k);
      events::emit(spec.workdir, "fault_injected", {{"kind", events::str("SIGKILL")}, {"step", events::num(k)}},
                   ctx.rank);
      spdlog::shutdown();
      std::raise(SIGKILL);
    }
    if (step_delay_ms > 0 && lead) std::this_thread::sleep_for(std::chrono::milliseconds(step_delay_ms));
    if (await_signal_after == k) {
      if (lead) {
        spdlog::warn("fault injection: every rank waits after step {} for a stop signal (up to 120 s)", k);
        events::emit(spec.workdir, "fault_injected", {{"kind", events::str("await signal")}, {"step", events::num(k)}},
                     ctx.rank);
      }
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      while (!health::stop_signal() && std::chrono::steady_clock::now() < until) {
        beat("awaiting a signal (fault injection)", k);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      if (!health::stop_signal())
        spdlog::warn("fault injection: no stop signal within 120 s; going on");
      else if (lead)
        spdlog::warn("fault injection: signal {} arrived; going on", health::stop_signal());
    }
    const bool fault_here = kill_rank == ctx.rank && (kill_attempt < 0 || kill_attempt == attempt);
    if (signal_after == k && fault_here) {
      spdlog::warn("fault injection: SIGUSR1 after step {}", k);
      events::emit(spec.workdir, "fault_injected", {{"kind", events::str("SIGUSR1")}, {"step", events::num(k)}},
                   ctx.rank);
      std::raise(SIGUSR1);
    }
    if (hang_after == k && fault_here) {
      if (async_ckpt) (void)async_ckpt->wait();
      spdlog::warn("fault injection: SIGSTOP after step {} (this rank hangs)", k);
      events::emit(spec.workdir, "fault_injected", {{"kind", events::str("SIGSTOP")}, {"step", events::num(k)}},
                   ctx.rank);
      spdlog::default_logger()->flush();
      std::raise(SIGSTOP);
    }
  }
  beat("finishing", spec.steps);
  MOBULA_MPI(MPI_Waitall(3, stop_req, MPI_STATUSES_IGNORE));  // the last boundaries' (null: none)
  if (pending) MOBULA_RETURN_IF_ERROR(wait_all(pending->reqs));
  if (async_ckpt) {
    const Status last = async_ckpt->wait();
    if (!last.is_ok()) spdlog::error("the last checkpoint failed: {}", last.message());
  }
  if (lead) {
    beat("evaluation", spec.steps);
    auto a = evaluate(*client, *eval_sampler, task, tok, rl.eval_problems, rl.max_new_tokens);
    if (!a) return a.status();
    const double wall = now() - t_start, rl_wall = now() - t_rl;
    StepMetrics mean;
    double sum_tokens = 0, sum_step = 0;
    for (const auto& m : history) {
      sum_tokens += m.completion_tokens, sum_step += m.step_s;
      mean.sync_s += m.sync_s, mean.sample_s += m.sample_s, mean.reward_s += m.reward_s;
      mean.transfer_s += m.transfer_s, mean.wait_s += m.wait_s, mean.train_s += m.train_s;
      mean.checkpoint_s += m.checkpoint_s, mean.step_s += m.step_s;
    }
    const double n = std::max<double>(1, double(history.size()));
    for (double* x : {&mean.sync_s, &mean.sample_s, &mean.reward_s, &mean.transfer_s, &mean.wait_s, &mean.train_s,
                      &mean.checkpoint_s, &mean.step_s})
      *x /= n;
    const double tps = sum_step > 0 ? sum_tokens / sum_step : 0.0;
    std::printf(
        "\n  %-52s %8.3f\n  %-52s %8.3f\n  %-52s %8.1f\n  %-52s %8.0f\n  %-52s %8.1f\n"
        "  %-52s %.4f / %.4f / %.4f / %.4f / %.4f\n\n",
        "held-out accuracy, warm start", base_acc, "held-out accuracy, after GRPO", *a, "wall time (s)", wall,
        "completion tokens/s (RL)", tps, "mean step (ms)", mean.step_s * 1e3,
        "mean sync / sample / reward / transfer / train (s)", mean.sync_s, mean.sample_s, mean.reward_s,
        mean.transfer_s, mean.train_s);
    std::fflush(stdout);
    char head[2048];
    std::snprintf(
        head, sizeof head,
        "{\n  \"job\": \"%s\", \"spec_hash\": \"%s\", \"task\": \"%s\", \"trainers\": %d, \"rollouts\": %d,\n"
        "  \"warm_start_steps\": %d, \"rl_steps\": %lld, \"first_step\": %lld, \"eval_problems\": %d, "
        "\"max_staleness\": %d, \"max_lag\": %lld, \"kl_coef\": %g,\n"
        "  \"base_accuracy\": %.4f, \"final_accuracy\": %.4f, \"wall_s\": %.2f, \"rl_wall_s\": %.2f,\n"
        "  \"tokens_per_s\": %.1f, \"mean_step_s\": %.5f, \"mean_sync_ms\": %.3f, \"mean_sample_s\": %.5f, "
        "\"mean_reward_s\": %.5f,\n  \"mean_transfer_s\": %.5f, \"mean_wait_s\": %.5f, \"mean_train_s\": %.5f, "
        "\"mean_checkpoint_s\": %.5f,\n  \"steps\": [",
        spec.name.c_str(), spec.hash().c_str(), rl.task.c_str(), T, R, rl.warm_start_steps,
        static_cast<long long>(spec.steps), static_cast<long long>(start), rl.eval_problems, rl.max_staleness,
        static_cast<long long>(max_lag), rl.kl_coef, base_acc, *a, wall, rl_wall, tps, mean.step_s, mean.sync_s * 1e3,
        mean.sample_s, mean.reward_s, mean.transfer_s, mean.wait_s, mean.train_s, mean.checkpoint_s);
    std::string steps_json;
    for (const auto& m : history) steps_json += (steps_json.empty() ? "\n    " : ",\n    ") + m.json();
    MOBULA_RETURN_IF_ERROR(write_summary(spec.workdir, std::string(head) + steps_json + "\n  ]\n}\n"));
    // The trained policy (docs/formats/safetensors.md); trainers hold bitwise-identical replicas.
    auto saved = client
                     ->with_state([&](TrainingState& st) {
                       return save_weights(spec.workdir + "/policy.safetensors", cfg, st.model.params);
                     })
                     .get();
    if (!saved) return saved.status();
    spdlog::info("wrote {}/summary.json", spec.workdir);
  }
  return Status::ok();
}

}  // namespace mobula::rl
