// The schema of a job spec: every key, its type, default and documentation.
// Adding a key here is all it takes to accept it; docs/spec.md must document it (tested).
#include "core/runtime/spec.h"

namespace mobula {

const std::vector<std::string>& known_roles() {
  static const std::vector<std::string> roles = {"trainer", "rollout", "embed"};
  return roles;
}

const std::vector<std::string>& spec_sections() {
  static const std::vector<std::string> s = {"job",   "roles",   "model", "rl",     "checkpoint", "transport", "slurm",
                                             "fault", "metrics", "data",  "latent", "curate",     "serve"};
  return s;
}

namespace {

KeyDef int_key(std::string path, int64_t def, int64_t min, int64_t max, std::string doc) {
  KeyDef k{std::move(path), ValueType::kInt, def, false, min, max, {}, std::move(doc)};
  return k;
}

KeyDef str_key(std::string path, std::string def, std::vector<std::string> choices, std::string doc) {
  KeyDef k{std::move(path), ValueType::kString, std::move(def),     false,
           INT64_MIN,       INT64_MAX,          std::move(choices), std::move(doc)};
  return k;
}

KeyDef bool_key(std::string path, bool def, std::string doc) {
  KeyDef k{std::move(path), ValueType::kBool, def, false, INT64_MIN, INT64_MAX, {}, std::move(doc)};
  return k;
}

KeyDef list_key(std::string path, std::string doc) {
  KeyDef k{std::move(path), ValueType::kStringList, std::vector<std::string>{}, false, INT64_MIN, INT64_MAX, {},
           std::move(doc)};
  return k;
}

KeyDef float_key(std::string path, double def, std::string doc) {
  KeyDef k{std::move(path), ValueType::kFloat, def, false, INT64_MIN, INT64_MAX, {}, std::move(doc)};
  return k;
}

std::vector<KeyDef> build_schema() {
  std::vector<KeyDef> s;
  KeyDef name = str_key("job.name", "", {}, "Job name; used in the work dir, logs and Slurm job name.");
  name.required = true;
  s.push_back(name);
  s.push_back(str_key("job.workdir", "runs/{name}", {},
                      "Directory for logs, events and checkpoints; `{name}` is replaced by job.name. "
                      "Relative paths are relative to the directory the job is started from."));
  s.push_back(int_key("job.seed", 0, 0, INT64_MAX, "Global seed; every rank derives its streams from it."));
  s.push_back(int_key("job.steps", 1, 0, 1'000'000'000, "Number of steps the workload runs."));
  s.push_back(int_key("job.threads", 1, 1, 256,
                      "Threads per rank for BLAS and Kokkos host kernels. The worker sets them itself before any "
                      "math, whatever OPENBLAS_NUM_THREADS or OMP_NUM_THREADS the launcher passed, so mpirun, "
                      "srun, sbatch and `mobula run` compute the same bits."));
  s.push_back(int_key("job.shards", 8, 1, 1 << 16,
                      "Shards of a step's global batch. Each shard's gradient is computed on its own and the "
                      "shards are summed in one fixed binary tree, so the weights are bitwise the same for any "
                      "trainer count up to this (grpo), or dividing it (latent-pretrain): a job can restart "
                      "on another number of trainers without changing its results."));
  s.push_back(str_key("job.workload", "layout-check", {"layout-check", "grpo", "latent-pretrain", "curate", "serve"},
                      "What the ranks run. `layout-check`: every role and link communicator is "
                      "exercised with collectives each step and verified against the layout. `grpo`: "
                      "supervised warm start, then GRPO with trainer and rollout roles (needs both). "
                      "`latent-pretrain`: trainers train a denoiser on VAE latents of an image dataset, "
                      "computed by embed ranks (latent.mode). `curate`: embed ranks decode and embed image "
                      "shards taken from a reliable task queue, trainer 0 serves the queue and writes the "
                      "near-duplicate-filtered dataset (docs/queue.md). `serve`: the multi-tenant training service "
                      "(LoRA adapters on one base, HTTP API, docs/serve.md) on one rank."));
  for (const auto& r : known_roles()) {
    s.push_back(int_key("roles." + r + ".ranks", 0, 0, 1 << 20,
                        "Number of " + r +
                            " ranks. Ranks are assigned in the order trainer, rollout, "
                            "embed (world ranks 0.. go to trainers)."));
    s.push_back(int_key("roles." + r + ".het_group", -1, -1, 63,
                        "Slurm heterogeneous-job component (srun --het-group) whose tasks become " + r +
                            " ranks; -1 = any. Only used when the job runs as a heterogeneous step."));
  }
  s.push_back(int_key("model.layers", 2, 1, 64, "Transformer blocks."));
  s.push_back(int_key("model.heads", 4, 1, 64, "Attention heads (d_model must be a multiple)."));
  s.push_back(int_key("model.d_model", 64, 8, 8192, "Width of the residual stream."));
  s.push_back(int_key("model.mlp_ratio", 4, 1, 16, "MLP hidden width = mlp_ratio * d_model."));
  s.push_back(int_key("model.context", 16, 4, 4096, "Context length (prompt + completion tokens)."));
  s.push_back(int_key("model.microbatch", 64, 1, 4096, "Rows per forward/backward microbatch on a trainer."));
  s.push_back(str_key("rl.task", "addition", {"addition", "reverse"}, "Verifiable task (rl/tasks)."));
  s.push_back(int_key("rl.digits", 2, 1, 6, "Operand digits of the task."));
  s.push_back(int_key("rl.warm_start_steps", 400, 0, 1'000'000,
                      "Supervised warm-start steps (cross-entropy through the same trainers) before RL."));
  s.push_back(int_key("rl.warm_start_batch", 64, 1, 1'000'000, "Sequences per warm-start step (all trainers)."));
  s.push_back(int_key("rl.warm_start_noise", 45, 0, 100,
                      "Percent of warm-start answers from a noisy labeler (wrong), so RL has something to fix."));
  s.push_back(int_key("rl.prompts_per_step", 16, 1, 1'000'000, "Prompts per RL step (split over rollout ranks)."));
  s.push_back(int_key("rl.group_size", 8, 1, 1024, "Completions per prompt (the GRPO group)."));
  s.push_back(int_key("rl.max_new_tokens", 5, 1, 4096, "Completion length limit."));
  s.push_back(int_key("rl.max_staleness", 0, 0, 1,
                      "0: synchronous (on-policy). 1: one-step-off async: rollouts sample batch k+1 with the "
                      "previous weights while trainers train on batch k (PPO's ratio corrects the lag)."));
  s.push_back(int_key("rl.eval_problems", 100, 1, 1'000'000, "Held-out problems for the greedy accuracy."));
  s.push_back(float_key("rl.lr", 3e-4, "RL learning rate (AdamW)."));
  s.push_back(float_key("rl.warm_start_lr", 3e-3, "Warm-start learning rate (AdamW)."));
  s.push_back(float_key("rl.clip", 0.2, "PPO clip range: ratios outside [1 - clip, 1 + clip_high] stop the gradient."));
  s.push_back(float_key("rl.clip_high", 0.28, "Upper PPO clip range (DAPO's clip-higher)."));
  s.push_back(float_key("rl.temperature", 1.0, "Sampling temperature of the rollouts."));
  s.push_back(float_key("rl.kl_coef", 0.0,
                        "Weight of the k3 KL penalty to the frozen reference policy (the weights RL starts "
                        "from); 0 turns it off."));
  s.push_back(bool_key("rl.advantage_std", true,
                       "Divide group-centred rewards by the group's std (GRPO); false: Dr. GRPO's plain centring."));
  const std::vector<std::string> transports = {"auto", "mpi", "ucx", "nccl"};
  s.push_back(
      str_key("transport.weights", "auto", transports, "Transport for weight sync from trainers to rollout ranks."));
  s.push_back(
      str_key("transport.rollouts", "auto", transports, "Transport for rollouts from rollout ranks to trainers."));
  s.push_back(str_key("transport.gradients", "auto", transports, "Transport for gradient reduction among trainers."));

  s.push_back(int_key("checkpoint.every", 0, 0, 1'000'000,
                      "Save a checkpoint every N RL steps (and resume from the newest on start); 0 = never save. "
                      "Existing checkpoints are always resumed from."));
  s.push_back(int_key("checkpoint.keep", 3, 1, 1'000'000, "Checkpoints kept; older ones are deleted after a save."));
  s.push_back(bool_key("checkpoint.async", true,
                       "Stage a copy and write it in the background (training blocks only for the copy)."));
  s.push_back(str_key("checkpoint.dir", "checkpoints", {},
                      "Checkpoint directory; relative paths are relative to job.workdir."));

  s.push_back(int_key("fault.max_restarts", 2, 0, 100,
                      "Relaunch a failed job up to N times (`mobula run`: mpiexec again; `mobula submit`: srun "
                      "again inside the allocation); it resumes from its newest checkpoint. Exit code 2 (bad input) "
                      "is never retried."));
  s.push_back(int_key("fault.max_requeues", 3, 0, 1000,
                      "Slurm: a preempted job (exit 3 after its checkpoint: pre-timeout signal, SIGTERM) requeues "
                      "itself (scontrol requeue) while SLURM_RESTART_COUNT is below this (and slurm.requeue)."));
  s.push_back(int_key("fault.hang_timeout_s", 600, 0, 86400,
                      "A rank without progress for this long ends the job (exit 4) so the restart logic takes "
                      "over; 0 disables the watchdog."));
  s.push_back(int_key("fault.abort_grace_s", 10, 0, 3600,
                      "A rank whose workload failed waits this long for every rank to agree on the outcome, then "
                      "aborts the job (MPI_Abort): peers blocked in a collective with it end at once, not after "
                      "fault.hang_timeout_s."));
  // [data], [latent]: the latent-pretrain workload (docs/embedding.md).
  s.push_back(str_key("data.dir", "", {},
                      "Image shards (docs/formats/images.md); empty = WORKDIR/data. A synthetic dataset is generated "
                      "there when it holds none."));
  s.push_back(int_key("data.images", 2048, 1, 1'000'000'000, "Images of the synthetic dataset."));
  s.push_back(int_key("data.per_shard", 256, 1, 1'000'000, "Images per shard of the synthetic dataset."));
  s.push_back(int_key("data.size", 64, 8, 1024, "Width = height of the synthetic images."));
  s.push_back(str_key("data.encoding", "png", {"png", "jpeg"}, "Encoding of the synthetic images."));
  s.push_back(str_key("latent.mode", "jit", {"jit", "inline", "offline"},
                      "Where latents come from: `jit` embed ranks compute them ahead (core/stage); `inline` each "
                      "trainer encodes its own batch; `offline` every rank encodes a share of the whole dataset into "
                      "WORKDIR/latents.h5 first, then the trainers train from it."));
  s.push_back(int_key("latent.batch", 32, 1, 1 << 20, "Samples per step over all trainers (a multiple of them)."));
  s.push_back(
      int_key("latent.prefetch", 4, 1, 4096, "Items (steps) a trainer may have in flight from the embed ranks."));
  s.push_back(int_key("latent.base_channels", 16, 4, 512, "Width of the VAE encoder's first level."));
  s.push_back(int_key("latent.downsamples", 3, 1, 6, "Downsampling levels of the encoder (64 px -> 8 at 3)."));
  s.push_back(int_key("latent.hidden", 512, 8, 1 << 16, "Hidden width of the denoiser MLP."));
  s.push_back(float_key("latent.lr", 1e-3, "Denoiser learning rate (AdamW)."));
  s.push_back(str_key("latent.encoder_weights", "", {},
                      "safetensors file of the encoder (rl/encoder/vae_encoder.h); empty = random weights from "
                      "job.seed (fixed for the whole job)."));
  s.push_back(int_key("curate.task_images", 64, 1, 1 << 20, "Images per curation task (a queue entry)."));
  s.push_back(float_key("curate.threshold", 0.97,
                        "Cosine similarity of encoder embeddings at or above which an image is a near-duplicate of "
                        "an earlier kept one and is dropped."));
  s.push_back(int_key("curate.per_shard", 256, 1, 1 << 20, "Images per output shard of the curated dataset."));
  s.push_back(int_key("curate.duplicates", 20, 0, 90,
                      "Percent of near-duplicates injected when the synthetic input dataset is generated (no "
                      "dataset in data.dir yet)."));
  s.push_back(str_key("curate.backend", "journal", {"journal", "redis"},
                      "The task queue: `journal`, embedded (WORKDIR/queue/queue.journal, served by trainer 0 over "
                      "MPI), or `redis` (curate.redis; shared by independent jobs)."));
  s.push_back(str_key("curate.redis", "127.0.0.1:6379", {}, "HOST:PORT of the Redis server (curate.backend = redis)."));
  s.push_back(str_key("curate.queue", "", {}, "Name of the queue (Redis keys mobula:q:NAME:*); empty = job.name."));
  s.push_back(float_key("curate.lease_s", 30, "Seconds a task's lease lasts without a heartbeat."));
  s.push_back(int_key("curate.max_attempts", 3, 1, 1000,
                      "Failed or lost leases after which a task is parked in the dead-letter list (a poison task)."));
  s.push_back(str_key("serve.host", "127.0.0.1", {},
                      "Address the service listens on: loopback by default; 0.0.0.0 (every interface) only behind "
                      "a firewall, tokens travel in clear HTTP."));
  s.push_back(
      int_key("serve.port", 8480, 0, 65535, "TCP port of the service; 0 = any free port (WORKDIR/serve.json says)."));
  s.push_back(str_key("serve.state_dir", "", {},
                      "Directory of the service's state (serve.db, adapter checkpoints, saved states); empty = "
                      "WORKDIR/serve."));
  s.push_back(str_key("serve.base", "", {},
                      "safetensors weights of the shared base model (e.g. a grpo job's policy.safetensors); empty = "
                      "a random base of [model]'s shape from job.seed."));
  s.push_back(int_key("serve.max_body_kib", 4096, 1, 1 << 20, "Largest request body (KiB); larger ones get 413."));
  s.push_back(int_key("serve.max_rows", 64, 1, 1 << 16, "Most datums of one forward_backward / forward request."));
  s.push_back(int_key("serve.pass_rows", 32, 1, 1 << 16,
                      "Rows of one pass over the base model: the chunks of several clients' training requests, or the "
                      "sequences of their sample requests decoded together."));
  s.push_back(int_key("serve.chunk_rows", 8, 1, 1 << 16,
                      "Rows of a chunk: requests are cut into chunks, results do not depend on what shares a pass."));
  s.push_back(
      int_key("serve.sample_rows", 64, 1, 1 << 16, "Most sequences (prompts x num_samples) of one sample request."));
  s.push_back(int_key("serve.max_adapters", 8, 1, 1 << 16, "Adapters one client may own."));
  s.push_back(int_key("serve.max_pending", 256, 1, 1 << 20, "Queued requests per client; more get 429."));
  s.push_back(int_key("serve.lora_rank", 8, 1, 64, "LoRA rank of a new adapter when the request names none."));
  s.push_back(float_key("serve.lora_alpha", 16, "LoRA alpha of a new adapter when the request names none."));
  s.push_back(float_key("serve.max_wait_s", 30, "Longest wait of one retrieve_future long poll (seconds)."));
  s.push_back(int_key("serve.threads", 32, 2, 1024, "HTTP connections served at once (a long poll holds one)."));
  s.push_back(int_key("metrics.port", 0, -1, 65535,
                      "Prometheus endpoint of the coordinator (world rank 0): GET /metrics on metrics.address. "
                      "0 = off, -1 = any free port (the URL goes to the log and events.jsonl)."));
  s.push_back(str_key("metrics.address", "127.0.0.1", {},
                      "Address the Prometheus endpoint listens on; loopback by default, 0.0.0.0 for every interface."));
  s.push_back(float_key("metrics.interval_s", 1.0,
                        "Least seconds between two metrics snapshots a rank sends to the coordinator (at step "
                        "boundaries); also the resolution of the heartbeat age."));
  s.push_back(int_key("fault.restart_delay_s", 5, 0, 3600,
                      "Seconds before the first relaunch; doubles with every further one (capped at 300)."));

  // [slurm]: what `mobula submit` renders into the batch script. Resource keys exist globally and
  // per role ([slurm.trainer] ...); a role's empty/0 value inherits the global one.
  const auto resources = [&](const std::string& prefix, const std::string& who, const std::string& inherit) {
    s.push_back(str_key(prefix + "partition", "", {}, "Partition (--partition) of " + who + inherit));
    s.push_back(str_key(prefix + "account", "", {}, "Account (--account) of " + who + inherit));
    s.push_back(str_key(prefix + "qos", "", {}, "QOS (--qos) of " + who + inherit));
    s.push_back(str_key(prefix + "constraint", "", {}, "Node features (--constraint) of " + who + inherit));
    s.push_back(
        str_key(prefix + "gres", "", {}, "Generic resources per node (--gres), e.g. gpu:4, of " + who + inherit));
    s.push_back(
        int_key(prefix + "nodes", 0, 0, 1 << 20, "Nodes (--nodes) of " + who + "; 0 = let Slurm decide" + inherit));
    s.push_back(int_key(prefix + "tasks_per_node", 0, 0, 4096,
                        "Ranks per node (--ntasks-per-node) of " + who + "; 0 = unset" + inherit));
    s.push_back(int_key(prefix + "gpus_per_node", 0, 0, 64,
                        "GPUs per node (--gpus-per-node) of " + who + "; 0 = none" + inherit));
  };
  resources("slurm.", "the job", ".");
  for (const auto& r : known_roles())
    resources("slurm." + r + ".", "the " + r + " ranks",
              "; empty/0 inherits the global slurm key. Roles whose resources differ run as separate components "
              "of a heterogeneous job.");
  s.push_back(str_key("slurm.time", "", {},
                      "Time limit (--time), e.g. \"02:00:00\" or \"1-00:00:00\"; empty = partition default."));
  s.push_back(
      list_key("slurm.extra", "Extra #SBATCH lines, without the \"#SBATCH \" prefix, e.g. [\"--mail-type=END\"]."));
  s.push_back(list_key("slurm.env", "NAME=VALUE pairs exported in the batch script before srun."));
  s.push_back(bool_key("slurm.requeue", true, "Render --requeue so Slurm may requeue the job after a node failure."));
  s.push_back(str_key("slurm.signal", "USR1", {"USR1", "USR2", "TERM", "INT"},
                      "Signal sent to the batch shell signal_grace_s before the time limit (--signal=B:SIG@GRACE)."));
  s.push_back(
      int_key("slurm.signal_grace_s", 120, 0, 86400, "Seconds before the time limit for slurm.signal; 0 = none."));
  s.push_back(str_key("slurm.mpi", "pmix", {}, "srun --mpi plugin that starts the ranks."));
  s.push_back(
      str_key("slurm.keep_on_failure", "", {},
              "Keep the allocation this long after the job finally failed, so a user can attach (srun "
              "--jobid ID --overlap); Slurm time syntax (\"30\" minutes, \"MM:SS\", \"HH:MM:SS\"); empty = off."));
  s.push_back(int_key("slurm.step_grace_s", 15, 1, 3600,
                      "Seconds srun may outlive its finished step before `mobula step` stops it (docs/slurm.md)."));
  return s;
}

}  // namespace

const std::vector<KeyDef>& spec_schema() {
  static const std::vector<KeyDef> schema = build_schema();
  return schema;
}

std::string type_name(ValueType t) {
  switch (t) {
    case ValueType::kInt:
      return "an integer";
    case ValueType::kFloat:
      return "a number";
    case ValueType::kBool:
      return "a boolean";
    case ValueType::kString:
      return "a string";
    case ValueType::kStringList:
      return "an array of strings";
  }
  return "?";
}

std::string value_to_string(const SpecValue& v) {
  struct V {
    std::string operator()(int64_t x) const { return std::to_string(x); }
    std::string operator()(double x) const {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.17g", x);
      return buf;
    }
    std::string operator()(bool x) const { return x ? "true" : "false"; }
    std::string operator()(const std::string& x) const { return "\"" + x + "\""; }
    std::string operator()(const std::vector<std::string>& x) const {
      std::string out = "[";
      for (size_t i = 0; i < x.size(); ++i) out += (i ? ", \"" : "\"") + x[i] + "\"";
      return out + "]";
    }
  };
  return std::visit(V{}, v);
}

}  // namespace mobula
