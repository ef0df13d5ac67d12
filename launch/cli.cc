#include <CLI/CLI.hpp>
#include <cstdio>

#include "core/config.h"
#include "launch/commands.h"
#include "launch/history.h"
#include "launch/step.h"

namespace mobula::launch {

namespace {
void add_spec_args(CLI::App* c, SpecArgs* a) {
  c->add_option("spec", a->spec, "Job spec (TOML)")->required()->check(CLI::ExistingFile);
  c->add_option("--set", a->sets, "Override a spec value, KEY=VALUE (repeatable), e.g. --set job.steps=10")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}
}  // namespace

int mobula_main(int argc, char** argv) {
  CLI::App app{"mobula " MOBULA_VERSION
               " - RL post-training, direct transport and restartable jobs on Slurm/MPI clusters",
               "mobula"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Help for every subcommand");

  SpecArgs check_a, run_a, worker_a;
  int check_np = 0, run_np = 0;
  bool check_all = false;
  std::vector<std::string> run_mpiexec;

  auto* check = app.add_subcommand("check", "Validate a spec and print the resolved layout (rank -> role -> host)");
  add_spec_args(check, &check_a);
  check->add_option("--np", check_np, "World size to check against (default: the spec's rank total)");
  check->add_flag("--all", check_all, "Also print every resolved key with where it came from");

  auto* run = app.add_subcommand("run", "Run a job on local ranks through mpiexec and wait for it");
  add_spec_args(run, &run_a);
  run->add_option("--np", run_np, "Number of ranks (default: the spec's rank total; must match it)");
  run->add_option("--mpiexec-arg", run_mpiexec, "Extra argument for mpiexec (repeatable)");

  auto* worker = app.add_subcommand("worker", "What every rank runs under mpirun/srun (not started by hand)");
  add_spec_args(worker, &worker_a);

  SpecArgs submit_a;
  bool submit_dry = false;
  auto* submit = app.add_subcommand("submit", "Render the job's sbatch script into its work dir and submit it");
  add_spec_args(submit, &submit_a);
  submit->add_flag("--dry-run", submit_dry, "Print the batch script; write and submit nothing");

  StepOptions step_o;
  std::vector<std::string> step_cmd;
  auto* step = app.add_subcommand(
      "step",
      "Run a job step from a batch script (mobula step -- srun ...) and return its exit code even if srun "
      "hangs after the step ended");
  step->add_option("--grace", step_o.grace_s, "Seconds srun may outlive its finished step (default 15)")
      ->check(CLI::PositiveNumber);
  step->add_option("--record-dir", step_o.record_dir,
                   "Shared directory for the ranks' exit records (default: ./.mobula-step-JOBID-PID)");
  step->add_option("--max-restarts", step_o.max_restarts, "Relaunch a failed step up to N times (default 0)")
      ->check(CLI::Range(0, 100));
  step->add_option("--restart-delay", step_o.restart_delay_s,
                   "Seconds before the first relaunch, doubling each time (default 5)")
      ->check(CLI::NonNegativeNumber);
  step->add_option("--max-requeues", step_o.max_requeues,
                   "A preempted step (exit 3) requeues the job while SLURM_RESTART_COUNT is below N (default 0)")
      ->check(CLI::Range(0, 1000));
  step->add_flag("--require-records", step_o.require_records,
                 "Count srun's exit code 0 only when every rank recorded exit code 0 (the command runs mobula "
                 "workers; srun can exit 0 after a launch that failed on a node)");
  step->add_option("--events", step_o.events_dir, "Directory of the job's events.jsonl (its work dir)");
  step->add_option("--keep-on-failure", step_o.keep_on_failure_s,
                   "Seconds to keep the allocation after a final failure, for attaching (default 0)")
      ->check(CLI::NonNegativeNumber);
  step->add_option("command", step_cmd, "The srun command line, after --")->required()->expected(-1);

  std::string status_job, logs_job, cancel_job;
  auto* status = app.add_subcommand(
      "status", "State of a submitted job (by id or name; newest of that name), or a table of all registered jobs");
  status->add_option("job", status_job, "Job id or name");
  int logs_rank = -1, logs_attempt = -1;
  auto* logs = app.add_subcommand(
      "logs", "Print a job's output: Slurm's (every rank and attempt), or one rank's / one attempt's own log");
  logs->add_option("job", logs_job, "Job id or name, or a job's work dir")->required();
  logs->add_option("--rank", logs_rank, "Only this world rank's log (of --attempt, default the newest)");
  logs->add_option("--attempt", logs_attempt, "Only this attempt's logs (MOBULA_STEP_ATTEMPT)");
  auto* cancel = app.add_subcommand("cancel", "scancel a submitted job by id or name");
  cancel->add_option("job", cancel_job, "Job id or name")->required();

  bool history_no_slurm = false;
  auto* history = app.add_subcommand("history", "Every registered job: status, attempts, start, duration, last step");
  history->add_flag("--no-slurm", history_no_slurm, "Do not ask Slurm about jobs without a job_end event");
  std::string serve_address = "127.0.0.1";
  int serve_port = 8470;
  auto* serve = history->add_subcommand("serve", "Serve the history read-only over HTTP (job table, reports)");
  serve->add_option("--port", serve_port, "Port (default 8470; 0 = any free port)")->check(CLI::Range(0, 65535));
  serve->add_option("--address", serve_address, "Address to listen on (default loopback)");
  std::string show_job, report_job, report_out;
  int show_events = 20;
  auto* show = app.add_subcommand("show", "One job's details: status, attempts, layout, checkpoint, recent events");
  show->add_option("job", show_job, "Job id or name, or a job's work dir")->required();
  show->add_option("--events", show_events, "How many of the last events to print (default 20)")
      ->check(CLI::NonNegativeNumber);
  auto* report = app.add_subcommand("report", "Write a job's self-contained HTML report (plots, timeline, events)");
  report->add_option("job", report_job, "Job id or name, or a job's work dir")->required();
  report->add_option("-o,--output", report_out, "The HTML file to write")->required();

  std::string queue_dir, queue_redis;
  auto* queue = app.add_subcommand("queue", "The task queue of a job's work dir (workload curate; docs/queue.md)");
  queue->require_subcommand(1);
  for (const auto& [name, what] :
       {std::pair<const char*, const char*>{"status", "Pending, leased, done and dead tasks; the dead ones' errors"},
        {"requeue-dead", "Dead tasks back to pending, attempts reset (the job must not run)"},
        {"drain", "Hand out no more tasks (asks a running coordinator)"},
        {"resume", "Undo a drain (the job must not run)"}}) {
    auto* sub = queue->add_subcommand(name, what);
    sub->add_option("dir", queue_dir, "The job's work dir (or, with --redis, the queue's name)")->required();
    sub->add_option("--redis", queue_redis, "HOST:PORT of a Redis backend (curate.backend = redis)");
  }

  app.add_subcommand("version", "Version, compiler and the MPI/HDF5/Kokkos/UCX/NCCL/CUDA found");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "mobula: %s; see mobula --help\n", e.what());
    return 2;
  }
  if (check->parsed()) return cmd_check(check_a, check_np, check_all);
  if (run->parsed()) return cmd_run(run_a, run_np, run_mpiexec);
  if (worker->parsed()) return cmd_worker(worker_a, argc, argv);
  if (submit->parsed()) return cmd_submit(submit_a, submit_dry);
  if (step->parsed()) return cmd_step(step_o, step_cmd);
  if (status->parsed()) return cmd_status(status_job);
  if (logs->parsed()) return cmd_logs(logs_job, logs_rank, logs_attempt);
  if (cancel->parsed()) return cmd_cancel(cancel_job);
  if (queue->parsed()) return cmd_queue(queue->get_subcommands().front()->get_name(), queue_dir, queue_redis);
  if (serve->parsed()) return serve_history(serve_address, serve_port);
  if (history->parsed()) return cmd_history(!history_no_slurm);
  if (show->parsed()) return cmd_show(show_job, show_events);
  if (report->parsed()) return cmd_report(report_job, report_out);
  return cmd_version();
}

}  // namespace mobula::launch
