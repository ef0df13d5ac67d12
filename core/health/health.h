// Health of a rank: stop signals (preemption) and a progress watchdog.
//
// Stop signals. install_stop_handlers() makes SIGTERM, SIGUSR1 and SIGUSR2 set a flag instead of
// killing the process (SIGUSR1 is Slurm's pre-timeout signal in our batch scripts; SIGTERM is what
// schedulers send before SIGKILL). Workloads poll stop_signal() at step boundaries, agree on it
// across their ranks, save a checkpoint and return Status::preempted() (exit code 3, "preempted,
// restart me"). Async-signal-safe: the handler only stores the signal number.
//
// Watchdog. A thread that ends the process when the rank makes no progress for `timeout_s`:
// every beat(phase, step) is progress. On expiry it logs one line naming the rank, host, phase and
// step where it was stuck, flushes the log and exits with kHangExitCode (4) at once, without
// MPI_Finalize; mpiexec / srun --kill-on-bad-exit then end the other ranks and the launcher's
// restart logic (fault.max_restarts) takes over. A rank that waits for a stopped or dead peer
// makes no progress either, so a SIGSTOPped rank is caught by its peers' watchdogs (the stopped
// one cannot report). Pick the timeout above the longest legitimate wait of any rank (rollouts
// wait for the trainers' warm start, everybody for trainer 0's evaluation).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace mobula::health {

inline constexpr int kPreemptedExitCode = 3;
inline constexpr int kHangExitCode = 4;

void install_stop_handlers();
// The stop signal received so far (0: none).
int stop_signal();
// For tests and fault injection: behave as if `sig` had arrived.
void request_stop(int sig);

class Watchdog {
 public:
  // timeout_s <= 0: disabled (no thread). `who` names the rank in the report ("rank 2/3 host").
  Watchdog(double timeout_s, std::string who);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Progress: the rank is now in `phase` (a string literal: stored, not copied) at `step`.
  void beat(const char* phase, int64_t step = -1);
  // Where an expiry is also recorded as a "watchdog" event (core/metrics/events.h); call before
  // the first beat.
  void record_events(std::string dir, int rank) {
    events_dir_ = std::move(dir);
    rank_ = rank;
  }

 private:
  void run();
  double timeout_s_;
  std::string who_;
  std::string events_dir_;
  int rank_ = -1;
  std::atomic<int64_t> last_ns_{0};
  std::atomic<const char*> phase_{"start"};
  std::atomic<int64_t> step_{-1};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace mobula::health
