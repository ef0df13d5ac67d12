#include "rl/roles/loop.h"

#include <chrono>
#include <csignal>
#include <thread>

#include "core/health/health.h"
#include "core/metrics/events.h"
#include "core/runtime/environment.h"
#include "core/runtime/log.h"
#include "core/runtime/mpi.h"
#include "core/runtime/time_format.h"

namespace mobula::rl {

namespace {

void record_preemption(const WorkloadContext& ctx, int64_t step, int sig, bool checkpointed);
void record_checkpoint_failure(const WorkloadContext& ctx, int64_t step, const Status& saved);

// The fault-injection switches (docs/testing.md), read once. A rank-specific switch applies to
// world rank MOBULA_FAULT_KILL_RANK (default 0) in the launch MOBULA_FAULT_KILL_ATTEMPT names.
struct FaultPlan {
  int64_t kill_after = -1, signal_after = -1, hang_after = -1, error_at = -1, await_signal_after = -1;
  bool error_alone = false;
  long step_delay_ms = 0;

  static FaultPlan read(int rank, bool in_state_group) {
    FaultPlan f;
    const bool this_launch = fault_attempt_matches();
    if (this_launch && env_long("MOBULA_FAULT_KILL_RANK", 0) == rank) {
      f.kill_after = env_long("MOBULA_FAULT_KILL_AFTER_STEP", -1);
      f.signal_after = env_long("MOBULA_FAULT_SIGNAL_AFTER_STEP", -1);
      f.hang_after = env_long("MOBULA_FAULT_HANG_AFTER_STEP", -1);
    }
    // MOBULA_FAULT_ERROR_RANK: only that world rank fails (-1, the default: the whole state group).
    const long error_rank = env_long("MOBULA_FAULT_ERROR_RANK", -1);
    if (this_launch && (error_rank == rank || (error_rank < 0 && in_state_group)))
      f.error_at = env_long("MOBULA_FAULT_ERROR_AT_STEP", -1);
    f.error_alone = error_rank >= 0;
    f.await_signal_after = env_long("MOBULA_FAULT_AWAIT_SIGNAL_AFTER_STEP", -1);
    if (rank == 0) f.step_delay_ms = env_long("MOBULA_FAULT_STEP_DELAY_MS", 0);
    return f;
  }
};

class Loop final : public Lifecycle {
 public:
  Loop(const WorkloadContext& ctx, TrainingWorkload& w, const LoopOptions& o)
      : ctx_(ctx), spec_(ctx.spec), w_(w), o_(o), attempt_(env_long("MOBULA_STEP_ATTEMPT", 0)) {
    holds_state_ = o.state_comm != MPI_COMM_NULL;
    if (holds_state_) MPI_Comm_rank(o.state_comm, &state_rank_);
    lead_ = holds_state_ && state_rank_ == 0;
    faults_ = FaultPlan::read(ctx.rank, holds_state_);
  }

  void beat(const char* phase, int64_t step) override {
    if (ctx_.watchdog) ctx_.watchdog->beat(phase, step);
    if (ctx_.metrics) ctx_.metrics->tick();
  }
  double wait_staged() override { return async_ ? async_->wait_staged() : 0.0; }
  int64_t attempt() const override { return attempt_; }

  Status run() {
    auto start = resume();
    if (!start) return start.status();
    MOBULA_RETURN_IF_ERROR(w_.begin(*start));
    make_async_checkpointer();
    for (int64_t k = *start; k < spec_.steps; ++k) {
      beat("step boundary", k);
      auto stop = stop_signal_at(k, *start);
      if (!stop) return stop.status();
      if (*stop) return preempt(k, *stop);
      if (faults_.error_at == k) {
        // Alone, it fails a second late, so its peers are surely waiting for it in step k.
        if (faults_.error_alone) std::this_thread::sleep_for(std::chrono::seconds(1));
        return Status::external("injected failure at step " + std::to_string(k) + " (MOBULA_FAULT_ERROR_AT_STEP)");
      }
      MOBULA_RETURN_IF_ERROR(w_.step(k, *this));
      double checkpoint_s = 0;
      if (holds_state_ && spec_.checkpoint.every > 0 && (k + 1) % spec_.checkpoint.every == 0) {
        beat("checkpoint", k);
        checkpoint_s = periodic_save(k + 1);
      }
      MOBULA_RETURN_IF_ERROR(w_.after_step(k, checkpoint_s));
      inject_after(k);
    }
    beat("finishing", spec_.steps);
    MOBULA_MPI(MPI_Waitall(3, stop_req_, MPI_STATUSES_IGNORE));  // the last boundaries' (null: none)
    if (async_) {
      const Status last = async_->wait();
      if (!last.is_ok()) spdlog::error("the last checkpoint failed: {}", last.message());
    }
    return w_.finish(*start);
  }

 private:
  // ---- resume ---------------------------------------------------------------------------------
  Result<int64_t> resume() {
    int64_t start = 0;
    Status st = Status::ok();
    if (holds_state_) {
      io::CheckpointState c = w_.checkpoint_state();
      std::vector<std::string> rejected;
      auto found = io::load_latest_checkpoint(spec_.checkpoint.dir, &c, o_.state_comm, &rejected);
      if (lead_)
        for (const auto& r : rejected) {
          spdlog::warn("checkpoint rejected: {}", r);
          events::emit(spec_.workdir, "checkpoint_rejected", {{"reason", events::str(r)}}, ctx_.rank);
        }
      if (!found) {
        st = found.status();
      } else if (*found) {
        st = w_.after_load(c);
        start = c.step;
        if (lead_ && st.is_ok()) {
          events::emit(spec_.workdir, "checkpoint_loaded",
                       {{"path", events::str(**found)}, {"step", events::num(start)}}, ctx_.rank);
          spdlog::info("resumed from {} (step {}, written by spec {}{})", **found, start, c.spec_hash,
                       c.spec_hash == spec_.hash() ? "" : ", not this spec's hash " + spec_.hash());
        }
      }
      // Fencing: from now on no rank of an earlier launch may publish a checkpoint here.
      if (lead_ && st.is_ok() && spec_.checkpoint.every > 0) st = io::fence_checkpoints(spec_.checkpoint.dir, attempt_);
    }
    // The state group's verdict reaches every rank (-1: no usable checkpoint), so all of them stop
    // with the same one-line error instead of waiting for peers that gave up.
    int64_t verdict = st.is_ok() ? start : -1;
    MOBULA_MPI(MPI_Bcast(&verdict, 1, MPI_INT64_T, 0, o_.stop_comm));
    if (verdict < 0)
      return Status::invalid_argument(
          st.is_ok() ? spec_.workload + ": the trainers could not resume (see trainer 0's error)" : st.message());
    return verdict;
  }

  // ---- stop signals -------------------------------------------------------------------------
  // The signal every rank agreed on at boundary k (0: none). The all-reduce of boundary k-D
  // completes here (D = stop_delay) and the one of boundary k starts.
  Result<int> stop_signal_at(int64_t k, int64_t start) {
    int agreed = 0;
    if (k - o_.stop_delay >= start) {
      const size_t i = size_t((k - o_.stop_delay) % 3);
      MOBULA_MPI(MPI_Wait(&stop_req_[i], MPI_STATUS_IGNORE));
      agreed = stop_any_[i];
    }
    if (agreed) return agreed;
    const size_t i = size_t(k % 3);
    stop_mine_[i] = health::stop_signal();
    MOBULA_MPI(MPI_Iallreduce(&stop_mine_[i], &stop_any_[i], 1, MPI_INT, MPI_MAX, o_.stop_comm, &stop_req_[i]));
    return 0;
  }

  Status preempt(int64_t k, int sig) {
    beat("preemption checkpoint", k);
    Status saved = w_.drain(k);
    if (holds_state_) {  // every member saves (a collective), whatever its drain gave
      if (async_) (void)async_->wait();
      const Status st = save_sync(k, std::max(1, spec_.checkpoint.keep));
      if (saved.is_ok()) saved = st;
    }
    if (lead_ && !saved.is_ok()) spdlog::error("preemption checkpoint at step {}: {}", k, saved.message());
    if (lead_) record_preemption(ctx_, k, sig, saved.is_ok());
    return Status::preempted(
        "preempted by signal " + std::to_string(sig) + " at the boundary of step " + std::to_string(k) +
        (saved.is_ok() && holds_state_ ? "; the checkpoint of " + std::to_string(k) + " steps is durable" : "") +
        "; exiting with 3 so that the launcher restarts the job");
  }

  // ---- checkpoints ----------------------------------------------------------------------------
  void make_async_checkpointer() {
    if (!lead_ || spec_.checkpoint.every <= 0 || !spec_.checkpoint.async || !o_.allow_async_checkpoint) return;
    async_ = std::make_unique<io::AsyncCheckpointer>(
        spec_.checkpoint.dir, spec_.checkpoint.keep,
        [dir = spec_.workdir, rank = ctx_.rank](int64_t step, const char* what, const Status& st, double secs) {
          events::Fields f = {
              {"step", events::num(step)}, {"mode", events::str("async")}, {"seconds", events::num(secs)}};
          if (!st.is_ok()) f.push_back({"reason", events::str(st.message())});
          events::emit(dir, std::string("checkpoint_") + what, f, rank);
        });
  }
  bool async_mode() const { return spec_.checkpoint.async && o_.allow_async_checkpoint; }

  io::CheckpointState state_after(int64_t steps_done) {
    io::CheckpointState c = w_.checkpoint_state();
    c.step = steps_done;
    c.spec_hash = spec_.hash();
    c.attempt = attempt_;
    return c;
  }

  Status save_sync(int64_t steps_done, int keep) {
    MOBULA_RETURN_IF_ERROR(w_.before_save());
    return io::save_checkpoint(spec_.checkpoint.dir, state_after(steps_done), keep, o_.state_comm);
  }

  // The state after `steps_done` steps. Synchronous: every member takes part (vote) and waits until
  // the file is durable. Asynchronous: member 0 stages a copy and its background thread publishes
  // it (and reports the outcome there); the others go on. A failed save is reported and training
  // goes on: `latest` still names the previous checkpoint and the next interval tries again.
  double periodic_save(int64_t steps_done) {
    const double t0 = monotonic_seconds();
    if (async_mode()) {
      if (!async_) return 0.0;
      // The previous save's outcome, which its background thread has reported already.
      if (Status st = w_.before_save(); !st.is_ok())
        record_checkpoint_failure(ctx_, steps_done - 1, st);
      else
        (void)async_->stage(state_after(steps_done));
      return monotonic_seconds() - t0;
    }
    const Status saved = save_sync(steps_done, spec_.checkpoint.keep);
    const double secs = monotonic_seconds() - t0;
    if (lead_ && !saved.is_ok()) record_checkpoint_failure(ctx_, steps_done - 1, saved);
    if (lead_ && saved.is_ok()) {
      spdlog::info("checkpoint after step {} published in {:.3f} s", steps_done - 1, secs);
      events::emit(spec_.workdir, "checkpoint_durable",
                   {{"step", events::num(steps_done)}, {"mode", events::str("sync")}, {"seconds", events::num(secs)}},
                   ctx_.rank);
    }
    return secs;
  }

  // ---- fault injection after step k (docs/testing.md) ---------------------------------------------
  void emit_fault(const char* kind, int64_t k) {
    events::emit(spec_.workdir, "fault_injected", {{"kind", events::str(kind)}, {"step", events::num(k)}}, ctx_.rank);
  }

  void inject_after(int64_t k) {
    if (faults_.kill_after == k) {
      // Deterministic for the tests: a save in flight becomes durable first (the kill-in-save
      // switch covers a crash during a save).
      if (async_) (void)async_->wait();
      spdlog::warn("fault injection: SIGKILL after step {}", k);
      emit_fault("SIGKILL", k);
      spdlog::shutdown();
      std::raise(SIGKILL);
    }
    if (faults_.step_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(faults_.step_delay_ms));
    if (faults_.await_signal_after == k) await_signal(k);
    if (faults_.signal_after == k) {
      spdlog::warn("fault injection: SIGUSR1 after step {}", k);
      emit_fault("SIGUSR1", k);
      std::raise(SIGUSR1);  // the stop handler (core/health) records it
    }
    if (faults_.hang_after == k) {
      if (async_) (void)async_->wait();
      spdlog::warn("fault injection: SIGSTOP after step {} (this rank hangs)", k);
      emit_fault("SIGSTOP", k);
      spdlog::default_logger()->flush();
      std::raise(SIGSTOP);
    }
  }

  // Every rank sleeps (a rank blocked in MPI would spin and starve a 2-core machine) until its
  // stop signal arrives, at most 120 s.
  void await_signal(int64_t k) {
    if (ctx_.rank == 0) {
      spdlog::warn("fault injection: every rank waits after step {} for a stop signal (up to 120 s)", k);
      emit_fault("await signal", k);
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!health::stop_signal() && std::chrono::steady_clock::now() < until) {
      beat("awaiting a signal (fault injection)", k);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!health::stop_signal())
      spdlog::warn("fault injection: no stop signal within 120 s; going on");
    else if (ctx_.rank == 0)
      spdlog::warn("fault injection: signal {} arrived; going on", health::stop_signal());
  }

  const WorkloadContext& ctx_;
  const JobSpec& spec_;
  TrainingWorkload& w_;
  LoopOptions o_;
  int64_t attempt_ = 0;
  bool holds_state_ = false, lead_ = false;
  int state_rank_ = -1;
  FaultPlan faults_;
  std::unique_ptr<io::AsyncCheckpointer> async_;
  int stop_mine_[3] = {0, 0, 0}, stop_any_[3] = {0, 0, 0};
  MPI_Request stop_req_[3] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL, MPI_REQUEST_NULL};
};

// Events and log lines of a preemption at the boundary of `step` (`checkpoint_durable` in mode
// "preemption" when its checkpoint was published, then `preempted`), and of a periodic save that
// failed after step index `step` (error line + `checkpoint_failed` for the checkpoint of step + 1
// steps; training goes on).
void record_preemption(const WorkloadContext& ctx, int64_t step, int sig, bool checkpointed) {
  if (checkpointed)
    events::emit(ctx.spec.workdir, "checkpoint_durable",
                 {{"step", events::num(step)}, {"mode", events::str("preemption")}}, ctx.rank);
  events::emit(
      ctx.spec.workdir, "preempted",
      {{"signal", events::num(sig)}, {"step", events::num(step)}, {"checkpointed", checkpointed ? "true" : "false"}},
      ctx.rank);
}

void record_checkpoint_failure(const WorkloadContext& ctx, int64_t step, const Status& saved) {
  spdlog::error("checkpoint after step {} failed: {}", step, saved.message());
  events::emit(ctx.spec.workdir, "checkpoint_failed",
               {{"step", events::num(step + 1)}, {"reason", events::str(saved.message())}}, ctx.rank);
}

}  // namespace

Status run_training(const WorkloadContext& ctx, TrainingWorkload& w, const LoopOptions& o) {
  Loop loop(ctx, w, o);
  return loop.run();
}

}  // namespace mobula::rl
