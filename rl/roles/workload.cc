#include "rl/roles/workload.h"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <thread>

#include "core/metrics/events.h"
#include "core/runtime/log.h"
#include "core/runtime/mpi.h"
#include "core/runtime/time_format.h"
#include "io/synthetic_images.h"
#include "rl/model/tokenizer.h"
#include "rl/tasks/task.h"

namespace mobula::rl {
namespace {

// Agree on success across the world: every rank returns an error if any rank failed.
// A failed rank waits at most `grace_s` for the agreement: after a local fault its peers may be
// blocked in a collective with it (a trainer in the gradient all-reduce while another trainer has
// failed) and never arrive; it then returns its own error, and the worker's MPI_Abort ends them.
// Ranks that succeeded or were preempted wait without a bound (a slow peer is not a failure; the
// hang watchdog covers a stuck one).
Status agree(MPI_Comm world, const Status& local, int grace_s) {
  // 0 ok, 1 preempted (a checkpoint was published: restart me), 2 failed.
  const int mine = local.is_ok() ? 0 : local.code() == Status::Code::kPreempted ? 1 : 2;
  int any = 0;
  MPI_Request req = MPI_REQUEST_NULL;
  MOBULA_MPI(MPI_Iallreduce(&mine, &any, 1, MPI_INT, MPI_MAX, world, &req));
  if (mine == 2) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(grace_s);
    for (int done = 0;;) {
      MOBULA_MPI(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done) break;
      if (std::chrono::steady_clock::now() >= deadline) {
        spdlog::error(
            "not every rank reached the end of the workload within fault.abort_grace_s = {} s (a peer "
            "may be blocked in a collective this failure left incomplete); aborting the job",
            grace_s);
        return local;  // the request stays pending: the worker aborts
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  } else {
    MOBULA_MPI(MPI_Wait(&req, MPI_STATUS_IGNORE));
  }
  if (any == 2 && mine == 2) return local;
  if (any == 2) return Status::external("workload failed on another rank (see its log)");
  if (any == 1 && mine == 1) return local;
  if (any == 1) return Status::preempted("preempted: other ranks checkpointed at a stop signal");
  return Status::ok();
}

Status check_comm(MPI_Comm comm, const std::vector<int>& members, const Layout& layout, int64_t step, int64_t seed,
                  const std::string& label) {
  int size = 0;
  MOBULA_MPI(MPI_Comm_size(comm, &size));
  if (size != static_cast<int>(members.size()))
    return Status::external(label + ": communicator has " + std::to_string(size) + " ranks, layout says " +
                            std::to_string(members.size()));
  int me = 0;
  MOBULA_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &me));
  // Sum of (world rank + 1) and of (role index + 1) over members.
  int64_t mine[2] = {me + 1, layout.role_index(layout.at(me).role) + 1}, got[2] = {0, 0}, want[2] = {0, 0};
  for (int r : members) {
    want[0] += r + 1;
    want[1] += layout.role_index(layout.at(r).role) + 1;
  }
  MOBULA_MPI(MPI_Allreduce(mine, got, 2, MPI_INT64_T, MPI_SUM, comm));
  if (got[0] != want[0] || got[1] != want[1])
    return Status::external(label + ": all-reduce gave (" + std::to_string(got[0]) + ", " + std::to_string(got[1]) +
                            "), layout predicts (" + std::to_string(want[0]) + ", " + std::to_string(want[1]) + ")");
  int64_t msg[2] = {0, 0};
  int crank = 0;
  MOBULA_MPI(MPI_Comm_rank(comm, &crank));
  if (crank == 0) msg[0] = step, msg[1] = seed;
  MOBULA_MPI(MPI_Bcast(msg, 2, MPI_INT64_T, 0, comm));
  if (msg[0] != step || msg[1] != seed)
    return Status::external(label + ": broadcast carried step " + std::to_string(msg[0]) + ", expected " +
                            std::to_string(step));
  return Status::ok();
}

}  // namespace

Status run_layout_check(const WorkloadContext& ctx) {
  const Placement& me = ctx.layout.at(ctx.rank);
  std::string links;
  for (const auto& l : ctx.comms.links()) {
    if (l.comm == MPI_COMM_NULL) continue;
    int n = 0;
    MOBULA_MPI(MPI_Comm_size(l.comm, &n));
    links += " " + l.a + "+" + l.b + "(" + std::to_string(n) + ")";
  }
  spdlog::info("role {} {}/{} on world rank {}/{}; links:{}", me.role, me.role_rank, me.role_size, ctx.rank,
               ctx.layout.world_size(), links.empty() ? " none" : links);
  for (int64_t step = 0; step < ctx.spec.steps; ++step) {
    if (ctx.watchdog) ctx.watchdog->beat("layout check", step);
    if (ctx.metrics) ctx.metrics->tick();
    int sig = health::stop_signal(), any = 0;  // preemption: stateless, nothing to save
    MOBULA_MPI(MPI_Allreduce(&sig, &any, 1, MPI_INT, MPI_MAX, ctx.world));
    if (any)
      return Status::preempted("preempted by signal " + std::to_string(any) + " at step " + std::to_string(step));
    Status st =
        check_comm(ctx.comms.role(), ctx.layout.ranks_of(me.role), ctx.layout, step, ctx.spec.seed, "role " + me.role);
    for (const auto& l : ctx.comms.links()) {
      if (!st || l.comm == MPI_COMM_NULL) continue;
      std::vector<int> members = ctx.layout.ranks_of(l.a);
      for (int r : ctx.layout.ranks_of(l.b)) members.push_back(r);
      std::sort(members.begin(), members.end());
      st = check_comm(l.comm, members, ctx.layout, step, ctx.spec.seed, "link " + l.a + "+" + l.b);
    }
    MOBULA_RETURN_IF_ERROR(agree(ctx.world, st, ctx.spec.fault.abort_grace_s));
  }
  if (ctx.rank == 0)
    spdlog::info("layout check passed: {} ranks, {} roles, {} links, {} steps", ctx.layout.world_size(),
                 ctx.layout.roles().size(), ctx.layout.links().size(), ctx.spec.steps);
  return Status::ok();
}

Status ensure_synthetic_dataset(const WorkloadContext& ctx, int duplicate_percent) {
  const DataSpec& d = ctx.spec.data;
  Status st;
  if (ctx.rank == 0 && !std::filesystem::exists(d.dir + "/dataset.json")) {
    const double t0 = monotonic_seconds();
    st = io::generate_synthetic_dataset(d.dir, uint64_t(d.images), uint64_t(d.per_shard), d.size,
                                        uint64_t(ctx.spec.seed), d.encoding, duplicate_percent);
    if (st.is_ok())
      spdlog::info("data: generated {} synthetic {}x{} {} images{} in {} in {:.1f} s", d.images, d.size, d.size,
                   d.encoding,
                   duplicate_percent > 0 ? " (" + std::to_string(duplicate_percent) + "% near-duplicates)" : "", d.dir,
                   monotonic_seconds() - t0);
  }
  int ok = st.is_ok() ? 1 : 0;
  MOBULA_MPI(MPI_Bcast(&ok, 1, MPI_INT, 0, ctx.world));
  if (!ok) return st.is_ok() ? Status::io("data: rank 0 could not create " + d.dir + " (see its log)") : st;
  return Status::ok();
}

Result<GptConfig> task_model_config(const JobSpec& spec) {
  auto task = make_task(spec.rl.task, spec.rl.digits);
  if (!task) return Status::invalid_spec(spec.where("rl.task") + ": rl.task: " + task.status().message());
  GptConfig c;
  c.vocab = CharTokenizer((*task)->alphabet()).vocab_size();
  c.max_seq = spec.model.context;
  c.layers = spec.model.layers;
  c.heads = spec.model.heads;
  c.d_model = spec.model.d_model;
  c.mlp_ratio = spec.model.mlp_ratio;
  if (Status v = c.validate(); !v) return Status::invalid_spec(spec.where("model") + ": " + v.message());
  return c;
}

Status run_workload(const WorkloadContext& ctx) {
  if (ctx.spec.workload == "layout-check") return run_layout_check(ctx);
  if (ctx.spec.workload == "grpo" || ctx.spec.workload == "latent-pretrain" || ctx.spec.workload == "curate") {
    const Status st = ctx.spec.workload == "grpo"              ? run_grpo(ctx)
                      : ctx.spec.workload == "latent-pretrain" ? run_latent_pretrain(ctx)
                                                               : run_curate(ctx);
    // Say it here, before the agreement: peers may be blocked in a transfer or a collective with
    // this rank and arrive late or never (agree() then aborts after fault.abort_grace_s).
    const bool failed = !st && st.code() != Status::Code::kPreempted;
    if (failed) spdlog::error("{}", st.message());
    // agree() hands a failed rank its own status back: marked, the worker does not log it again.
    return agree(ctx.world, failed ? st.as_logged() : st, ctx.spec.fault.abort_grace_s);
  }
  return Status::invalid_spec(ctx.spec.where("job.workload") + ": job.workload: \"" + ctx.spec.workload +
                              "\" is not implemented by this build");
}

}  // namespace mobula::rl
