// The lifecycle every training workload shares (docs/rl.md, "One lifecycle"). A workload supplies
// its state buffers and a step function; the loop owns everything around them, identically for
// every workload:
//
//   resume     the state group (trainers) loads the newest checkpoint that verifies, reports the
//              ones it rejected, fences out ranks of earlier launches; the verdict (the step to
//              start at, or "cannot resume") reaches every rank of the stop group
//   begin      the workload's own start (a warm start, a data stage)
//   step k     start..steps-1: the stop-signal agreement (a non-blocking all-reduce started at
//              boundary k and completed `stop_delay` boundaries later, so every rank stops at the
//              same boundary without an extra synchronisation per step), the workload's step,
//              the checkpoint cadence (checkpoint.every; synchronous on the whole state group, or
//              staged by its rank 0 and published in the background), then the fault-injection
//              switches (docs/testing.md)
//   preempted  at a stop signal: the workload drains what is in flight, the state group publishes
//              the state after k steps synchronously, every rank returns Status::preempted (exit 3)
//   finish     the workload's own end (evaluation, summary.json)
//
// Contract: collective over the stop group; every rank of it calls run_training with the same
// options. Ranks outside the state group (rollouts) hold no checkpointed state.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "io/checkpoint.h"
#include "rl/roles/workload.h"

namespace mobula::rl {

// What the loop offers the workload's step.
class Lifecycle {
 public:
  virtual ~Lifecycle() = default;
  // Watchdog beat and metrics tick.
  virtual void beat(const char* phase, int64_t step) = 0;
  // Blocks until an asynchronous checkpoint in flight has copied the state (call it right before
  // the state changes); the seconds it blocked, 0 when nothing was staged.
  virtual double wait_staged() = 0;
  // Launch number (MOBULA_STEP_ATTEMPT; 0 first).
  virtual int64_t attempt() const = 0;
};

class TrainingWorkload {
 public:
  virtual ~TrainingWorkload() = default;
  // State group ranks: the checkpointed buffers (host memory, valid while the workload lives) and
  // the optimizer step count and workload scalar to save with them.
  virtual io::CheckpointState checkpoint_state() = 0;
  // Before a save: bring the buffers of checkpoint_state() up to date (e.g. device -> host).
  virtual Status before_save() { return Status::ok(); }
  // After a checkpoint was loaded into the buffers: apply it (host -> device, optimizer steps).
  virtual Status after_load(const io::CheckpointState& loaded) = 0;
  // Every rank, once, after resume: the workload's own start at step `start`.
  virtual Status begin(int64_t start) = 0;
  // Every rank: step k.
  virtual Status step(int64_t k, Lifecycle& life) = 0;
  // After step k's checkpoint (if one was due; checkpoint_s its seconds): per-step reports.
  virtual Status after_step(int64_t /*k*/, double /*checkpoint_s*/) { return Status::ok(); }
  // Stopped at the boundary of step k: finish what is in flight before the preemption save.
  virtual Status drain(int64_t /*k*/) { return Status::ok(); }
  // After the last step (and the last asynchronous save): evaluation, summary.
  virtual Status finish(int64_t start) = 0;
};

struct LoopOptions {
  MPI_Comm stop_comm = MPI_COMM_NULL;   // every rank running steps; its rank 0 is the state group's
  MPI_Comm state_comm = MPI_COMM_NULL;  // the ranks holding the state (trainers); NULL elsewhere
  int stop_delay = 1;                   // boundaries between starting and completing the agreement
  bool allow_async_checkpoint = true;   // checkpoint.async honoured
};

// Runs the lifecycle above. Returns the workload's error, Status::preempted, or ok.
Status run_training(const WorkloadContext& ctx, TrainingWorkload& w, const LoopOptions& o);

}  // namespace mobula::rl
