#include <CLI/CLI.hpp>
#include <cstdio>

#include "core/config.h"
#include "launch/commands.h"
#include "launch/history.h"
#include "launch/scale_study.h"
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

  ScaleStudyOptions scale_o;
  auto* scale = app.add_subcommand(
      "scale-study",
      "Run a spec over a sweep of rank counts (resumable), fit the cost model, write points.csv and an HTML page");
  scale->add_option("spec", scale_o.spec, "Job spec (TOML)")->check(CLI::ExistingFile);
  scale->add_option("--set", scale_o.sets, "Override a spec value for every point, KEY=VALUE (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  scale
      ->add_option("--sweep", scale_o.sweeps,
                   "NAME=V1,V2,...: a role's ranks (trainers, rollouts, embed), nodes, or a spec key (repeatable; "
                   "the points are every combination)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  scale->add_option("--mode", scale_o.mode, "strong (the batch stays) or weak (it grows with the first role axis)")
      ->check(CLI::IsMember({"strong", "weak"}));
  scale->add_option("--repeats", scale_o.repeats, "Runs per point (medians; default 1)")->check(CLI::Range(1, 100));
  scale->add_option("-o,--out", scale_o.out, "Study directory (default: the spec's work dir + -scale)");
  scale->add_flag("--slurm", scale_o.slurm, "Run each point as a Slurm job, one after the other (afterany)");
  bool scale_no_cal = false;
  scale->add_flag("--no-calibrate", scale_no_cal,
                  "Skip the communication benchmarks (the model uses the base point's)");
  scale->add_option("--point-timeout", scale_o.point_timeout_s, "Seconds one run may take (default 3600)")
      ->check(CLI::PositiveNumber);
  scale->add_option("--bench-dir", scale_o.bench_dir, "Where bench_transport and bench_checkpoint are (build/perf)");
  std::string fit_dir;
  auto* scale_fit = scale->add_subcommand("fit", "Refit the model and redraw a study directory from its CSV files");
  scale_fit->add_option("dir", fit_dir, "The study directory")->required();
  ProjectOptions proj_o;
  auto* scale_proj = scale->add_subcommand("project", "Project a GRPO step to large clusters (docs/scaling.md)");
  scale_proj->add_option("--models", proj_o.models, "Model sizes (default 1B,8B,70B)");
  scale_proj->add_option("--gpus", proj_o.gpus, "GPU counts (default 64,...,4096)");
  scale_proj->add_option("--link-gbs", proj_o.a.link_gbs, "GB/s per GPU between nodes (default 25)")
      ->check(CLI::PositiveNumber);
  scale_proj->add_option("--alpha-us", proj_o.a.alpha_us, "Latency per message in us (default 5)")
      ->check(CLI::NonNegativeNumber);
  scale_proj->add_option("--tflops", proj_o.a.gpu_tflops, "Peak TFLOP/s per GPU (default 989)")
      ->check(CLI::PositiveNumber);
  scale_proj->add_option("--mfu", proj_o.a.mfu, "Training MFU (default 0.4)")->check(CLI::Range(0.01, 1.0));
  scale_proj->add_option("--tokens-per-gpu", proj_o.a.tokens_per_gpu, "Trained tokens per trainer GPU per step")
      ->check(CLI::PositiveNumber);
  scale_proj->add_option("--ckpt-every", proj_o.a.ckpt_every, "Steps per checkpoint (0: none)")
      ->check(CLI::NonNegativeNumber);
  scale_proj->add_option("-o,--out", proj_o.out, "Also write the table as CSV");

  SpecArgs serve_a;
  std::string token_name;
  auto* svc = app.add_subcommand(
      "serve", "The multi-tenant training service (workload serve: LoRA adapters, HTTP API; docs/serve.md)");
  svc->add_option("spec", serve_a.spec, "Job spec (TOML) with job.workload = \"serve\"")->check(CLI::ExistingFile);
  svc->add_option("--set", serve_a.sets, "Override a spec value, KEY=VALUE (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  auto* token = svc->add_subcommand("token", "Client tokens of a service's state (create prints one once)");
  token->require_subcommand(1);
  SpecArgs token_a;
  for (const char* action : {"create", "list", "revoke"}) {
    auto* t = token->add_subcommand(action, std::string(action) + " a client's token");
    add_spec_args(t, &token_a);
    if (std::string(action) != "list") t->add_option("--name", token_name, "The client's name")->required();
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
  if (token->parsed()) return cmd_serve_token(token->get_subcommands().front()->get_name(), token_a, token_name);
  if (svc->parsed()) return cmd_serve(serve_a);
  if (history->parsed()) return cmd_history(!history_no_slurm);
  if (show->parsed()) return cmd_show(show_job, show_events);
  if (report->parsed()) return cmd_report(report_job, report_out);
  if (scale_fit->parsed()) return cmd_scale_fit(fit_dir);
  if (scale_proj->parsed()) return cmd_scale_project(proj_o);
  if (scale->parsed()) {
    if (scale_o.spec.empty()) {
      std::fprintf(stderr, "mobula scale-study: a spec is required (or: scale-study fit DIR | project); see --help\n");
      return 2;
    }
    scale_o.calibrate = !scale_no_cal;
    return cmd_scale_study(scale_o);
  }
  return cmd_version();
}

}  // namespace mobula::launch
