// The role main loops. The worker calls run_workload() on every rank after the layout and the role
// communicators exist; the spec's job.workload picks what runs.
//
// Contract: collective over every communicator in `comms` (all ranks call it with the same spec and
// layout); returns a Status that is identical on all ranks (errors are agreed with an all-reduce,
// so no rank is left waiting in a collective the others abandoned).
#pragma once

#include <mpi.h>

#include "core/health/health.h"
#include "core/metrics/aggregate.h"
#include "core/runtime/layout.h"
#include "core/runtime/role_comms.h"
#include "core/runtime/spec.h"
#include "rl/model/config.h"

namespace mobula::rl {

struct WorkloadContext {
  const JobSpec& spec;
  const Layout& layout;
  const RoleComms& comms;
  MPI_Comm world;
  int rank;
  health::Watchdog* watchdog = nullptr;    // beat() at every phase; may be null (tests)
  metrics::Aggregator* metrics = nullptr;  // tick() at every phase; may be null (tests)
};

Status run_workload(const WorkloadContext& ctx);

// The policy's shape from the spec: [model]'s keys over the characters of rl.task (the vocabulary
// of its CharTokenizer); a spec error naming the key when either is invalid.
Result<GptConfig> task_model_config(const JobSpec& spec);

// Rank 0 writes the synthetic image dataset (io/synthetic_images.h, with `duplicate_percent` near-
// duplicates) into data.dir when it holds none; every rank learns the outcome (collective over the
// world): rank 0's error, or "could not create" on the others.
Status ensure_synthetic_dataset(const WorkloadContext& ctx, int duplicate_percent);

// `layout-check`: each step, every role communicator and every link communicator runs an
// all-reduce whose result is predicted from the layout (sum of world ranks, sum of role ids), and a
// broadcast from the first role of each link carrying (step, seed); any mismatch is an error.
Status run_layout_check(const WorkloadContext& ctx);

// `grpo`: supervised warm start, then synchronous GRPO over the trainer and rollout groups
// (rl/roles/grpo.cc, docs/rl.md).
Status run_grpo(const WorkloadContext& ctx);

// `latent-pretrain`: trainers train a denoiser on VAE latents that embed ranks compute ahead
// (core/stage), or that the trainers compute themselves (rl/roles/latent.cc, docs/embedding.md).
Status run_latent_pretrain(const WorkloadContext& ctx);

// `curate`: embed ranks decode and embed image shards taken from a reliable task queue that trainer
// 0 serves; trainer 0 then writes the near-duplicate-filtered dataset (rl/roles/curate.cc,
// docs/queue.md).
Status run_curate(const WorkloadContext& ctx);

}  // namespace mobula::rl
