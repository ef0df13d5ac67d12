// `mobula status [JOB]`, `mobula logs JOB`, `mobula cancel JOB`: jobs found through the registry
// (launch/registry.h), their state from Slurm (scontrol while slurmctld remembers the job, then
// sacct where accounting runs) and from their work dir (log, checkpoints, summary.json).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/runtime/process.h"
#include "launch/commands.h"
#include "launch/registry.h"
#include "slurm/jobs.h"

namespace mobula::launch {

namespace fs = std::filesystem;

namespace {

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

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
  auto acct = run_capture({"sacct", "-D", "-X", "-n", "-P", "-j", id, "-o", "State,ExitCode,Elapsed,NodeList"}, 30);
  if (acct && acct->exit_code == 0 && !trim(acct->out).empty()) {
    std::istringstream in(acct->out);
    std::string line, last;
    int allocations = 0;
    while (std::getline(in, line))
      if (!line.empty()) last = line, ++allocations;
    *state = last.substr(0, last.find('|'));
    return last + " (sacct; " + std::to_string(allocations) + " allocation(s))";
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
      (void)slurm_state(r.id, &state);
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
  return 0;
}

int cmd_logs(const std::string& key) {
  auto r = find_job(key);
  if (!r) {
    std::fprintf(stderr, "mobula logs: %s\n", r.status().message().c_str());
    return 2;
  }
  std::ifstream in(r->log(), std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "mobula logs: %s: cannot read (not started yet?)\n", r->log().c_str());
    return 1;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::fputs(ss.str().c_str(), stdout);
  return 0;
}

int cmd_cancel(const std::string& key) {
  auto r = find_job(key);
  if (!r) {
    std::fprintf(stderr, "mobula cancel: %s\n", r.status().message().c_str());
    return 2;
  }
  auto c = run_capture({"scancel", r->id}, 60);
  if (!c || c->exit_code != 0) {
    std::fprintf(stderr, "mobula cancel: scancel %s failed: %s\n", r->id.c_str(),
                 c ? trim(c->err).c_str() : c.status().message().c_str());
    return 1;
  }
  std::printf("cancelled job %s (%s)\n", r->id.c_str(), r->name.c_str());
  return 0;
}

}  // namespace mobula::launch
