// The progress line of `mobula run` on a terminal: "step 123/400 (31%)  ETA 1m20s  acc 0.53  attempt 1",
// redrawn twice a second on stderr from the job's metrics.jsonl while the ranks run. The ranks then
// write their per-step lines to their log files only (MOBULA_PROGRESS_LINE=1, core/runtime/log.h); other
// lines still reach the terminal. Not on a pipe or a file (Slurm's output): plain lines there.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>

namespace mobula::launch {

class ProgressLine {
 public:
  // Follows WORKDIR/metrics.jsonl from its current end (earlier runs' lines are not this run's).
  ProgressLine(const std::string& workdir, int64_t total_steps);
  ~ProgressLine();  // stops, ends the line
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  // Should `mobula run` draw one? stderr is a terminal and MOBULA_PROGRESS is not 0.
  static bool wanted();

 private:
  void loop();
  std::string path_;
  int64_t total_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace mobula::launch
