#include "slurm/slurm_env.h"

#include <cstdlib>
#include <sstream>

#include "core/runtime/environment.h"
#include "core/runtime/process.h"

namespace mobula::slurm {
namespace {
std::string env(const char* n) {
  const char* v = std::getenv(n);
  return v ? v : "";
}
int env_int(const char* n, int def) {
  return static_cast<int>(env_long(n, def));
}
}  // namespace

SlurmEnv SlurmEnv::from_environment() {
  SlurmEnv e;
  e.job_id = env("SLURM_JOB_ID");
  e.in_job = !e.job_id.empty();
  e.in_step = !env("SLURM_STEP_ID").empty();
  e.node_name = env("SLURMD_NODENAME");
  e.job_nodelist = env("SLURM_JOB_NODELIST");
  e.procid = env_int("SLURM_PROCID", -1);
  e.ntasks = env_int("SLURM_NTASKS", -1);
  e.het_group = slurm_het_group();
  e.restart_count = env_int("SLURM_RESTART_COUNT", 0);
  return e;
}

Result<std::vector<std::string>> expand_hostlist(const std::string& expr) {
  auto r = run_capture({"scontrol", "show", "hostnames", expr}, 30);
  if (!r) return r.status();
  if (r->exit_code != 0)
    return Status::external("scontrol show hostnames '" + expr + "' exited " + std::to_string(r->exit_code) + ": " +
                            r->err.substr(0, r->err.find('\n')));
  std::vector<std::string> hosts;
  std::istringstream in(r->out);
  for (std::string h; std::getline(in, h);)
    if (!h.empty()) hosts.push_back(h);
  return hosts;
}

Result<std::vector<int>> parse_tasks_per_node(const std::string& s) {
  std::vector<int> out;
  std::istringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    int count = 0, times = 1;
    char x1 = 0, x2 = 0, x3 = 0;
    std::istringstream it(item);
    if (!(it >> count) || count < 0)
      return Status::invalid_argument("bad tasks-per-node item '" + item + "' in '" + s + "'");
    if (it >> x1) {
      if (x1 != '(' || !(it >> x2) || x2 != 'x' || !(it >> times) || !(it >> x3) || x3 != ')' || times < 1)
        return Status::invalid_argument("bad tasks-per-node item '" + item + "' in '" + s + "'");
    }
    for (int i = 0; i < times; ++i) out.push_back(count);
  }
  if (out.empty()) return Status::invalid_argument("empty tasks-per-node '" + s + "'");
  return out;
}

}  // namespace mobula::slurm
