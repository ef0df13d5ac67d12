// Checkpoints: one HDF5 file per saved step, saved by a group of ranks that hold
// identical replicas of the state (the data-parallel trainers) and published atomically.
//
// Layout of DIR:
//   ckpt-00000012.h5       a published checkpoint (state after 12 steps)
//   .ckpt-00000013.h5.tmp  a save in progress (or left by a crash; ignored, removed by the next save)
//   latest                 "ckpt-00000012.h5\n", replaced by rename after the file is durable
// File contents: docs/formats/checkpoint.md.
//
// Contract
//  * save_checkpoint and load_latest_checkpoint are collective over `comm`.
//  * Publish order: rank 0 writes the temporary file (the replicas are identical), closes it, every
//    rank votes (MPI_Allreduce), rank 0 fsyncs the file, renames it to its final name, fsyncs the
//    directory, then replaces `latest` (write + fsync + rename + fsync). A crash at any point
//    leaves the previous checkpoint or the new one, never a half one under a final name.
//  * Fencing: DIR/fence holds the newest attempt (launch) number that started on DIR
//    (fence_checkpoints, at start). A save whose state.attempt is older refuses to publish, so a
//    straggler rank of an earlier launch can never move `latest` (kuberay#5211's overlap problem).
//    The check and the rename are two steps: a fence raised in between is seen by the next save.
//  * A failed save removes its temporary file and leaves `latest` and every published checkpoint
//    as they were; the caller decides whether to go on (GRPO does, and reports it).
//  * Every buffer carries an xxh64 of its bytes; load verifies it. load_latest_checkpoint tries
//    published checkpoints newest first, reports each that fails (truncated, checksum, wrong sizes)
//    and uses the next; if checkpoints exist and none verifies it is an error, never a fresh start.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::io {

inline constexpr int kCheckpointFormatVersion = 1;

struct CheckpointState {
  int64_t step = 0;             // steps completed: the job resumes at this step
  int64_t optimizer_steps = 0;  // AdamW's t
  double scalar = 0;            // one workload-defined number (GRPO: warm-start accuracy)
  std::string spec_hash;        // of the job that wrote it (informational)
  int64_t attempt = 0;          // launch number of the writer (MOBULA_STEP_ATTEMPT), for fencing
  // Named flat float32 buffers, identical on every rank of comm; load fills them (sizes must match).
  std::vector<std::pair<std::string, std::span<float>>> buffers;
};

// Saves `state` as DIR/ckpt-<step>.h5 and keeps the newest `keep` checkpoints (keep >= 1).
Status save_checkpoint(const std::string& dir, const CheckpointState& state, int keep, MPI_Comm comm);

// Loads the newest checkpoint that verifies into `state` and returns its path; std::nullopt when
// DIR holds no published checkpoint. `rejected` collects one line per checkpoint skipped.
Result<std::optional<std::string>> load_latest_checkpoint(const std::string& dir, CheckpointState* state, MPI_Comm comm,
                                                          std::vector<std::string>* rejected);

// Published checkpoints in DIR, newest first (file names); exposed for tests and tools.
std::vector<std::string> list_checkpoints(const std::string& dir);

// Raises DIR/fence to `attempt` (never lowers it; durable). Called by one rank at job start.
Status fence_checkpoints(const std::string& dir, int64_t attempt);

// Asynchronous saves (Orbax/DCP style) by ONE rank of a replica group (the others need not call
// anything): stage() returns at once and a background thread copies the buffers into staging
// memory (reused across saves), then writes and publishes the copy exactly as save_checkpoint
// does (on MPI_COMM_SELF). The caller must not modify the staged buffers until wait_staged()
// returns: call it right before the next update (the optimizer step), so the copy overlaps with
// whatever comes first (sampling, forward/backward). At most one save is in flight: stage() first
// waits for the previous one. "staged" and "durable" are logged as separate events.
//
// Thread safety: one thread calls stage/wait_staged/wait. The HDF5 library is used from the
// background thread only while a save is in flight; the caller must not use HDF5 then (the Debian
// build is not thread-safe).
class AsyncCheckpointer {
 public:
  // on_event (optional) runs on the background thread: what = "staged" when the copy is done, then
  // "durable" or "failed" (outcome says why); seconds since stage().
  using Event = std::function<void(int64_t step, const char* what, const Status& outcome, double seconds)>;
  AsyncCheckpointer(std::string dir, int keep, Event on_event = {});
  ~AsyncCheckpointer();  // waits for a save in flight
  AsyncCheckpointer(const AsyncCheckpointer&) = delete;
  AsyncCheckpointer& operator=(const AsyncCheckpointer&) = delete;

  // Waits for the previous save, then starts copying and writing `state`. Returns the PREVIOUS
  // save's outcome (a failed save is reported once, here or by wait()). *stall_s: seconds this call
  // blocked.
  Status stage(const CheckpointState& state, double* stall_s = nullptr);
  // Blocks until the last staged state is copied (then its buffers may change); returns the
  // seconds it blocked (0 when nothing is staged or the copy is done).
  double wait_staged();
  // Waits for the save in flight, if any, and returns its outcome.
  Status wait();

 private:
  struct Staged;
  std::string dir_;
  int keep_;
  Event on_event_;
  std::unique_ptr<Staged> staged_;
  std::vector<std::vector<float>> spare_;  // staging buffers of the last finished save, reused
};

}  // namespace mobula::io
