#include "launch/progress.h"

#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/runtime/time_format.h"
#include "launch/history.h"

namespace mobula::launch {

bool ProgressLine::wanted() {
  const char* v = std::getenv("MOBULA_PROGRESS");
  if (v && std::string(v) == "0") return false;
  return isatty(STDERR_FILENO) == 1;
}

ProgressLine::ProgressLine(const std::string& workdir, int64_t total_steps)
    : path_(workdir + "/metrics.jsonl"), total_(total_steps), thread_([this] { loop(); }) {}

ProgressLine::~ProgressLine() {
  stop_ = true;
  thread_.join();
}

void ProgressLine::loop() {
  using Clock = std::chrono::steady_clock;
  std::error_code ec;
  std::uintmax_t offset = std::filesystem::file_size(path_, ec);
  if (ec) offset = 0;
  std::string partial;
  long long last_step = -1, attempt = -1, first_done = -1;
  double accuracy = -1;
  long long tasks_total = -1;
  Clock::time_point attempt_t0{};
  bool drawn = false;
  for (bool last = false; !last;) {
    last = stop_;  // one more read and draw after the job ended: the final step
    std::ifstream in(path_, std::ios::binary);
    if (in && in.seekg(static_cast<std::streamoff>(offset))) {
      std::string chunk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      offset += chunk.size();
      partial += chunk;
      for (size_t nl; (nl = partial.find('\n')) != std::string::npos; partial.erase(0, nl + 1)) {
        const auto j = nlohmann::json::parse(partial.substr(0, nl), nullptr, false);
        if (j.is_discarded() || !j.is_object()) continue;
        const long long a = j.value("attempt", 0LL);
        if (a != attempt) {  // a relaunch: the rate starts over
          attempt = a;
          attempt_t0 = Clock::now();
          first_done = -1;
        }
        last_step = j.value("step", last_step);
        if (first_done < 0) first_done = last_step + 1;
        accuracy = j.value("accuracy", accuracy);
        tasks_total = j.value("tasks_total", tasks_total);  // curate: tasks, not steps
      }
    }
    if (last_step >= 0) {
      const long long done = last_step + 1;
      const double elapsed = std::chrono::duration<double>(Clock::now() - attempt_t0).count();
      std::string eta = "-";
      const long long total = tasks_total >= 0 ? tasks_total : static_cast<long long>(total_);
      // The rate of this attempt: steps (or tasks) done since its first line, per second.
      if (done > first_done && total > done)
        eta = format_duration(elapsed / double(done - first_done) * double(total - done));
      if (tasks_total >= 0)
        std::fprintf(stderr, "\r\033[K[mobula] tasks %lld/%lld (%.0f%%)  ETA %s  attempt %lld", done, total,
                     100.0 * double(done) / double(std::max(1LL, total)), eta.c_str(), attempt);
      else
        std::fprintf(stderr, "\r\033[K[mobula] step %lld/%lld (%.0f%%)  ETA %s  acc %.2f  attempt %lld", done, total,
                     100.0 * double(done) / double(std::max(1LL, total)), eta.c_str(), accuracy, attempt);
      std::fflush(stderr);
      drawn = true;
    }
    for (int i = 0; i < 5 && !stop_ && !last; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (drawn) std::fputs("\n", stderr);
}

}  // namespace mobula::launch
