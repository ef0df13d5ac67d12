// `mobula status [JOB]`, `mobula logs JOB`, `mobula cancel JOB`: jobs found through the registry
// (launch/registry.h), their state from Slurm (scontrol while slurmctld remembers the job, then
// sacct where accounting runs) and from their work dir (log, checkpoints, summary.json).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/runtime/process.h"
#include "launch/commands.h"
#include "launch/history.h"
#include "launch/registry.h"
#include "slurm/jobs.h"

namespace mobula::launch {

namespace fs = std::filesystem;

namespace {

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// What Slurm says about the job: "STATE (reason), restarts N, nodes X, elapsed T", or why not.
std::string slurm_state(const std::string& id, std::string* state) {
  auto j = slurm::show_job(id);
  if (j) {
    *state = j->state;
    std::string s = j->state;
    if (!j->reason.empty() && j->reason != "None") s += " (" + j->reason + ")";
    if (j->terminal()) s += ", exit code " + std::to_string(j->exit_code);
    s += ", requeued " + std::to_string(j->restarts) + " time(s), nodes " + j->nodes + ", elapsed " + j->run_time;
    return s;
  }
  // Gone from slurmctld's memory (MinJobAge): accounting, where it runs. -D lists every requeue.
  auto acct = slurm::accounting(id);
  if (acct && !acct->empty()) {
    const std::string& last = acct->back();
    *state = last.substr(0, last.find('|'));
    return last + " (sacct; " + std::to_string(acct->size()) + " allocation(s))";
  }
  *state = "UNKNOWN";
  return "unknown to Slurm now (scontrol: " + j.status().message() + "; no accounting record)";
}

}  // namespace

int cmd_status(const std::string& key) {
  if (key.empty()) {
    auto all = list_jobs();
    if (!all) {
      std::fprintf(stderr, "mobula status: %s\n", all.status().message().c_str());
      return 1;
    }
    std::printf("%-10s %-24s %-12s %-21s %s\n", "id", "name", "state", "submitted", "work dir");
    for (const auto& r : *all) {
      std::string state;
      if (r.local()) {  // mobula run: its events (or whether its launcher lives)
        auto v = load_job_view(r.workdir);
        state = v ? job_status(r, *v, false) : "NO WORKDIR";
      } else {
        (void)slurm_state(r.id, &state);
      }
      std::printf("%-10s %-24s %-12s %-21s %s\n", r.id.c_str(), r.name.c_str(), state.c_str(), r.submitted.c_str(),
                  r.workdir.c_str());
    }
    return 0;
  }
  auto r = find_job(key);
  if (!r) {
    std::fprintf(stderr, "mobula status: %s\n", r.status().message().c_str());
    return 2;
  }
  if (r->local()) return cmd_show(key, 5);  // no Slurm state: the history's view
  std::string state;
  const std::string s = slurm_state(r->id, &state);
  std::printf("job %s (%s): %s\n", r->id.c_str(), r->name.c_str(), s.c_str());
  std::printf("  work dir  %s\n  log       %s\n", r->workdir.c_str(), r->log().c_str());
  // From the log: the last RL step printed, and the last launcher/worker notice.
  const std::string log = slurp(r->log());
  std::string last_step = "-", notice = "-";
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    if (const auto p = line.find("info: step "); p != std::string::npos) {
      std::istringstream num(line.substr(p + 11));
      long n = -1;
      if (num >> n) last_step = std::to_string(n);
    }
    if (line.rfind("mobula step:", 0) == 0 || line.find("] warning: ") != std::string::npos ||
        line.find("] error: ") != std::string::npos)
      notice = line;
  }
  std::printf("  last step %s\n", last_step.c_str());
  const std::string latest = trim(slurp(r->workdir + "/checkpoints/latest"));
  std::printf("  checkpoint %s\n", latest.empty() ? "-" : latest.c_str());
  std::printf("  finished  %s\n", fs::exists(r->workdir + "/summary.json") ? "yes (summary.json)" : "no");
  std::printf("  last notice %s\n", notice.c_str());
  std::string last_event = "-";
  {
    std::istringstream ev(slurp(r->workdir + "/events.jsonl"));
    for (std::string line; std::getline(ev, line);)
      if (!line.empty()) last_event = line;
  }
  std::printf("  last event %s\n", last_event.c_str());
  return 0;
}

int cmd_logs(const std::string& key, int rank, int attempt) {
  // A registered job (id or name), or a work dir (jobs run with `mobula run` too).
  std::string workdir, combined;
  std::error_code ec;
  if (fs::is_directory(key, ec)) {
    workdir = key;
  } else {
    auto r = find_job(key);
    if (!r) {
      std::fprintf(stderr, "mobula logs: %s (or give the job's work dir)\n", r.status().message().c_str());
      return 2;
    }
    workdir = r->workdir;
    combined = r->log();
  }
  if (rank < 0 && attempt < 0 && !combined.empty()) {  // Slurm's output: every rank, every attempt
    if (!fs::exists(combined, ec)) {
      std::fprintf(stderr, "mobula logs: %s: cannot read (not started yet?)\n", combined.c_str());
      return 1;
    }
    std::fputs(slurp(combined).c_str(), stdout);
    return 0;
  }
  // The ranks' own files: WORKDIR/logs/attempt-A/rank-R.log (newest attempt by default).
  const fs::path logs = fs::path(workdir) / "logs";
  if (attempt < 0) {
    for (const auto& e : fs::directory_iterator(logs, ec)) {
      const std::string n = e.path().filename().string();
      if (n.rfind("attempt-", 0) == 0) attempt = std::max(attempt, std::atoi(n.c_str() + 8));
    }
    if (attempt < 0) {
      std::fprintf(stderr, "mobula logs: no per-rank logs under %s\n", logs.c_str());
      return 1;
    }
  }
  const fs::path dir = logs / ("attempt-" + std::to_string(attempt));
  std::vector<std::pair<int, fs::path>> files;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("rank-", 0) != 0) continue;
    const int r = std::atoi(n.c_str() + 5);
    if (rank < 0 || r == rank) files.push_back({r, e.path()});
  }
  if (files.empty()) {
    std::fprintf(stderr, "mobula logs: no log of %s in %s\n",
                 rank < 0 ? "any rank" : ("rank " + std::to_string(rank)).c_str(), dir.c_str());
    return 1;
  }
  std::sort(files.begin(), files.end());
  for (const auto& [r, path] : files) {
    if (files.size() > 1) std::printf("==> %s <==\n", path.c_str());
    std::fputs(slurp(path).c_str(), stdout);
  }
  return 0;
}

int cmd_cancel(const std::string& key) {
  auto r = find_job(key);
  if (!r) {
    std::fprintf(stderr, "mobula cancel: %s\n", r.status().message().c_str());
    return 2;
  }
  if (Status c = slurm::cancel(r->id); !c.is_ok()) {
    std::fprintf(stderr, "mobula cancel: %s\n", c.message().c_str());
    return 1;
  }
  std::printf("cancelled job %s (%s)\n", r->id.c_str(), r->name.c_str());
  return 0;
}

}  // namespace mobula::launch
