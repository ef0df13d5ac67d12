// Running external programs (mpiexec, sbatch, squeue, scontrol, ...): no shell, argv only, every
// failure reported with the command line. Not for use between MPI_Init and MPI_Finalize on ranks
// whose MPI forbids fork() (the launcher calls these before starting MPI).
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/runtime/status.h"

namespace mobula {

struct ProcessResult {
  int exit_code = 0;  // exit status, or 128 + signal number when killed by a signal
  std::string out;    // captured stdout (run_capture only)
  std::string err;    // captured stderr (run_capture only)
};

// Runs argv[0] (looked up in PATH) and captures stdout/stderr. Fails (Status) when the program
// cannot be started or runs longer than timeout_s (it is then killed).
Result<ProcessResult> run_capture(const std::vector<std::string>& argv, double timeout_s = 60.0);

// Runs argv with inherited stdio and extra environment (NAME=VALUE), forwarding SIGINT/SIGTERM/
// SIGUSR1 to the child; returns its exit code (128 + signal when killed).
Result<int> run_inherit(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env = {});

// The last signal run_inherit / run_inherit_watched forwarded to a child (0: none): the launcher
// itself was asked to stop.
int forwarded_signal();

// As run_inherit, and every poll_s seconds while the child runs, calls watch(); when it returns
// true the child gets SIGTERM, then SIGKILL after kill_grace_s. `*killed` says whether that happened.
struct Watch {
  std::function<bool()> should_kill;
  double poll_s = 1.0;
  double kill_grace_s = 5.0;
  bool* killed = nullptr;
};
Result<int> run_inherit_watched(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
                                const Watch& watch);

// "a b 'c d'": POSIX-shell quoting (every character outside [A-Za-z0-9_./=:,+-@%] is quoted), for
// messages and rendered scripts.
std::string join_command(const std::vector<std::string>& argv);

}  // namespace mobula
