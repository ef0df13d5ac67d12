#include "launch/commands.h"

#include "core/runtime/time_format.h"
#include "launch/step.h"
#include "serve/run.h"

#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/metrics/events.h"
#include "core/runtime/build_info.h"
#include "core/runtime/environment.h"
#include "core/runtime/layout.h"
#include "core/runtime/process.h"
#include "core/runtime/spec.h"
#include "core/transport/flows.h"
#include "io/hdf5.h"
#include "launch/progress.h"
#include "launch/registry.h"
#include "slurm/slurm_env.h"

namespace mobula::launch {

namespace {

int fail(const Status& s) {
  std::fprintf(stderr, "%s\n", s.message().c_str());
  return s.exit_code();
}

// Hosts for `check`: inside a Slurm allocation, srun's default block distribution over the job's
// nodes; otherwise every rank runs on this host (mobula run).
std::vector<std::string> predicted_hosts(int np, std::string* note) {
  const auto env = slurm::SlurmEnv::from_environment();
  const char* tpn = std::getenv("SLURM_TASKS_PER_NODE");
  if (env.in_job && !env.job_nodelist.empty() && tpn) {
    auto hosts = slurm::expand_hostlist(env.job_nodelist);
    auto counts = slurm::parse_tasks_per_node(tpn);
    if (hosts && counts && hosts->size() == counts->size()) {
      std::vector<std::string> out;
      for (size_t i = 0; i < hosts->size() && static_cast<int>(out.size()) < np; ++i)
        for (int k = 0; k < (*counts)[i] && static_cast<int>(out.size()) < np; ++k) out.push_back((*hosts)[i]);
      *note = "hosts: srun block distribution over Slurm job " + env.job_id;
      if (static_cast<int>(out.size()) == np) return out;
    }
  }
  *note = "hosts: local run (mobula run); under srun, Slurm assigns them";
  return std::vector<std::string>(static_cast<size_t>(np), host_name());
}

}  // namespace

std::string self_exe() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("mobula") : p.string();
}

std::vector<std::string> local_mpiexec(int np) {
  std::string mpiexec = MOBULA_MPIEXEC;
  if (mpiexec.empty()) mpiexec = "mpiexec";
  if (const char* m = std::getenv("MOBULA_MPIEXEC"); m && *m) mpiexec = m;
  return {mpiexec, "-np", std::to_string(np), "--oversubscribe", "--bind-to", "none",
          // CMA single-copy needs ptrace rights that containers often deny.
          "--mca", "btl_vader_single_copy_mechanism", "none"};
}

int cmd_check(const SpecArgs& a, int np, bool all_keys) {
  auto spec = load_spec(a.spec, a.sets);
  if (!spec) return fail(spec.status());
  if (Status s = validate_transports(*spec); !s) return fail(s);
  const int world = np > 0 ? np : spec->total_ranks();
  auto layout = Layout::make(*spec, world);
  if (!layout) return fail(layout.status());
  std::printf("spec       %s (hash %s)\n", spec->file.c_str(), spec->hash().c_str());
  std::printf("job        %s: workload %s, %lld steps, seed %lld, workdir %s\n", spec->name.c_str(),
              spec->workload.c_str(), static_cast<long long>(spec->steps), static_cast<long long>(spec->seed),
              spec->workdir.c_str());
  std::string roles, links;
  for (const auto& r : spec->roles) roles += (roles.empty() ? "" : ", ") + r.name + " " + std::to_string(r.ranks);
  for (const auto& [x, y] : layout->links()) links += (links.empty() ? "" : ", ") + x + "+" + y;
  std::printf("ranks      %d: %s\n", world, roles.c_str());
  std::printf("links      %s\n", links.empty() ? "none" : links.c_str());
  std::printf("transport  weights=%s rollouts=%s gradients=%s\n", spec->transport.weights.c_str(),
              spec->transport.rollouts.c_str(), spec->transport.gradients.c_str());
  if (all_keys) {
    std::printf("\nkeys:\n");
    for (const auto& k : spec->keys())
      std::printf("  %-26s = %-20s # %s\n", k.def->path.c_str(), value_to_string(k.value).c_str(), k.origin.c_str());
  }
  std::string note;
  const auto hosts = predicted_hosts(world, &note);
  std::printf("\n%s(%s)\n", layout->table(hosts).c_str(), note.c_str());
  return 0;
}

int cmd_run(const SpecArgs& a, int np, const std::vector<std::string>& mpiexec_args) {
  auto spec = load_spec(a.spec, a.sets);
  if (!spec) return fail(spec.status());
  if (Status s = validate_transports(*spec); !s) return fail(s);
  const int world = np > 0 ? np : spec->total_ranks();
  if (auto layout = Layout::make(*spec, world); !layout) return fail(layout.status());

  std::vector<std::string> argv = local_mpiexec(world);
  for (const auto& x : mpiexec_args) argv.push_back(x);
  argv.insert(argv.end(), {self_exe(), "worker", a.spec});
  for (const auto& s : a.sets) argv.insert(argv.end(), {"--set", s});

  std::vector<std::string> env;
  if (geteuid() == 0) env.insert(env.end(), {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"});
  std::fprintf(stderr, "mobula run: %s\n", join_command(argv).c_str());
  // The job's event journal (core/metrics/events.h) lives in its work dir.
  std::error_code ec;
  std::filesystem::create_directories(spec->workdir, ec);
  // The registry (launch/registry.h) lists it for `mobula history|show|report|logs`.
  {
    JobRecord rec;
    const std::string now = utc_now(/*millis=*/false);
    std::string stamp;
    for (char c : now)
      if (std::isdigit(static_cast<unsigned char>(c)) || c == 'T') stamp += c;
    rec.id = "local-" + stamp + "-" + std::to_string(getpid());
    rec.name = spec->name;
    rec.workdir = std::filesystem::absolute(spec->workdir, ec).lexically_normal().string();
    rec.spec = std::filesystem::absolute(a.spec, ec).string();
    rec.submitted = now;
    rec.launcher = "local";
    char host[256] = {0};
    if (gethostname(host, sizeof host - 1) == 0) rec.host = host;
    rec.pid = static_cast<long>(getpid());
    if (Status reg = register_job(rec); !reg.is_ok())
      std::fprintf(stderr, "mobula run: warning: %s (the job runs unregistered)\n", reg.message().c_str());
  }
  // On a terminal: a progress line instead of a log line per step (launch/progress.h).
  std::unique_ptr<ProgressLine> progress;
  if (ProgressLine::wanted() && spec->workload == "grpo") {
    env.emplace_back("MOBULA_PROGRESS_LINE=1");
    progress = std::make_unique<ProgressLine>(spec->workdir, spec->steps);
  }
  const int code = with_restarts("mobula run", spec->fault.max_restarts, spec->fault.restart_delay_s, [&](int attempt) {
    auto e = env;
    e.push_back("MOBULA_STEP_ATTEMPT=" + std::to_string(attempt));
    setenv("MOBULA_STEP_ATTEMPT", std::to_string(attempt).c_str(), 1);  // for the launcher's own events
    events::emit(spec->workdir, "attempt_start", {{"launcher", events::str("mobula run")}});
    auto rc = run_inherit(argv, e);
    if (!rc) {
      fail(rc.status());
      events::emit(spec->workdir, "attempt_end",
                   {{"exit_code", events::num(2)}, {"outcome", events::str("not started")}});
      return 2;  // mpiexec could not start: no relaunch
    }
    if (*rc != 0) std::fprintf(stderr, "mobula run: job %s exited with %d\n", spec->name.c_str(), *rc);
    events::emit(spec->workdir, "attempt_end",
                 {{"exit_code", events::num(*rc)}, {"outcome", events::str(outcome_of(*rc))}});
    return *rc;
  });
  progress.reset();
  events::emit(spec->workdir, "job_end",
               {{"exit_code", events::num(code)}, {"outcome", events::str(outcome_of(code))}});
  return code;
}

int cmd_serve(const SpecArgs& a) {
  if (a.spec.empty()) {
    std::fprintf(stderr,
                 "mobula serve: a spec is required (mobula serve SPEC, or mobula serve token ...); see --help\n");
    return 2;
  }
  auto spec = load_spec(a.spec, a.sets);
  if (!spec) {
    std::fprintf(stderr, "%s\n", spec.status().message().c_str());
    return spec.status().exit_code();
  }
  if (spec->workload != "serve") {
    std::fprintf(stderr, "%s: job.workload: \"%s\"; mobula serve runs specs with job.workload = \"serve\"\n",
                 spec->where("job.workload").c_str(), spec->workload.c_str());
    return 2;
  }
  return cmd_run(a, 0, {});
}

int cmd_serve_token(const std::string& action, const SpecArgs& a, const std::string& name) {
  auto spec = load_spec(a.spec, a.sets);
  if (!spec) {
    std::fprintf(stderr, "%s\n", spec.status().message().c_str());
    return spec.status().exit_code();
  }
  return serve::cmd_token(action, *spec, name);
}

const char* outcome_of(int code) {
  switch (code) {
    case 0:
      return "completed";
    case 2:
      return "bad input";
    case 3:
      return "preempted";
    case 4:
      return "stuck rank";
    default:
      return "failed";
  }
}

int cmd_version() {
  for (const auto& [k, v] : core_build_info()) std::printf("%-9s %s\n", k.c_str(), v.c_str());
  std::printf("%-9s %s\n", "hdf5", io::hdf5_version().c_str());
  return 0;
}

}  // namespace mobula::launch
