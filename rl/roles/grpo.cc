// workload "grpo": supervised warm start, then GRPO with a trainer group and a rollout group
// (docs/rl.md), as a workload of the shared lifecycle (rl/roles/loop.h: resume, stop signals,
// checkpoints, faults).
//
// Per RL step k:
//   1. weight sync, trainers -> rollouts (version k; buckets spread over all trainers),
//   2. every rollout rank runs grpo_rollouts (rl/algo/grpo) on its share of the step's prompts
//      (p = its rank, + R, ...): G completions each, rewards, group-normalised advantages,
//   3. each rollout rank sends every trainer the records of the trainer's shards (a prompt's shard
//      is p * job.shards / P), straight, as object refs (transport.rollouts),
//   4. trainers order what they received by (prompt, sample), run PPO-clip on it, each shard's
//      gradient on its own, summed over the group in the fixed shard tree (transport.gradients),
//      and step AdamW in lockstep: the weights are the same bits for any trainer count up to
//      job.shards and any rollout count (docs/rl.md, "Determinism").
// Trainer 0 (world rank 0) prints one line per step and writes summary.json in the work dir.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>

#include "core/metrics/events.h"
#include "core/metrics/registry.h"
#include "core/objects/object_store.h"
#include "core/runtime/environment.h"
#include "core/runtime/files.h"
#include "core/runtime/hash.h"
#include "core/runtime/log.h"
#include "core/runtime/mpi.h"
#include "core/runtime/time_format.h"
#include "core/transport/flows.h"
#include "core/transport/shard_sum.h"
#include "core/transport/weight_sync.h"
#include "rl/algo/batch.h"
#include "rl/algo/grpo.h"
#include "rl/api/sampling_client.h"
#include "rl/api/training_client.h"
#include "rl/api/transport_group.h"
#include "rl/model/weights.h"
#include "rl/optim/adamw.h"
#include "rl/roles/loop.h"
#include "rl/roles/rollout_wire.h"
#include "rl/roles/workload.h"

namespace mobula::rl {

namespace {

using nlohmann::ordered_json;

// The shard of item i of n when n items are cut into S shards (contiguous, as even as can be).
int shard_of(int i, int n, int S) {
  return static_cast<int>(int64_t(i) * S / n);
}

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

// One data-parallel optimizer step through the API: forward_backward on this trainer's shards,
// then optim_step unless the group trained no token at all (every group of samples had equal
// rewards). before_update runs right before the weights change (an async checkpoint still copying
// them) and returns the seconds it blocked.
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

// One RL step as trainer 0 saw it: the printed line, metrics.jsonl, summary.json's "steps".
struct StepMetrics {
  int64_t step = 0, lag = 0;
  double reward = 0, reward_std = 0, accuracy = 0, entropy = 0, kl = 0, clip = 0, loss = 0;
  double trained_tokens = 0, completion_tokens = 0, tokens_per_s = 0;
  double step_s = 0, sync_s = 0, sample_s = 0, reward_s = 0, transfer_s = 0, wait_s = 0, train_s = 0, checkpoint_s = 0;
  ordered_json json() const {
    return {{"step", step},
            {"reward", reward},
            {"reward_std", reward_std},
            {"accuracy", accuracy},
            {"entropy", entropy},
            {"kl", kl},
            {"clip_fraction", clip},
            {"loss", loss},
            {"trained_tokens", trained_tokens},
            {"completion_tokens", completion_tokens},
            {"tokens_per_s", tokens_per_s},
            {"lag", lag},
            {"step_s", step_s},
            {"sync_ms", sync_s * 1e3},
            {"sample_s", sample_s},
            {"reward_s", reward_s},
            {"transfer_s", transfer_s},
            {"wait_s", wait_s},
            {"train_s", train_s},
            {"checkpoint_s", checkpoint_s}};
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

// The job's configuration and what every role needs to know of it.
struct GrpoSetup {
  const WorkloadContext& ctx;
  const Task& task;
  CharTokenizer tok;
  GptConfig cfg;
  GrpoConfig algo;
  int T = 0, R = 0;
  bool trainer = false, rollout = false;
  size_t nparams = 0;
};

// Sends in flight of one rollout batch (kept across a step in the one-step-off mode).
struct Pending {
  std::vector<std::vector<std::byte>> refs;
  std::vector<int64_t> sizes;
  std::vector<RequestPtr> reqs;
};

// What step k left for after_step (trainers).
struct StepState {
  double t0 = 0, t_sync = 0, t_wait = 0, t_train = 0, blocked_by_save = 0;
  RolloutStats total;
  StepResult result;
};

class GrpoJob final : public TrainingWorkload {
 public:
  explicit GrpoJob(GrpoSetup s) : s_(std::move(s)), spec_(s_.ctx.spec), rl_(spec_.rl) {}

  // Transports and state, created in the same order on every member of each communicator.
  Status init() {
    const WorkloadContext& ctx = s_.ctx;
    const Placement& me = ctx.layout.at(ctx.rank);
    MPI_Comm link = ctx.comms.link("trainer", "rollout");
    auto wt = make_flow_transport(spec_, Flow::kWeights, MemoryPlace::kHost, link);
    if (!wt) return wt.status();
    wt_ = std::move(wt).value();
    rt_ = wt_.get();
    auto rname = resolve_flow(spec_, Flow::kRollouts, MemoryPlace::kHost);
    auto wname = resolve_flow(spec_, Flow::kWeights, MemoryPlace::kHost);
    if (!rname) return rname.status();
    if (!wname) return wname.status();
    if (*rname != *wname) {  // rollouts over their own backend; else the weights' transport
      auto r = make_flow_transport(spec_, Flow::kRollouts, MemoryPlace::kHost, link);
      if (!r) return r.status();
      rt_own_ = std::move(r).value();
      rt_ = rt_own_.get();
    }
    // Rollout batches travel as object refs (core/objects) over the same link communicator. Its
    // server threads sleep 200 us when idle: a batch is pulled once per step, and a fast-polling
    // thread slows sampling and training on busy cores.
    ObjectStoreOptions so;
    so.idle_sleep_us = 200;
    auto store = ObjectStore::create(link, so);
    if (!store) return store.status();
    objects_ = std::move(store).value();
    for (int i = 0; i < s_.T; ++i) groups_.trainers.push_back(i);  // link ranks: trainers first
    for (int i = 0; i < s_.R; ++i) groups_.rollouts.push_back(s_.T + i);
    lead_ = s_.trainer && me.role_rank == 0;
    if (s_.trainer) return init_trainer();
    const int my_prompts = (rl_.prompts_per_step + s_.R - 1) / s_.R;
    auto sc = SamplingClient::create(s_.cfg, std::max(1, my_prompts) * rl_.group_size);
    if (!sc) return sc.status();
    sampling_ = std::move(sc).value();
    weights_ = std::make_unique<WeightStore>(s_.nparams);
    return Status::ok();
  }

  // ---- checkpointed state (trainers) -------------------------------------------------------------
  io::CheckpointState checkpoint_state() override {
    io::CheckpointState c;
    (void)client_
        ->with_state([&](TrainingState& st) {
          c.buffers = {{"params", {st.model.params.data(), s_.nparams}},
                       {"adam_m", {st.optimizer.m.data(), s_.nparams}},
                       {"adam_v", {st.optimizer.v.data(), s_.nparams}}};
          c.optimizer_steps = st.optimizer.steps_done();
          return Status::ok();
        })
        .get();
    if (ref_model_) c.buffers.push_back({"ref_params", {ref_model_->params.data(), s_.nparams}});
    if (async()) c.buffers.push_back({"prev_params", std::span<float>(prev_params_)});
    c.scalar = base_acc_;
    return c;
  }
  Status after_load(const io::CheckpointState& c) override {
    base_acc_ = c.scalar;
    auto r = client_
                 ->with_state([&](TrainingState& st) {
                   st.optimizer.set_steps_done(static_cast<int>(c.optimizer_steps));
                   return Status::ok();
                 })
                 .get();
    return r ? Status::ok() : r.status();
  }

  // ---- start: the warm start (a fresh job), its accuracy, the KL reference --------------------------
  Status begin(int64_t start) override {
    start_ = start;
    t_start_ = monotonic_seconds();
    if (s_.trainer && start == 0) MOBULA_RETURN_IF_ERROR(warm_start());
    if (lead_ && start == 0) {
      auto a = evaluate(*client_, *eval_sampler_, s_.task, s_.tok, rl_.eval_problems, rl_.max_new_tokens);
      if (!a) return a.status();
      base_acc_ = *a;
      spdlog::info("warm start done in {:.1f} s: held-out greedy accuracy {:.3f} ({} problems)",
                   monotonic_seconds() - t_start_, base_acc_, rl_.eval_problems);
    }
    // Every trainer holds the warm-start accuracy: it goes into checkpoints (a collective attribute).
    if (s_.trainer) MOBULA_MPI(MPI_Bcast(&base_acc_, 1, MPI_DOUBLE, 0, s_.ctx.comms.role()));
    // The KL reference is the policy RL starts from; a resumed job has it from the checkpoint.
    if (ref_model_ && start == 0) {
      auto copied = client_
                        ->with_state([&](TrainingState& st) {
                          Kokkos::deep_copy(ref_model_->params, st.model.params);
                          return Status::ok();
                        })
                        .get();
      if (!copied) return copied.status();
    }
    t_rl_ = monotonic_seconds();
    return Status::ok();
  }

  // ---- step k ----------------------------------------------------------------------------------
  Status step(int64_t k, Lifecycle& life) override {
    cur_ = StepState{};
    cur_.t0 = monotonic_seconds();
    life.beat("weight sync", k);
    MOBULA_RETURN_IF_ERROR(sync_at_step_start(k));
    cur_.t_sync = monotonic_seconds() - cur_.t0;
    if (s_.rollout) {
      life.beat("sampling", k);
      return rollout_step(k);
    }
    life.beat("waiting for rollouts", k);
    std::vector<Datum> batch;
    MOBULA_RETURN_IF_ERROR(receive_batch(k, &batch));
    life.beat("training", k);
    return train(std::move(batch), life);
  }

  Status after_step(int64_t k, double checkpoint_s) override {
    if (!s_.trainer) return Status::ok();
    // The trainers now hold v_(k+1). One-step-off: ship it now; batch k+2 is the first to use it.
    double t_sync_after = 0;
    if (async() && k + 2 < spec_.steps) {
      const double ta = monotonic_seconds();
      MOBULA_RETURN_IF_ERROR(sync_version(k + 1));
      t_sync_after = monotonic_seconds() - ta;
    }
    // Lag between the policy being trained (v_k) and the one that sampled the batch.
    const int64_t lag = k - static_cast<int64_t>(cur_.total.version);
    if (lag > rl_.max_staleness)
      return Status::external("grpo: batch " + std::to_string(k) + " was sampled " + std::to_string(lag) +
                              " versions behind, over rl.max_staleness " + std::to_string(rl_.max_staleness));
    max_lag_ = std::max(max_lag_, lag);
    if (lead_) report_step(k, lag, t_sync_after, checkpoint_s);
    return Status::ok();
  }

  // Stopped at boundary k. One-step-off: before boundary k the trainers shipped v_(k-1) and v_k,
  // which a rollout takes at steps k and k+1; take them now, or the trainers' sends never end.
  Status drain(int64_t k) override {
    Status st = Status::ok();
    if (s_.rollout && async() && k >= 2) st = sync_version(k - 1);
    if (s_.rollout && async() && st.is_ok() && k >= 1 && k + 1 < spec_.steps) st = sync_version(k);
    if (pending_ && st.is_ok()) st = wait_all(pending_->reqs);
    return st;
  }

  Status finish(int64_t start) override {
    if (pending_) MOBULA_RETURN_IF_ERROR(wait_all(pending_->reqs));
    if (!lead_) return Status::ok();
    if (s_.ctx.watchdog) s_.ctx.watchdog->beat("evaluation", spec_.steps);
    auto a = evaluate(*client_, *eval_sampler_, s_.task, s_.tok, rl_.eval_problems, rl_.max_new_tokens);
    if (!a) return a.status();
    std::string hash;
    auto saved = client_
                     ->with_state([&](TrainingState& st) {
                       hash = fmt::format("{:016x}", params_fnv1a(st.model.params.data(), s_.nparams));
                       // The trained policy (docs/formats/safetensors.md); trainers hold identical replicas.
                       return save_weights(spec_.workdir + "/policy.safetensors", s_.cfg, st.model.params);
                     })
                     .get();
    if (!saved) return saved.status();
    MOBULA_RETURN_IF_ERROR(write_summary(start, *a, hash));
    spdlog::info("wrote {}/summary.json", spec_.workdir);
    return Status::ok();
  }

 private:
  bool async() const { return rl_.max_staleness > 0; }

  Status init_trainer() {
    const WorkloadContext& ctx = s_.ctx;
    auto g = make_flow_transport(spec_, Flow::kGradients, MemoryPlace::kHost, ctx.comms.role());
    if (!g) return g.status();
    gt_ = std::move(g).value();
    group_ = std::make_unique<TransportGroup>(*gt_);
    sink_ = std::make_unique<RolloutSink>(*wt_, groups_);
    ClientOptions co;
    co.model = s_.cfg;
    co.seed = static_cast<uint64_t>(spec_.seed);  // same seed on every trainer: identical replicas
    co.max_batch = spec_.model.microbatch;
    co.shards = spec_.shards;
    auto c = TrainingClient::create_spmd(co, *group_, sink_.get());
    if (!c) return c.status();
    client_ = std::move(c).value();
    if (rl_.kl_coef > 0) {  // the frozen reference policy of the KL penalty
      auto m = Gpt<>::create(s_.cfg, spec_.model.microbatch);
      if (!m) return m.status();
      ref_model_ = std::make_unique<Gpt<>>(std::move(m).value());
    }
    // One-step-off: batch k is sampled with v_(k-1), so a checkpoint at boundary k carries
    // v_(k-1) too (trainers copy the weights before each update; cheap next to the update).
    if (async()) prev_params_.assign(s_.nparams, 0.f);
    if (lead_) {
      auto sm = Sampler<>::create(s_.cfg, std::min(128, rl_.eval_problems), s_.cfg.max_seq);
      if (!sm) return sm.status();
      eval_sampler_ = std::make_unique<Sampler<>>(std::move(sm).value());
    }
    return Status::ok();
  }

  // Cross-entropy on noisy-labeler data, data-parallel over the same shards as RL.
  Status warm_start() {
    const int B = rl_.warm_start_batch;
    const ShardRange mine = shards_of(s_.ctx.layout.at(s_.ctx.rank).role_rank, s_.T, spec_.shards);
    for (int s = 0; s < rl_.warm_start_steps; ++s) {
      if (s_.ctx.watchdog) s_.ctx.watchdog->beat("warm start", s);
      if (s_.ctx.metrics) s_.ctx.metrics->tick();
      std::vector<Datum> batch;
      for (int i = 0; i < B; ++i) {
        const int shard = shard_of(i, B, spec_.shards);
        if (shard < mine.first || shard >= mine.end) continue;
        auto d =
            sft_datum(s_.tok, s_.task.warm_start_example(uint64_t(spec_.seed), uint64_t(s) * uint64_t(B) + uint64_t(i),
                                                         rl_.warm_start_noise));
        if (!d) return d.status();
        d->shard = shard;
        batch.push_back(std::move(d).value());
      }
      auto st = train_step(*client_, std::move(batch), {}, static_cast<float>(rl_.warm_start_lr));
      if (!st) return st.status();
      if (lead_ && (s + 1) % 100 == 0)
        spdlog::info("warm start {}/{}: loss {:.4f}", s + 1, rl_.warm_start_steps, st->loss);
    }
    return Status::ok();
  }

  // Versions: v_j = the weights after j optimizer steps. Synchronous (max_staleness 0): batch k is
  // sampled with v_k, synced at the start of step k. One-step-off (max_staleness 1): batch k is
  // sampled with v_max(0,k-1), so rollouts sample batch k+1 while trainers train on batch k; the
  // trainers sync v_(k+1) right after training batch k (when batch k+2 will need it) and the
  // rollouts receive it at the start of step k+2. Rollout sends stay in flight across one step so
  // the two orders never wait on each other.
  Status sync_version(int64_t v) {
    if (s_.trainer) {  // the API's save_weights_for_sampler publishes version v to the rollout group
      auto r = client_->save_weights_for_sampler(std::to_string(v)).get();
      return r ? Status::ok() : r.status();
    }
    return sync_weights(*wt_, groups_, {}, weights_.get(), v);
  }

  Status sync_at_step_start(int64_t k) {
    if (!async() || (k == start_ && start_ == 0)) MOBULA_RETURN_IF_ERROR(sync_version(k));
    if (async() && k == start_ && start_ > 0) {
      // Resumed one-step-off: batch k needs v_(k-1) (from the checkpoint); the trainers also ship
      // v_k now, as they did after training step k-1, for the rollouts' step k+1.
      if (s_.trainer) {
        MOBULA_RETURN_IF_ERROR(sink_->publish(prev_params_, std::to_string(k - 1)));
        if (k + 1 < spec_.steps) MOBULA_RETURN_IF_ERROR(sync_version(k));
      } else {
        MOBULA_RETURN_IF_ERROR(sync_version(k - 1));
      }
    }
    if (async() && s_.rollout && k >= 2 && k > start_) MOBULA_RETURN_IF_ERROR(sync_version(k - 1));
    return Status::ok();
  }

  static int64_t tag_base(int64_t k) { return 1000 + 2 * (k % 10000); }

  // Rollouts: this rank's prompts of step k through grpo_rollouts, each trainer's shards' records
  // left in the object store, a small ref sent to it (size + bytes, eager); the trainer pulls the
  // part from the store's server thread, which answers while this thread samples the next batch.
  Status rollout_step(int64_t k) {
    const int expect = static_cast<int>(async() ? std::max<int64_t>(0, k - 1) : k);
    const auto w = weights_->current();
    if (w->version != expect)
      return Status::external("grpo: rollout holds weights version " + std::to_string(w->version) + ", expected " +
                              std::to_string(expect));
    if (sampling_->version() != w->version) MOBULA_RETURN_IF_ERROR(sampling_->set_weights(w->params, w->version));
    const Placement& me = s_.ctx.layout.at(s_.ctx.rank);
    std::vector<int> ids;
    for (int p = me.role_rank; p < rl_.prompts_per_step; p += s_.R) ids.push_back(p);
    auto ro = grpo_rollouts(
        [&](const std::vector<std::vector<int>>& prompts, const SamplingParams& sp) {
          std::vector<uint64_t> seeds;
          for (size_t i = 0; i < prompts.size(); ++i)
            for (int g = 0; g < rl_.group_size; ++g)
              seeds.push_back(grpo_sample_seed(uint64_t(spec_.seed), k, ids[i], g));
          return sampling_->sample(prompts, rl_.group_size, sp, seeds).get();
        },
        s_.task, s_.tok, s_.algo, k, ids);
    if (!ro) return ro.status();
    ro->stats.version = static_cast<double>(w->version);
    auto next = std::make_unique<Pending>();
    next->refs.resize(size_t(s_.T));
    next->sizes.resize(size_t(s_.T));
    for (int t = 0; t < s_.T; ++t) {
      std::vector<const RolloutRecord*> part;
      for (const auto& r : ro->records)
        if (owner_of_shard(shard_of(r.prompt, rl_.prompts_per_step, spec_.shards), s_.T, spec_.shards) == t)
          part.push_back(&r);
      std::vector<uint8_t> bytes = encode_rollouts(ro->stats, part);
      const auto n = static_cast<int64_t>(bytes.size());
      auto ref = objects_->put({Tensor::from_vector(std::move(bytes), {n})}, /*holders=*/1);
      if (!ref) return ref.status();
      next->refs[size_t(t)] = ref->serialize();
      next->sizes[size_t(t)] = static_cast<int64_t>(next->refs[size_t(t)].size());
      Options o;
      o.tag = int(tag_base(k));
      auto a = rt_->isend(host_buffer(&next->sizes[size_t(t)], 1), t, o);
      if (!a) return a.status();
      next->reqs.push_back(std::move(a).value());
      o.tag = int(tag_base(k) + 1);
      auto b = rt_->isend({next->refs[size_t(t)].data(), next->refs[size_t(t)].size(), DType::kU8, MemoryPlace::kHost},
                          t, o);
      if (!b) return b.status();
      next->reqs.push_back(std::move(b).value());
    }
    if (pending_) MOBULA_RETURN_IF_ERROR(wait_all(pending_->reqs));  // the previous step's batch
    pending_ = std::move(next);
    if (!async()) {
      MOBULA_RETURN_IF_ERROR(wait_all(pending_->reqs));
      pending_.reset();
    }
    return Status::ok();
  }

  // Trainers: every rollout's part of step k, in (prompt, sample) order, as datums of their shards.
  Status receive_batch(int64_t k, std::vector<Datum>* batch) {
    std::vector<RolloutRecord> recs;
    const double tx0 = monotonic_seconds();
    for (int r = 0; r < s_.R; ++r) {
      int64_t size = 0;
      Options o;
      o.tag = int(tag_base(k));
      MOBULA_RETURN_IF_ERROR(rt_->recv(host_buffer(&size, 1), s_.T + r, o));
      if (size < 0 || size > (int64_t{1} << 20)) return Status::external("grpo: bad rollout ref size");
      std::vector<std::byte> ref_bytes(static_cast<size_t>(size));
      o.tag = int(tag_base(k) + 1);
      MOBULA_RETURN_IF_ERROR(
          rt_->recv({ref_bytes.data(), ref_bytes.size(), DType::kU8, MemoryPlace::kHost}, s_.T + r, o));
      auto ref = ObjectRef::parse(ref_bytes);
      if (!ref) return ref.status();
      if (ref->owner != s_.T + r || ref->tensors.size() != 1)
        return Status::external("grpo: rollout " + std::to_string(r) + " sent a ref that is not its batch");
      std::vector<uint8_t> bytes(ref->bytes());
      const Buffer dst{bytes.data(), bytes.size(), DType::kU8, MemoryPlace::kHost};
      MOBULA_RETURN_IF_ERROR(objects_->get_into(*ref, std::span<const Buffer>(&dst, 1)));
      MOBULA_RETURN_IF_ERROR(objects_->release(*ref));
      RolloutStats st;
      MOBULA_RETURN_IF_ERROR(decode_rollouts(bytes, &st, &recs));
      cur_.total.add(st);
    }
    // Waiting for and receiving the batch, less the rollouts' own sampling and reward time.
    cur_.t_wait = monotonic_seconds() - tx0;
    std::sort(recs.begin(), recs.end(), [](const RolloutRecord& a, const RolloutRecord& b) {
      return a.prompt != b.prompt ? a.prompt < b.prompt : a.sample < b.sample;
    });
    for (const auto& r : recs) {
      batch->push_back(grpo_datum(r));
      batch->back().shard = shard_of(r.prompt, rl_.prompts_per_step, spec_.shards);
    }
    return Status::ok();
  }

  Status train(std::vector<Datum> batch, Lifecycle& life) {
    const double tt0 = monotonic_seconds();
    if (async()) {  // v_k, for a checkpoint at boundary k+1
      // prev_params is part of a staged checkpoint: its copy must be done before it changes.
      cur_.blocked_by_save = life.wait_staged();
      auto copied = client_
                        ->with_state([&](TrainingState& ws) {
                          std::memcpy(prev_params_.data(), ws.model.params.data(), s_.nparams * sizeof(float));
                          return Status::ok();
                        })
                        .get();
      if (!copied) return copied.status();
    }
    if (ref_model_) MOBULA_RETURN_IF_ERROR(reference_logprobs(batch));
    auto st = train_step(*client_, std::move(batch), grpo_loss(s_.algo), static_cast<float>(rl_.lr),
                         [&] { return life.wait_staged(); });
    if (!st) return st.status();
    cur_.result = *st;
    cur_.t_train = monotonic_seconds() - tt0;
    return Status::ok();
  }

  // Log-probs under the frozen reference, shard by shard (a row's results may depend on its
  // microbatch, and a shard's microbatches are the same whichever trainer holds it).
  Status reference_logprobs(std::vector<Datum>& batch) {
    for (size_t i = 0; i < batch.size();) {
      size_t j = i;
      while (j < batch.size() && batch[j].shard == batch[i].shard) ++j;
      auto lr = forward_batch(*ref_model_, std::span<const Datum>(batch).subspan(i, j - i));
      if (!lr) return lr.status();
      for (size_t d = i; d < j; ++d) batch[d].logprobs_ref = std::move((*lr)[d - i]);
      i = j;
    }
    return Status::ok();
  }

  void report_step(int64_t k, int64_t lag, double t_sync_after, double checkpoint_s) {
    const RolloutStats& total = cur_.total;
    const StepResult& st = cur_.result;
    StepMetrics m;
    m.step = k;
    m.lag = lag;
    const double ns = std::max(1.0, total.samples);
    m.reward = total.reward_sum / ns;
    m.reward_std = std::sqrt(std::max(0.0, total.reward_sq_sum / ns - m.reward * m.reward));
    m.accuracy = total.correct / ns;
    m.entropy = total.neg_logp_sum / std::max(1.0, total.completion_tokens);
    m.kl = st.kl;
    m.clip = st.clip_fraction;
    m.loss = st.loss;
    m.trained_tokens = st.tokens;
    m.completion_tokens = total.completion_tokens;
    m.step_s = monotonic_seconds() - cur_.t0;
    m.tokens_per_s = total.completion_tokens / m.step_s;
    m.sync_s = cur_.t_sync + t_sync_after;
    m.sample_s = total.sample_seconds;
    m.reward_s = total.reward_seconds;
    m.wait_s = cur_.t_wait;
    // Synchronous: the trainers' wait covers the rollouts' sampling and rewards; the rest is the
    // transfer. Async: sampling overlaps training, the wait is all that is left of it.
    m.transfer_s = async() ? cur_.t_wait : std::max(0.0, cur_.t_wait - m.sample_s - m.reward_s);
    m.train_s = cur_.t_train;
    m.checkpoint_s = checkpoint_s + st.blocked_s + cur_.blocked_by_save;  // training blocked by checkpoints
    const std::string step_line = fmt::format(
        "step {:4d}  reward {:.3f}±{:.3f}  accuracy {:.3f}  tokens/s {:7.0f}  sync {:6.1f} ms  sample {:.3f} s  "
        "train {:.3f} s  wait {:.3f} s  kl {:.4f}  entropy {:.3f}  clip {:.3f}  lag {}",
        k, m.reward, m.reward_std, m.accuracy, m.tokens_per_s, m.sync_s * 1e3, m.sample_s, m.train_s, m.wait_s, m.kl,
        m.entropy, m.clip, lag);
    // On a terminal, `mobula run` draws a progress line instead (launch/commands.cc).
    if (console_progress()) {
      log_to_files(spdlog::level::info, step_line);
    } else {
      spdlog::info("{}", step_line);
    }
    history_.push_back(m);
    record_step(m);
    // The time series survives a crash and spans attempts (summary.json has the last one only).
    ordered_json line = {{"time", utc_now()}, {"attempt", env_long("MOBULA_STEP_ATTEMPT", 0)}};
    line.update(m.json());
    if (Status a = events::append_line(spec_.workdir, "metrics.jsonl", events::json_line(line), /*durable=*/false);
        !a.is_ok())
      spdlog::warn("metrics.jsonl: {}", a.message());
  }

  Status write_summary(int64_t start, double final_acc, const std::string& params_hash) {
    const double wall = monotonic_seconds() - t_start_, rl_wall = monotonic_seconds() - t_rl_;
    StepMetrics mean;
    double sum_tokens = 0, sum_step = 0;
    ordered_json steps = ordered_json::array();
    for (const auto& m : history_) {
      sum_tokens += m.completion_tokens, sum_step += m.step_s;
      mean.sync_s += m.sync_s, mean.sample_s += m.sample_s, mean.reward_s += m.reward_s;
      mean.transfer_s += m.transfer_s, mean.wait_s += m.wait_s, mean.train_s += m.train_s;
      mean.checkpoint_s += m.checkpoint_s, mean.step_s += m.step_s;
      steps.push_back(m.json());
    }
    const double n = std::max<double>(1, double(history_.size()));
    for (double* x : {&mean.sync_s, &mean.sample_s, &mean.reward_s, &mean.transfer_s, &mean.wait_s, &mean.train_s,
                      &mean.checkpoint_s, &mean.step_s})
      *x /= n;
    const double tps = sum_step > 0 ? sum_tokens / sum_step : 0.0;
    std::printf(
        "\n  %-52s %8.3f\n  %-52s %8.3f\n  %-52s %8.1f\n  %-52s %8.0f\n  %-52s %8.1f\n"
        "  %-52s %.4f / %.4f / %.4f / %.4f / %.4f\n\n",
        "held-out accuracy, warm start", base_acc_, "held-out accuracy, after GRPO", final_acc, "wall time (s)", wall,
        "completion tokens/s (RL)", tps, "mean step (ms)", mean.step_s * 1e3,
        "mean sync / sample / reward / transfer / train (s)", mean.sync_s, mean.sample_s, mean.reward_s,
        mean.transfer_s, mean.train_s);
    std::fflush(stdout);
    const ordered_json j = {{"job", spec_.name},
                            {"spec_hash", spec_.hash()},
                            {"task", rl_.task},
                            {"trainers", s_.T},
                            {"rollouts", s_.R},
                            {"shards", spec_.shards},
                            {"params", s_.nparams},
                            {"warm_start_steps", rl_.warm_start_steps},
                            {"rl_steps", spec_.steps},
                            {"first_step", start},
                            {"eval_problems", rl_.eval_problems},
                            {"max_staleness", rl_.max_staleness},
                            {"max_lag", max_lag_},
                            {"kl_coef", rl_.kl_coef},
                            {"base_accuracy", base_acc_},
                            {"final_accuracy", final_acc},
                            {"params_fnv1a", params_hash},
                            {"wall_s", wall},
                            {"rl_wall_s", rl_wall},
                            {"tokens_per_s", tps},
                            {"mean_step_s", mean.step_s},
                            {"mean_sync_ms", mean.sync_s * 1e3},
                            {"mean_sample_s", mean.sample_s},
                            {"mean_reward_s", mean.reward_s},
                            {"mean_transfer_s", mean.transfer_s},
                            {"mean_wait_s", mean.wait_s},
                            {"mean_train_s", mean.train_s},
                            {"mean_checkpoint_s", mean.checkpoint_s},
                            {"steps", steps}};
    return write_file_atomically(spec_.workdir + "/summary.json", j.dump(2) + "\n");
  }

  GrpoSetup s_;
  const JobSpec& spec_;
  const RlSpec& rl_;
  bool lead_ = false;
  std::unique_ptr<Transport> wt_, rt_own_, gt_;
  Transport* rt_ = nullptr;
  std::unique_ptr<ObjectStore> objects_;
  WeightGroups groups_;
  // Trainers: a SPMD TrainingClient each (rl/api); the steps are written on its calls.
  std::unique_ptr<TransportGroup> group_;
  std::unique_ptr<RolloutSink> sink_;
  std::unique_ptr<TrainingClient> client_;
  std::unique_ptr<Gpt<>> ref_model_;
  std::unique_ptr<Sampler<>> eval_sampler_;
  std::vector<float> prev_params_;
  // Rollouts: the API's sampling half and the weights they receive.
  std::unique_ptr<SamplingClient> sampling_;
  std::unique_ptr<WeightStore> weights_;
  std::unique_ptr<Pending> pending_;
  int64_t start_ = 0, max_lag_ = 0;
  double base_acc_ = 0, t_start_ = 0, t_rl_ = 0;
  StepState cur_;
  std::vector<StepMetrics> history_;  // trainer 0: this attempt's steps
};

}  // namespace

Status run_grpo(const WorkloadContext& ctx) {
  const JobSpec& spec = ctx.spec;
  const RlSpec& rl = spec.rl;
  const Placement& me = ctx.layout.at(ctx.rank);
  auto task = make_task(rl.task, rl.digits);
  if (!task) return Status::invalid_spec(spec.where("rl.task") + ": rl.task: " + task.status().message());
  GrpoSetup s{ctx, **task, CharTokenizer((*task)->alphabet()), {}, {}, 0, 0, false, false, 0};
  auto cfg = task_model_config(spec);  // the vocabulary of s.tok
  if (!cfg) return cfg.status();
  s.cfg = *cfg;
  const int prompt_len = static_cast<int>((*task)->example(0, 0).prompt.size());
  if (prompt_len + rl.max_new_tokens > s.cfg.max_seq)
    return Status::invalid_spec(spec.where("model.context") + ": model.context: " + std::to_string(s.cfg.max_seq) +
                                " is shorter than prompt (" + std::to_string(prompt_len) + ") + rl.max_new_tokens (" +
                                std::to_string(rl.max_new_tokens) + ")");
  s.T = static_cast<int>(ctx.layout.ranks_of("trainer").size());
  s.R = static_cast<int>(ctx.layout.ranks_of("rollout").size());
  // More shards than prompts leave some empty (zeros in the tree: still the same bits for any T);
  // more trainers than shards would leave a trainer without any.
  if (s.T > spec.shards)
    return Status::invalid_spec(spec.where("job.shards") + ": job.shards: " + std::to_string(spec.shards) +
                                " is less than the " + std::to_string(s.T) +
                                " trainers; every trainer needs a shard: raise job.shards to " + std::to_string(s.T) +
                                " or more");
  s.trainer = me.role == "trainer";
  s.rollout = me.role == "rollout";
  if (!s.trainer && !s.rollout) {
    spdlog::info("role {} has no part in workload grpo; idle", me.role);
    return Status::ok();
  }
  s.nparams = gpt_tensors(s.cfg).back().offset + gpt_tensors(s.cfg).back().size();
  s.algo.prompts_per_step = rl.prompts_per_step;
  s.algo.group_size = rl.group_size;
  s.algo.max_new_tokens = rl.max_new_tokens;
  s.algo.temperature = static_cast<float>(rl.temperature);
  s.algo.divide_by_std = rl.advantage_std;
  s.algo.clip_low = static_cast<float>(rl.clip);
  s.algo.clip_high = static_cast<float>(rl.clip_high);
  s.algo.kl_coef = static_cast<float>(rl.kl_coef);
  s.algo.seed = uint64_t(spec.seed) + 1;  // the prompt stream (sampling seeds: job.seed, grpo_sample_seed)
  GrpoJob job(std::move(s));
  MOBULA_RETURN_IF_ERROR(job.init());
  LoopOptions lo;
  lo.stop_comm = ctx.comms.link("trainer", "rollout");  // link rank 0 = trainer 0
  lo.state_comm = me.role == "trainer" ? ctx.comms.role() : MPI_COMM_NULL;
  lo.stop_delay = 1 + rl.max_staleness;
  return run_training(ctx, job, lo);
}

}  // namespace mobula::rl
