// `latent-pretrain` (docs/embedding.md): trainers train a denoiser on VAE latents of an image dataset.
//
// Embed ranks (latent.mode = jit) read encoded images from HDF5 shards, decode them (libpng /
// libjpeg), encode them with the convolutional VAE encoder (rl/encoder) and hand the latents to the
// trainers through the stage runtime (core/stage): pulled, credit-controlled, in a deterministic
// order. `inline` has every trainer do that work for its own batch; `offline` has every rank encode
// a share of the whole dataset into WORKDIR/latents.h5 first. The latent of a sample depends only on
// the sample (z = mean + sigma * eps with eps keyed by the sample id), so all three modes feed the
// trainers identical data and end with identical weights.
//
// The denoiser: an MLP (D+1 -> H, GELU, H -> D) that predicts the noise eps from z + s*eps and the
// noise level s (per step and sample, from a counter-based RNG); loss = mean squared error. Step j
// trains on item j of the stage, so the step in the checkpoint is also the data cursor.
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>
#include "core/health/health.h"
#include "core/metrics/events.h"
#include "core/metrics/registry.h"
#include "core/runtime/environment.h"
#include "core/runtime/files.h"
#include "core/runtime/hash.h"
#include "core/runtime/log.h"
#include "core/runtime/mpi.h"
#include "core/runtime/time_format.h"
#include "core/stage/stage.h"
#include "core/transport/flows.h"
#include "core/transport/shard_sum.h"
#include "io/checkpoint.h"
#include "io/hdf5.h"
#include "io/image_shards.h"
#include "io/synthetic_images.h"
#include "rl/encoder/image_latents.h"
#include "rl/encoder/vae_encoder.h"
#include "rl/model/kernels.h"
#include "rl/optim/adamw.h"
#include "rl/roles/loop.h"
#include "rl/roles/workload.h"

namespace mobula::rl {

namespace {

using Exec = Kokkos::DefaultExecutionSpace;
using View = Kokkos::View<float*, Exec::memory_space>;

double uniform(uint64_t key) {
  return double(splitmix64(key) >> 11) * (1.0 / 9007199254740992.0);
}
float normal(uint64_t key) {  // Box-Muller on two counter-based uniforms
  const double u1 = std::max(uniform(key), 1e-300), u2 = uniform(key ^ 0xa5a5a5a5a5a5a5a5ULL);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

// The denoiser MLP and its training step on one trainer's share of a step.
class Denoiser {
 public:
  Denoiser(int D, int H, int per, double lr, int steps) : D_(D), H_(H), per_(per) {
    const int I = D + 1;
    tensors_ = {{"w1", 0, {H, I}, true},
                {"b1", size_t(H) * size_t(I), {H}, false},
                {"w2", size_t(H) * size_t(I) + size_t(H), {D, H}, true},
                {"b2", size_t(H) * size_t(I) + size_t(H) + size_t(D) * size_t(H), {D}, false}};
    n_ = tensors_.back().offset + size_t(D);
    params = View("denoiser_params", n_);
    grads = View("denoiser_grads", n_);
    AdamWConfig c;
    c.lr = static_cast<float>(lr);
    c.warmup_steps = std::min(20, std::max(1, steps / 10));
    c.total_steps = steps;
    opt = std::make_unique<AdamW<Exec>>(c, tensors_, n_);
    in_ = View("in", size_t(per) * size_t(I));
    h_ = View("h", size_t(per) * size_t(H));
    a_ = View("a", size_t(per) * size_t(H));
    out_ = View("out", size_t(per) * size_t(D));
    dout_ = View("dout", size_t(per) * size_t(D));
    da_ = View("da", size_t(per) * size_t(H));
    dh_ = View("dh", size_t(per) * size_t(H));
  }
  size_t size() const { return n_; }

  void init(uint64_t seed) {
    auto h = Kokkos::create_mirror_view(params);
    for (size_t i = 0; i < n_; ++i) h(i) = 0.0f;
    for (const auto& t : tensors_) {
      if (t.shape.size() != 2) continue;
      const float sd = 1.0f / std::sqrt(float(t.shape[1]));
      for (size_t i = 0; i < t.size(); ++i) h(t.offset + i) = sd * normal(splitmix64(seed ^ (t.offset + i)));
    }
    Kokkos::deep_copy(params, h);
  }

  // Forward + backward on x (per, D): gradients (+= into grads, scaled for the global batch), and
  // the sum of squared errors (this rank's share of the loss).
  double step(const float* x, uint64_t seed, int64_t step_no, std::span<const uint64_t> ids, int global_batch) {
    const int I = D_ + 1;
    auto in = Kokkos::create_mirror_view(in_);
    std::vector<float> eps(size_t(per_) * size_t(D_));
    for (int s = 0; s < per_; ++s) {
      const uint64_t key = splitmix64(seed ^ splitmix64(uint64_t(step_no) * 0x100000001b3ULL + ids[size_t(s)]));
      const float sigma = 0.1f + 0.9f * static_cast<float>(uniform(key));
      for (int d = 0; d < D_; ++d) {
        const float e = normal(key + 1 + uint64_t(d));
        eps[size_t(s) * size_t(D_) + size_t(d)] = e;
        in(size_t(s) * size_t(I) + size_t(d)) = x[size_t(s) * size_t(D_) + size_t(d)] + sigma * e;
      }
      in(size_t(s) * size_t(I) + size_t(D_)) = sigma;
    }
    Kokkos::deep_copy(in_, in);
    const float* w1 = params.data() + tensors_[0].offset;
    const float* b1 = params.data() + tensors_[1].offset;
    const float* w2 = params.data() + tensors_[2].offset;
    const float* b2 = params.data() + tensors_[3].offset;
    kernels::matmul_forward<Exec>(h_.data(), in_.data(), w1, b1, per_, I, H_);
    kernels::gelu_forward<Exec>(a_.data(), h_.data(), long(per_) * H_);
    kernels::matmul_forward<Exec>(out_.data(), a_.data(), w2, b2, per_, H_, D_);
    auto out = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), out_);
    auto dout = Kokkos::create_mirror_view(dout_);
    double sse = 0;
    const float scale = 2.0f / float(size_t(global_batch) * size_t(D_));
    for (size_t i = 0; i < eps.size(); ++i) {
      const float r = out(i) - eps[i];
      sse += double(r) * double(r);
      dout(i) = scale * r;
    }
    Kokkos::deep_copy(dout_, dout);
    float* dw1 = grads.data() + tensors_[0].offset;
    float* db1 = grads.data() + tensors_[1].offset;
    float* dw2 = grads.data() + tensors_[2].offset;
    float* db2 = grads.data() + tensors_[3].offset;
    kernels::matmul_backward<Exec>(da_.data(), dw2, db2, dout_.data(), a_.data(), w2, per_, H_, D_);
    kernels::gelu_backward<Exec>(dh_.data(), h_.data(), da_.data(), long(per_) * H_);
    kernels::matmul_backward<Exec>(nullptr, dw1, db1, dh_.data(), in_.data(), w1, per_, I, H_);
    Kokkos::fence();
    return sse;
  }

  View params, grads;
  std::unique_ptr<AdamW<Exec>> opt;

 private:
  int D_, H_, per_;
  size_t n_ = 0;
  std::vector<TensorInfo> tensors_;
  View in_, h_, a_, out_, dout_, da_, dh_;
};

// The trainers' side of latent-pretrain as a workload of the shared lifecycle. Step j trains on
// item j of the stage (so the step in the checkpoint is also the data cursor). The step's batch is
// cut into job.shards shards of batch / shards samples; a trainer computes the gradient of each of
// its shards on its own and sum_shards adds them in one fixed tree, so the weights do not depend
// on the trainer count (any divisor of job.shards).
class LatentTrainer final : public TrainingWorkload {
 public:
  LatentTrainer(const WorkloadContext& ctx, ImageLatents& maker, std::vector<float> table, stage::StageOptions so,
                MPI_Comm link, std::vector<int> consumers, std::vector<int> producers, Transport& gradients)
      : ctx_(ctx),
        spec_(ctx.spec),
        L_(ctx.spec.latent),
        maker_(maker),
        table_(std::move(table)),
        so_(so),
        link_(link),
        consumers_(std::move(consumers)),
        producers_(std::move(producers)),
        gt_(gradients),
        D_(maker.latent_floats()),
        T_(gradients.size()),
        per_(L_.batch / T_),
        rows_(L_.batch / spec_.shards),
        mine_(shards_of(gradients.rank(), T_, spec_.shards)),
        lead_(gradients.rank() == 0),
        net_(D_, L_.hidden, rows_, L_.lr, static_cast<int>(spec_.steps)),
        x_(size_t(per_) * size_t(D_)),
        ids_(size_t(per_)),
        grads_(net_.size()) {
    net_.init(uint64_t(spec_.seed) ^ 0x64656e6f697365ULL);
    host_params_ = Kokkos::create_mirror_view(net_.params);
    host_m_ = Kokkos::create_mirror_view(net_.opt->m);
    host_v_ = Kokkos::create_mirror_view(net_.opt->v);
  }

  io::CheckpointState checkpoint_state() override {
    io::CheckpointState c;
    c.optimizer_steps = net_.opt->steps_done();
    c.buffers = {{"params", {host_params_.data(), net_.size()}},
                 {"adam_m", {host_m_.data(), net_.size()}},
                 {"adam_v", {host_v_.data(), net_.size()}}};
    return c;
  }
  Status before_save() override {
    Kokkos::deep_copy(host_params_, net_.params);
    Kokkos::deep_copy(host_m_, net_.opt->m);
    Kokkos::deep_copy(host_v_, net_.opt->v);
    return Status::ok();
  }
  Status after_load(const io::CheckpointState& c) override {
    Kokkos::deep_copy(net_.params, host_params_);
    Kokkos::deep_copy(net_.opt->m, host_m_);
    Kokkos::deep_copy(net_.opt->v, host_v_);
    net_.opt->set_steps_done(static_cast<int>(c.optimizer_steps));
    return Status::ok();
  }

  Status begin(int64_t start) override {
    if (L_.mode == "jit") {
      auto c = stage::Consumer::create(link_, consumers_, producers_, so_, start, spec_.steps);
      if (!c) return c.status();
      consumer_ = std::move(c).value();
    }
    t_run_ = monotonic_seconds();
    return Status::ok();
  }

  Status step(int64_t j, Lifecycle& life) override {
    life.beat("step", j);
    MOBULA_RETURN_IF_ERROR(load_batch(j));
    const double t1 = monotonic_seconds();
    // The gradient and the squared errors of each of this trainer's shards, summed in the tree.
    std::vector<double> sse(size_t(mine_.size()));
    MOBULA_RETURN_IF_ERROR(sum_shards<float>(
        gt_, spec_.shards,
        [&](int s, std::span<float> out) {
          const size_t at = size_t(s - mine_.first) * size_t(rows_);
          Kokkos::deep_copy(net_.grads, 0.0f);
          sse[size_t(s - mine_.first)] =
              net_.step(x_.data() + at * size_t(D_), uint64_t(spec_.seed), j,
                        std::span<const uint64_t>(ids_).subspan(at, size_t(rows_)), L_.batch);
          auto g = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), net_.grads);
          std::copy_n(g.data(), out.size(), out.begin());
          return Status::ok();
        },
        std::span<float>(grads_), {}, "gradients"));
    double total_sse = 0;
    MOBULA_RETURN_IF_ERROR(sum_shards<double>(
        gt_, spec_.shards,
        [&](int s, std::span<double> out) {
          out[0] = sse[size_t(s - mine_.first)];
          return Status::ok();
        },
        std::span<double>(&total_sse, 1)));
    life.wait_staged();  // an asynchronous checkpoint may still be copying the parameters
    auto g = Kokkos::create_mirror_view(net_.grads);
    std::copy(grads_.begin(), grads_.end(), g.data());
    Kokkos::deep_copy(net_.grads, g);
    net_.opt->step(net_.params, net_.grads);
    t_train_ += monotonic_seconds() - t1;
    loss_ = total_sse / (double(L_.batch) * double(D_));
    if (losses_.empty()) first_loss_ = loss_;
    losses_.push_back(loss_);
    return Status::ok();
  }

  Status after_step(int64_t j, double) override {
    static auto& m_loss = metrics::registry().gauge("mobula_latent_loss", "Denoising loss of the last step");
    static auto& m_steps = metrics::registry().counter("mobula_steps_total", "Training steps");
    m_loss.set(loss_);
    m_steps.inc();
    if (lead_ && ((j + 1) % 25 == 0 || j + 1 == spec_.steps))
      spdlog::info("step {:4d}  loss {:.4f}  wait {:.1f} ms/step  ({} mode)", j, loss_,
                   1e3 * t_wait_ / double(losses_.size()), L_.mode);
    return Status::ok();
  }

  // Preempted: end the stage (the embed ranks stop too) before the checkpoint.
  Status drain(int64_t) override { return consumer_ ? consumer_->finish() : Status::ok(); }

  Status finish(int64_t start) override {
    const double wall = monotonic_seconds() - t_run_;
    if (consumer_) MOBULA_RETURN_IF_ERROR(consumer_->finish());
    if (lead_) MOBULA_RETURN_IF_ERROR(write_summary(start, wall));
    return Status::ok();
  }

 private:
  // This trainer's share of step j (its shards' samples, in order) into ids_ and x_.
  Status load_batch(int64_t j) {
    const double t0 = monotonic_seconds();
    if (L_.mode == "jit") {
      auto item = consumer_->next();
      if (!item) return item.status();
      std::copy(item->samples.begin(), item->samples.end(), ids_.begin());
      std::copy(item->data.begin(), item->data.end(), x_.begin());
      t_wait_ += monotonic_seconds() - t0;
      static auto& m_stall =
          metrics::registry().counter("mobula_stage_wait_seconds_total", "Time trainers waited for data");
      m_stall.inc(monotonic_seconds() - t0);
      return Status::ok();
    }
    const uint64_t N = maker_.dataset_size();
    const uint64_t first = uint64_t(j) * uint64_t(L_.batch) + uint64_t(mine_.first) * uint64_t(rows_);
    for (int s = 0; s < per_; ++s) ids_[size_t(s)] = stage::sample_at(first + uint64_t(s), N, uint64_t(spec_.seed));
    if (L_.mode == "inline") {
      MOBULA_RETURN_IF_ERROR(maker_.make(ids_, x_.data()));
      t_encode_ += monotonic_seconds() - t0;
      return Status::ok();
    }
    for (int s = 0; s < per_; ++s)
      std::copy_n(table_.data() + ids_[size_t(s)] * uint64_t(D_), D_, x_.data() + size_t(s) * size_t(D_));
    return Status::ok();
  }

  // Every trainer's parameters are identical; their checksum proves it across modes, launchers,
  // trainer counts and restarts in the tests.
  std::string params_hash() {
    Kokkos::deep_copy(host_params_, net_.params);
    return fmt::format("{:016x}", params_fnv1a(host_params_.data(), net_.size()));
  }

  Status write_summary(int64_t start, double wall) {
    const int64_t steps = spec_.steps - start;
    auto mean_of = [&](size_t from, size_t to) {
      double s = 0;
      for (size_t i = from; i < to; ++i) s += losses_[i];
      return to > from ? s / double(to - from) : 0.0;
    };
    const size_t k = std::min<size_t>(10, losses_.size());
    const double early = mean_of(0, k), late = mean_of(losses_.size() - k, losses_.size());
    const double stall = wall > 0 ? t_wait_ / wall : 0;
    const double rate = steps > 0 && wall > 0 ? double(steps) * L_.batch / wall : 0.0;
    spdlog::info(
        "latent-pretrain ({}): loss {:.4f} -> {:.4f} (mean of first/last {} steps {:.4f} -> {:.4f}; predicting 0 "
        "scores 1)",
        L_.mode, first_loss_, loss_, k, early, late);
    spdlog::info(
        "{} steps in {:.2f} s ({:.1f} samples/s); stall {:.1f}% of the wall time, encode {:.2f} s, train {:.2f} s",
        steps, wall, rate, 100.0 * stall, t_encode_, t_train_);
    const nlohmann::ordered_json j = {{"job", spec_.name},      {"spec_hash", spec_.hash()},
                                      {"params", net_.size()},  {"mode", L_.mode},
                                      {"trainers", T_},         {"embed", ctx_.layout.ranks_of("embed").size()},
                                      {"shards", spec_.shards}, {"steps", spec_.steps},
                                      {"first_step", start},    {"batch", L_.batch},
                                      {"latent_floats", D_},    {"first_loss", first_loss_},
                                      {"final_loss", loss_},    {"early_loss", early},
                                      {"late_loss", late},      {"wall_s", wall},
                                      {"samples_per_s", rate},  {"stall_fraction", stall},
                                      {"wait_s", t_wait_},      {"encode_s", t_encode_},
                                      {"train_s", t_train_},    {"params_fnv1a", params_hash()}};
    return write_file_atomically(spec_.workdir + "/summary.json", j.dump(2) + "\n");
  }

  const WorkloadContext& ctx_;
  const JobSpec& spec_;
  const LatentSpec& L_;
  ImageLatents& maker_;
  std::vector<float> table_;  // offline: (N, D)
  stage::StageOptions so_;
  MPI_Comm link_;
  std::vector<int> consumers_, producers_;
  Transport& gt_;
  const int D_, T_, per_, rows_;  // latent floats, trainers, samples per trainer, per shard
  const ShardRange mine_;
  const bool lead_;
  Denoiser net_;
  Kokkos::View<float*>::HostMirror host_params_, host_m_, host_v_;
  std::unique_ptr<stage::Consumer> consumer_;
  std::vector<float> x_;
  std::vector<uint64_t> ids_;
  std::vector<float> grads_;
  std::vector<double> losses_;
  double first_loss_ = 0, loss_ = 0, t_wait_ = 0, t_encode_ = 0, t_train_ = 0, t_run_ = 0;
};

}  // namespace

Status run_latent_pretrain(const WorkloadContext& ctx) {
  const JobSpec& spec = ctx.spec;
  const LatentSpec& L = spec.latent;
  const Placement& me = ctx.layout.at(ctx.rank);
  const bool trainer = me.role == "trainer", embed = me.role == "embed";
  const auto trainer_ranks = ctx.layout.ranks_of("trainer");
  const int T = static_cast<int>(trainer_ranks.size());
  const int per = L.batch / T;
  if (L.batch % spec.shards != 0 || spec.shards % T != 0)
    return Status::invalid_spec(spec.where("job.shards") + ": job.shards: " + std::to_string(spec.shards) +
                                " must divide latent.batch (" + std::to_string(L.batch) +
                                ") and be a multiple of the " + std::to_string(T) +
                                " trainer(s), so every trainer holds whole shards of its item");
  auto beat = [&](const char* phase, int64_t step) {
    if (ctx.watchdog) ctx.watchdog->beat(phase, step);
    if (ctx.metrics) ctx.metrics->tick();
  };
  MOBULA_RETURN_IF_ERROR(ensure_synthetic_dataset(ctx, /*duplicate_percent=*/0));
  auto maker_r = ImageLatents::create(spec);
  if (!maker_r) return maker_r.status();
  ImageLatents maker = std::move(maker_r).value();
  const int D = maker.latent_floats();
  const uint64_t N = maker.dataset_size();
  if (embed && me.role_rank == 0) maker.slow_down(static_cast<int>(env_long("MOBULA_FAULT_EMBED_DELAY_MS", 0)));

  // ---- offline: every rank encodes a contiguous share of the dataset into latents.h5 ----------
  std::vector<float> table;  // offline: (N, D) on trainers
  if (L.mode == "offline") {
    const double t0 = monotonic_seconds();
    int world = 1;
    MOBULA_MPI(MPI_Comm_size(ctx.world, &world));
    const uint64_t lo = N * uint64_t(ctx.rank) / uint64_t(world), hi = N * uint64_t(ctx.rank + 1) / uint64_t(world);
    std::vector<float> mine((hi - lo) * uint64_t(D));
    std::vector<uint64_t> ids;
    for (uint64_t i = lo; i < hi; i += uint64_t(per)) {
      ids.clear();
      for (uint64_t k = i; k < std::min(hi, i + uint64_t(per)); ++k) ids.push_back(k);
      MOBULA_RETURN_IF_ERROR(maker.make(ids, mine.data() + (i - lo) * uint64_t(D)));
      beat("offline encode", 0);
    }
    const std::string path = spec.workdir + "/latents.h5";
    {
      auto f = io::H5File::create(path, ctx.world);
      if (!f) return f.status();
      MOBULA_RETURN_IF_ERROR(f->write_slices("latents", mine, ctx.world));
      MOBULA_RETURN_IF_ERROR(f->set_attr("latent_floats", std::to_string(D)));
      MOBULA_RETURN_IF_ERROR(f->close());
    }
    if (trainer) {
      auto f = io::H5File::open(path, MPI_COMM_SELF);
      if (!f) return f.status();
      table.resize(N * uint64_t(D));
      MOBULA_RETURN_IF_ERROR(f->read_slices("latents", table, MPI_COMM_SELF));
    }
    if (ctx.rank == 0)
      spdlog::info("offline: encoded {} images into {} in {:.2f} s", N, path, monotonic_seconds() - t0);
    if (!trainer) return Status::ok();
  }

  stage::StageOptions so;
  so.dataset_size = N;
  so.seed = uint64_t(spec.seed);
  so.global_batch = L.batch;
  so.sample_floats = D;
  so.prefetch = L.prefetch;
  MPI_Comm link = L.mode == "jit" ? ctx.comms.link("trainer", "embed") : MPI_COMM_NULL;
  std::vector<int> consumers, producers;
  if (link != MPI_COMM_NULL) {  // ranks in the link communicator: ordered by world rank
    int lrank = 0, lsize = 0;
    MOBULA_MPI(MPI_Comm_rank(link, &lrank));
    MOBULA_MPI(MPI_Comm_size(link, &lsize));
    std::vector<int> roles(static_cast<size_t>(lsize));
    int mine = trainer ? 1 : 0;
    MOBULA_MPI(MPI_Allgather(&mine, 1, MPI_INT, roles.data(), 1, MPI_INT, link));
    for (int r = 0; r < lsize; ++r) (roles[size_t(r)] ? consumers : producers).push_back(r);
  }

  // ---- embed ranks: produce until the trainers are done -------------------------------------
  if (embed) {
    auto p = stage::Producer::create(link, consumers, producers, so);
    if (!p) return p.status();
    int64_t n = 0;
    // Fault injection (docs/testing.md): embed rank 0 dies after computing k items.
    const int64_t kill_after =
        me.role_rank == 0 && fault_attempt_matches() ? env_long("MOBULA_FAULT_KILL_EMBED_AFTER_ITEMS", -1) : -1;
    const Status st = (*p)->run([&](std::span<const uint64_t> ids, float* out) {
      beat("embed", n);
      if (n++ == kill_after) {
        events::emit(spec.workdir, "fault_injected", {{"kind", events::str("SIGKILL")}, {"items", events::num(n - 1)}},
                     ctx.rank);
        std::raise(SIGKILL);
      }
      return maker.make(ids, out);
    });
    const auto s = (*p)->stats();
    spdlog::info("embed: {} items, {:.2f} s encoding, {:.1f} samples/s while busy", s.items, s.busy_s,
                 s.busy_s > 0 ? double(s.items) * per / s.busy_s : 0.0);
    metrics::registry()
        .counter("mobula_embed_items_total", "Items (steps' shares) this embed rank computed")
        .inc(double(s.items));
    return st;
  }
  if (!trainer) return Status::ok();

  // ---- trainers: the shared lifecycle (rl/roles/loop.h) over LatentTrainer's steps --------------
  auto gt = make_flow_transport(spec, Flow::kGradients, MemoryPlace::kHost, ctx.comms.role());
  if (!gt) return gt.status();
  LatentTrainer w(ctx, maker, std::move(table), so, link, consumers, producers, **gt);
  LoopOptions lo;
  lo.stop_comm = ctx.comms.role();
  lo.state_comm = ctx.comms.role();
  return run_training(ctx, w, lo);
}

}  // namespace mobula::rl
