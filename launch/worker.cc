// `mobula worker SPEC`: the program every rank runs under mpirun or srun.
//
//  1. MPI + Kokkos up (Environment), log tag "[rank r/N host]".
//  2. Every rank parses the spec (deterministic, so no broadcast is needed) and computes the layout
//     from the world size and, under a Slurm heterogeneous step, every rank's het group.
//  3. Role and link communicators are split off MPI_COMM_WORLD; log tag becomes "[role r/R host]".
//  4. The workload runs; its Status is identical on all ranks.
// Spec and layout errors are identical on every rank: rank 0 prints the one-line message, all
// ranks exit 2 without MPI_Abort. Runtime failures that might leave peers inside a collective end
// with MPI_Abort so the job never hangs.
#include <mpi.h>

#include <Kokkos_Core.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>

#include "core/config.h"
#include "core/metrics/events.h"
#include "core/runtime/blas_cpu.h"
#include "core/runtime/environment.h"
#include "core/runtime/layout.h"
#include "core/runtime/log.h"
#include "core/runtime/mpi.h"
#include "core/runtime/role_comms.h"
#include "core/runtime/spec.h"
#include "core/transport/flows.h"
#include "launch/commands.h"
#include "launch/step.h"
#include "rl/roles/workload.h"
#include "serve/run.h"

namespace mobula::launch {

namespace {

constexpr int kHostLen = 64;

Result<std::vector<int>> gather_het_groups(const Environment& env) {
  std::vector<int> groups(static_cast<size_t>(env.size()), -1);
  int mine = env.het_group();
  MOBULA_MPI(MPI_Allgather(&mine, 1, MPI_INT, groups.data(), 1, MPI_INT, MPI_COMM_WORLD));
  return groups;
}

Result<std::vector<std::string>> gather_hosts(const Environment& env) {
  char mine[kHostLen] = {0};
  std::strncpy(mine, env.host().c_str(), kHostLen - 1);
  std::vector<char> all(static_cast<size_t>(env.size()) * kHostLen, 0);
  MOBULA_MPI(MPI_Allgather(mine, kHostLen, MPI_CHAR, all.data(), kHostLen, MPI_CHAR, MPI_COMM_WORLD));
  std::vector<std::string> hosts;
  for (int r = 0; r < env.size(); ++r) hosts.emplace_back(&all[static_cast<size_t>(r) * kHostLen]);
  return hosts;
}

Status make_workdir(const JobSpec& spec, int rank) {
  int ok = 1;
  std::string err;
  if (rank == 0) {
    std::error_code ec;
    std::filesystem::create_directories(spec.workdir, ec);
    if (ec) ok = 0, err = ec.message();
  }
  MOBULA_MPI(MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD));
  if (!ok)
    return Status::invalid_spec(spec.where("job.workdir") + ": job.workdir: cannot create '" + spec.workdir + "'" +
                                (err.empty() ? "" : ": " + err) + "; choose a writable directory");
  return Status::ok();
}

// Runs everything after MPI is up. Returns the status every rank agrees on, or a local failure.
Status run_rank(const SpecArgs& a, const Environment& env) {
  auto spec = load_spec(a.spec, a.sets);
  if (!spec) return spec.status();
  // Before any math: the BLAS thread count is the spec's, not the launcher's environment's.
  if (Status t = set_blas_threads(spec->threads); !t.is_ok())
    return Status::invalid_spec(spec->where("job.threads") + ": " + t.message());
  MOBULA_RETURN_IF_ERROR(validate_transports(*spec));
  auto groups = gather_het_groups(env);
  if (!groups) return groups.status();
  auto layout = Layout::make(*spec, env.size(), *groups);
  if (!layout) return layout.status();
  auto hosts = gather_hosts(env);
  if (!hosts) return hosts.status();
  MOBULA_RETURN_IF_ERROR(make_workdir(*spec, env.rank()));

  const Placement& me = layout->at(env.rank());
  set_log_tag(me.role + " " + std::to_string(me.role_rank) + "/" + std::to_string(me.role_size) + " " + env.host());
  // Every rank also keeps its own log per attempt in the work dir (docs/observability.md).
  const std::string own_log = spec->workdir + "/logs/attempt-" + std::to_string(env_long("MOBULA_STEP_ATTEMPT", 0)) +
                              "/rank-" + std::to_string(env.rank()) + ".log";
  if (Status lf = add_log_file(own_log); !lf.is_ok()) spdlog::warn("{}", lf.message());
  if (env.rank() == 0) {
    spdlog::info("job {} (spec {} hash {}), {} ranks, workload {}", spec->name, spec->file, spec->hash(), env.size(),
                 spec->workload);
    std::string table = layout->table(*hosts);
    table.pop_back();
    spdlog::info("layout:\n{}", table);
    for (const FlowKey& f : kFlowKeys) {
      auto r = resolve_flow(*spec, f.flow, MemoryPlace::kHost);
      if (r) spdlog::info("{} = {} -> {}", f.key, spec->transport.*f.choice, *r);
    }
    if (const std::string blas = blas_description(); !blas.empty()) spdlog::info("blas: {}", blas);
    spdlog::info("threads per rank: job.threads = {} (BLAS {}, Kokkos host {})", spec->threads, blas_threads(),
                 Kokkos::DefaultHostExecutionSpace().concurrency());
  }
  auto comms = RoleComms::create(MPI_COMM_WORLD, *layout);
  if (!comms) return comms.status();
  // The progress watchdog (core/health): ends this rank (exit 4) when it is stuck so that the
  // job restarts; stopped before MPI_Finalize.
  health::Watchdog watchdog(spec->fault.hang_timeout_s, "rank " + std::to_string(env.rank()) + " (" + me.role + " " +
                                                            std::to_string(me.role_rank) + ", host " + env.host() +
                                                            ")");
  watchdog.record_events(spec->workdir, env.rank());
  if (env.rank() == 0) {
    std::string host_list = "[";
    for (size_t i = 0; i < hosts->size(); ++i) host_list += (i ? ", " : "") + events::str((*hosts)[i]);
    std::string roles = "[";  // role of each world rank: the layout table of `mobula show` / report
    for (const auto& p : layout->ranks()) roles += (p.rank ? ", " : "") + events::str(p.role);
    events::emit(spec->workdir, "job_start",
                 {{"name", events::str(spec->name)},
                  {"spec", events::str(spec->file)},
                  {"spec_hash", events::str(spec->hash())},
                  {"workload", events::str(spec->workload)},
                  {"ranks", events::num(env.size())},
                  {"threads", events::num(spec->threads)},
                  {"blas_threads", events::num(blas_threads())},
                  {"hosts", host_list + "]"},
                  {"roles", roles + "]"},
                  {"mobula_version", events::str(MOBULA_VERSION)}},
                 0);
  }
  // Metrics (core/metrics/aggregate.h): every rank's registry reaches rank 0 at step boundaries;
  // rank 0 serves them to Prometheus when metrics.port is set.
  auto agg = metrics::Aggregator::create(MPI_COMM_WORLD, me.role, spec->metrics.interval_s);
  if (!agg) return agg.status();
  const char* attempt = std::getenv("MOBULA_STEP_ATTEMPT");
  metrics::registry()
      .gauge("mobula_attempt", "Launch number of this attempt (MOBULA_STEP_ATTEMPT; 0 first)")
      .set(attempt ? std::atof(attempt) : 0.0);
  std::unique_ptr<metrics::MetricsServer> server;
  if (env.rank() == 0 && spec->metrics.port != 0) {
    auto s = metrics::MetricsServer::start(spec->metrics.address, spec->metrics.port, **agg);
    if (!s) {
      spdlog::warn("{} (the job goes on without it)", s.status().message());
    } else {
      server = std::move(s).value();
      spdlog::info("metrics: Prometheus endpoint at {}", server->url());
      events::emit(spec->workdir, "metrics_endpoint", {{"url", events::str(server->url())}}, 0);
    }
  }
  rl::WorkloadContext ctx{*spec, *layout, *comms, MPI_COMM_WORLD, env.rank(), &watchdog, agg->get()};
  // The service is not an rl workload: it lives above rl (serve/), on one rank.
  Status st = spec->workload == "serve" ? serve::run_serve(ctx) : rl::run_workload(ctx);
  if (st.is_ok() || st.code() == Status::Code::kPreempted) {  // agreed on every rank: all are here
    if (Status f = (*agg)->finish(std::chrono::seconds(10)); !f.is_ok()) spdlog::warn("{}", f.message());
  }
  return st;
}

}  // namespace

int cmd_worker(const SpecArgs& a, int argc, char** argv) {
  // SIGTERM / SIGUSR1 / SIGUSR2 (Slurm's pre-timeout signal, a scheduler's stop) ask the workload to
  // checkpoint at the next step boundary and exit 3 (core/health).
  health::install_stop_handlers();
  int rank = -1, size = 0;
  const int rc = [&] {
    // job.threads sets Kokkos' host threads at initialisation, so the spec is read first; its
    // errors are reported by run_rank, once MPI is up.
    int threads = 1;
    if (auto pre = load_spec(a.spec, a.sets); pre.is_ok()) threads = pre->threads;
    auto env = Environment::init(&argc, &argv, threads);
    if (!env) {
      std::fprintf(stderr, "mobula worker: %s\n", env.status().message().c_str());
      return 1;
    }
    rank = (*env)->rank();
    size = (*env)->size();
    init_logging("rank " + std::to_string(rank) + "/" + std::to_string(size) + " " + (*env)->host());
    const Status st = run_rank(a, **env);
    if (st.is_ok()) {
      if (health::stop_signal() && rank == 0)
        spdlog::warn("received signal {} during the run; the workload had no step boundary left and finished",
                     health::stop_signal());
      return 0;
    }
    if (st.code() == Status::Code::kPreempted) {  // agreed by every rank at a step boundary
      if (rank == 0) spdlog::warn("{}", st.message());
      return st.exit_code();
    }
    if (st.code() == Status::Code::kInvalidSpec || st.code() == Status::Code::kInvalidArgument) {
      // Deterministic on every rank: one line from rank 0, clean exit everywhere.
      if (rank == 0) std::fprintf(stderr, "%s\n", st.message().c_str());
      return st.exit_code();
    }
    if (!st.logged()) spdlog::error("{}", st.message());  // the workload logs its own failure first
    spdlog::shutdown();
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }();  // MPI_Finalize ran here (Environment's destructor)
  if (rank >= 0) {
    if (const char* dir = std::getenv(kStepRecordDirEnv); dir && *dir) {
      const Status st = write_step_record(dir, {rank, size, rc});
      if (!st.is_ok()) std::fprintf(stderr, "mobula worker: rank %d: %s\n", rank, st.message().c_str());
    }
  }
  return rc;
}

}  // namespace mobula::launch
