#include "launch/scale_study.h"

#include <sched.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/config.h"
#include "core/runtime/files.h"
#include "core/runtime/layout.h"
#include "core/runtime/process.h"
#include "core/runtime/spec.h"
#include "core/transport/flows.h"
#include "launch/commands.h"
#include "slurm/jobs.h"

namespace mobula::launch {

namespace fs = std::filesystem;
using nlohmann::json;
using scaling::PointRow;

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, sep);) out.push_back(x);
  return out;
}

bool schema_has(const std::string& key) {
  for (const auto& k : spec_schema())
    if (k.path == key) return true;
  return false;
}

struct Axis {
  std::string name, key;
  std::vector<std::string> values;
  bool role = false;
};

// "trainers=1,2,4" -> roles.trainer.ranks with 1, 2, 4.
Result<Axis> parse_axis(const std::string& s) {
  const auto eq = s.find('=');
  Axis a;
  if (eq == std::string::npos || eq == 0 || eq + 1 == s.size())
    return Status::invalid_argument("--sweep " + s + ": expected NAME=V1,V2,... (e.g. trainers=1,2,4)");
  a.name = s.substr(0, eq);
  a.values = split(s.substr(eq + 1), ',');
  const std::string singular = a.name.size() > 1 && a.name.back() == 's' ? a.name.substr(0, a.name.size() - 1) : "";
  if (a.name.find('.') != std::string::npos) {
    a.key = a.name;
  } else if (a.name == "nodes") {
    a.key = "slurm.nodes";
  } else if (schema_has("roles." + a.name + ".ranks")) {
    a.key = "roles." + a.name + ".ranks", a.role = true;
  } else if (!singular.empty() && schema_has("roles." + singular + ".ranks")) {
    a.key = "roles." + singular + ".ranks", a.role = true;
  }
  if (a.key.empty() || !schema_has(a.key))
    return Status::invalid_argument("--sweep " + s + ": '" + a.name +
                                    "' is neither a role (trainers, rollouts, embed), nodes, nor a spec key");
  for (const std::string& v : a.values)
    if (v.empty()) return Status::invalid_argument("--sweep " + s + ": an empty value");
  if (a.role)
    for (const std::string& v : a.values)
      if (v.find_first_not_of("0123456789") != std::string::npos)
        return Status::invalid_argument("--sweep " + s + ": '" + v + "' is not a rank count");
  return a;
}

std::string safe_id(const std::string& s) {
  std::string o;
  for (char c : s) o += std::isalnum(static_cast<unsigned char>(c)) || c == '.' ? c : '_';
  return o;
}

int affinity_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  return CPU_COUNT(&set);
}

int fail(const Status& s) {
  std::fprintf(stderr, "%s\n", s.message().c_str());
  return s.exit_code();
}

Result<json> read_json(const fs::path& p) {
  std::ifstream in(p);
  if (!in) return Status::not_found(p.string() + ": missing");
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Status::io(p.string() + ": not a JSON object");
  return j;
}

double num(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

// ---------------------------------------------------------------------------------------------
// The study: its points, its runs, their files.

struct Run {
  const SweepPoint* point = nullptr;
  int repeat = 0;
  fs::path dir;                   // the run's job work dir
  std::vector<std::string> sets;  // the point's, the run's work dir, the shared data dir
  std::string spec_hash;          // of the resolved spec: a changed spec or --set reruns the point
  PointRow layout;                // the resolved spec's columns of points.csv (roles, ranks, batch, ...)
};

struct Study {
  ScaleStudyOptions o;
  JobSpec base;
  fs::path out;
  std::vector<SweepPoint> points;
  std::vector<Run> runs;  // repeat-major: every point once, then again (drift spreads evenly)
};

fs::path result_file(const Run& r) {
  return r.dir / "study-result.json";
}

// A run is measured when it ended with exit code 0 for the spec it has now.
bool measured(const Run& r) {
  auto j = read_json(result_file(r));
  return j && (*j).value("spec_hash", "") == r.spec_hash && num(*j, "exit_code") == 0 &&
         fs::exists(r.dir / "summary.json");
}

Status record_result(const Run& r, int exit_code, const std::string& log) {
  if (!log.empty()) MOBULA_RETURN_IF_ERROR(write_file_atomically(r.dir / "study-run.log", log));
  const json j = {{"spec_hash", r.spec_hash}, {"exit_code", exit_code}, {"cores", affinity_cores()}};
  return write_file_atomically(result_file(r), j.dump(2) + "\n");
}

// The row of points.csv for one run (its summary.json and the harness's record of it).
PointRow row_of(const Study& s, const Run& r) {
  PointRow row;
  row.point = r.point->label;
  row.repeat = r.repeat;
  row.mode = s.o.mode;
  row.workload = s.base.workload;
  auto res = read_json(result_file(r));
  row.exit_code = res ? static_cast<int>(num(*res, "exit_code")) : -1;
  row.cores = res ? static_cast<int>(num(*res, "cores")) : 0;
  row.trainers = r.layout.trainers, row.rollouts = r.layout.rollouts, row.embed = r.layout.embed;
  row.ranks = r.layout.ranks, row.nodes = r.layout.nodes, row.ckpt_every = r.layout.ckpt_every;
  row.batch = r.layout.batch;
  auto sum = read_json(r.dir / "summary.json");
  if (row.exit_code != 0 || !sum) return row;
  const json& j = *sum;
  row.params_fnv1a = j.value("params_fnv1a", "");
  row.param_bytes = 4 * num(j, "params");
  row.wall_s = num(j, "wall_s");
  if (s.base.workload == "grpo") {
    // Medians over the steps (summary.json "steps"): a descheduled rank's outlier step does not move them.
    row.steps = num(j, "rl_steps") - num(j, "first_step");
    const json steps = j.contains("steps") && j["steps"].is_array() ? j["steps"] : json::array();
    auto med = [&](const char* key, double scale = 1) {
      std::vector<double> v;
      for (const json& st : steps) v.push_back(num(st, key) * scale);
      std::sort(v.begin(), v.end());
      return v.empty() ? 0.0 : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
    };
    row.step_s = med("step_s");
    row.tokens_per_s = row.step_s > 0 ? med("completion_tokens") / row.step_s : 0;
    row.sample_s = med("sample_s");
    row.reward_s = med("reward_s");
    row.transfer_s = med("transfer_s");
    row.train_s = med("train_s");
    row.sync_s = med("sync_ms", 1e-3);
    row.ckpt_s = med("checkpoint_s");
    row.stall_s = med("wait_s");
  } else {  // latent-pretrain: the embed ranks' encoding is its producer phase ("sample_s")
    row.steps = num(j, "steps") - num(j, "first_step");
    const double n = std::max(1.0, row.steps);
    row.step_s = row.wall_s / n;
    row.samples_per_s = num(j, "samples_per_s");
    row.sample_s = num(j, "encode_s") / n;
    row.train_s = num(j, "train_s") / n;
    row.stall_s = num(j, "wait_s") / n;
  }
  row.steps_per_s = row.step_s > 0 ? 1 / row.step_s : 0;
  row.other_s = std::max(
      0.0, row.step_s - (row.sample_s + row.reward_s + row.transfer_s + row.train_s + row.sync_s + row.ckpt_s));
  return row;
}

Status write_points(const Study& s) {
  std::string text;
  for (const std::string& c : scaling::point_columns()) text += (text.empty() ? "" : ",") + c;
  text += "\n";
  for (const Run& r : s.runs)
    if (fs::exists(result_file(r))) text += scaling::point_line(row_of(s, r)) + "\n";
  return write_file_atomically(s.out / "points.csv", text);
}

Result<std::vector<BatchKey>> batch_keys(const JobSpec& spec, const std::string& mode) {
  if (mode == "strong") return std::vector<BatchKey>{};
  if (mode != "weak") return Status::invalid_argument("--mode " + mode + ": expected strong or weak");
  if (spec.workload == "grpo")
    return std::vector<BatchKey>{{"rl.prompts_per_step", spec.rl.prompts_per_step},
                                 {"rl.warm_start_batch", spec.rl.warm_start_batch}};
  if (spec.workload == "latent-pretrain") return std::vector<BatchKey>{{"latent.batch", spec.latent.batch}};
  return Status::invalid_argument("--mode weak: workload " + spec.workload +
                                  " has no batch key to grow; use --mode strong, or sweep its size key yourself");
}

Result<Study> make_study(const ScaleStudyOptions& o) {
  Study s;
  s.o = o;
  auto base = load_spec(o.spec, o.sets);
  if (!base) return base.status();
  s.base = *base;
  if (o.repeats < 1) return Status::invalid_argument("--repeats " + std::to_string(o.repeats) + ": at least 1");
  auto keys = batch_keys(s.base, o.mode);
  if (!keys) return keys.status();
  auto points = sweep_points(o.sweeps, o.mode, *keys);
  if (!points) return points.status();
  s.points = std::move(*points);
  std::error_code ec;
  s.out = fs::absolute(o.out.empty() ? s.base.workdir + "-scale" : o.out, ec).lexically_normal();
  for (int rep = 1; rep <= o.repeats; ++rep)
    for (const SweepPoint& p : s.points) {
      Run r;
      r.point = &p;
      r.repeat = rep;
      r.dir = s.out / "points" / p.id / ("rep-" + std::to_string(rep));
      r.sets = o.sets;
      r.sets.insert(r.sets.end(), p.sets.begin(), p.sets.end());
      r.sets.push_back("job.workdir=" + r.dir.string());
      r.sets.push_back("data.dir=" + (s.out / "data").string());
      // Every run is checked before any runs: a bad point is bad input, not a failed run.
      auto spec = load_spec(o.spec, r.sets);
      if (!spec) return Status::invalid_argument("point " + p.label + ": " + spec.status().message());
      if (Status v = validate_transports(*spec); !v)
        return Status::invalid_argument("point " + p.label + ": " + v.message());
      if (auto layout = Layout::make(*spec, spec->total_ranks()); !layout)
        return Status::invalid_argument("point " + p.label + ": " + layout.status().message());
      r.spec_hash = spec->hash();
      for (const auto& role : spec->roles) {
        if (role.name == "trainer") r.layout.trainers = role.ranks;
        if (role.name == "rollout") r.layout.rollouts = role.ranks;
        if (role.name == "embed") r.layout.embed = role.ranks;
      }
      r.layout.ranks = spec->total_ranks();
      r.layout.nodes = spec->slurm.job.nodes;
      r.layout.ckpt_every = spec->checkpoint.every;
      r.layout.batch = spec->workload == "grpo" ? spec->rl.prompts_per_step : spec->latent.batch;
      s.runs.push_back(std::move(r));
    }
  return s;
}

std::vector<std::string> mobula_args(const Study& s, const Run& r, const char* cmd) {
  std::vector<std::string> argv = {self_exe(), cmd, s.o.spec};
  for (const std::string& x : r.sets) argv.insert(argv.end(), {"--set", x});
  return argv;
}

// ---------------------------------------------------------------------------------------------
// Calibration: bench_transport at every rank count the points use, bench_checkpoint at every
// trainer count; one CSV per rank count under OUT/calibration, concatenated into OUT/comm.csv.

std::string bench_dir(const ScaleStudyOptions& o) {
  if (!o.bench_dir.empty()) return o.bench_dir;
  if (const char* d = std::getenv("MOBULA_BENCH_DIR"); d && *d) return d;
  return MOBULA_PERF_BUILD_DIR;
}

Status run_bench(const std::vector<std::string>& argv, double timeout_s) {
  auto r = run_capture(argv, timeout_s);
  if (!r) return r.status();
  if (r->exit_code != 0)
    return Status::external(join_command(argv) + " exited with " + std::to_string(r->exit_code) + ": " +
                            r->err.substr(0, r->err.find('\n')));
  return Status::ok();
}

Status calibrate_np(const Study& s, int np, bool transport, bool checkpoint) {
  const fs::path dir = s.out / "calibration";
  const fs::path csv = dir / ("np-" + std::to_string(np) + ".csv"), done = dir / ("np-" + std::to_string(np) + ".done");
  if (fs::exists(done)) return Status::ok();
  std::fprintf(stderr, "mobula scale-study: calibrating the communication model on %d rank%s\n", np,
               np == 1 ? "" : "s");
  std::error_code ec;
  fs::remove(csv, ec);
  const std::string bench = bench_dir(s.o);
  std::string backend = s.base.transport.gradients == "auto" ? "mpi" : s.base.transport.gradients;
  if (transport && np >= 2) {
    auto argv = local_mpiexec(np);
    argv.insert(argv.end(),
                {bench + "/transport/bench_transport", "1", "7", backend, "p2p,bcast,allreduce,sync,shardsum",
                 "--sizes", "4,64,256,1024,4096", "--csv", csv.string()});
    MOBULA_RETURN_IF_ERROR(run_bench(argv, 600));
  }
  if (checkpoint)
    for (const char* kib : {"64", "2048"}) {
      auto argv = local_mpiexec(np);
      argv.insert(argv.end(),
                  {bench + "/bench_checkpoint", "1", "5", dir.string(), "--kib", kib, "--csv", csv.string()});
      MOBULA_RETURN_IF_ERROR(run_bench(argv, 600));
    }
  return write_file_atomically(done, "ok\n");
}

Status calibrate(const Study& s) {
  std::set<int> world, trainers;
  for (const Run& r : s.runs) {
    world.insert(r.layout.ranks);
    if (r.layout.trainers > 0) trainers.insert(r.layout.trainers);
  }
  std::error_code ec;
  fs::create_directories(s.out / "calibration", ec);
  if (ec) return Status::io((s.out / "calibration").string() + ": " + ec.message());
  std::set<int> all = world;
  all.insert(trainers.begin(), trainers.end());
  for (int np : all) MOBULA_RETURN_IF_ERROR(calibrate_np(s, np, true, trainers.count(np) > 0));
  // OUT/comm.csv: every rank count's lines under one header.
  std::string text;
  for (int np : all) {
    std::ifstream in(s.out / "calibration" / ("np-" + std::to_string(np) + ".csv"));
    bool first = true;
    for (std::string line; std::getline(in, line); first = false)
      if (!first || text.empty()) text += line + "\n";
  }
  return write_file_atomically(s.out / "comm.csv", text);
}

// ---------------------------------------------------------------------------------------------
// Running the points.

Status run_local(const Study& s, const Run& r) {
  std::error_code ec;
  fs::remove_all(r.dir, ec);  // a run that did not finish leaves nothing to resume from
  fs::create_directories(r.dir, ec);
  if (ec) return Status::io(r.dir.string() + ": " + ec.message());
  const auto argv = mobula_args(s, r, "run");
  std::fprintf(stderr, "mobula scale-study: %s, repeat %d: %s\n", r.point->label.c_str(), r.repeat,
               join_command(argv).c_str());
  auto res = run_capture(argv, s.o.point_timeout_s);
  if (!res) {
    MOBULA_RETURN_IF_ERROR(record_result(r, 124, res.status().message() + "\n"));
    return Status::ok();
  }
  if (res->exit_code != 0)
    std::fprintf(stderr, "mobula scale-study: %s, repeat %d exited with %d (see %s)\n", r.point->label.c_str(),
                 r.repeat, res->exit_code, (r.dir / "study-run.log").c_str());
  return record_result(r, res->exit_code, res->out + res->err);
}

// Slurm: one job per run, each after the previous one ended (afterany), then wait for them all.
Status run_slurm(const Study& s, const std::vector<const Run*>& todo) {
  std::vector<std::pair<const Run*, std::string>> jobs;
  std::string prev;
  for (const Run* r : todo) {
    std::error_code ec;
    fs::remove_all(r->dir, ec);
    SpecArgs a{s.o.spec, r->sets};
    std::vector<std::string> extra;
    if (!prev.empty()) extra.push_back("--dependency=afterany:" + prev);
    int code = 0;
    auto id = submit_spec(a, extra, false, &code);
    if (!id) return Status::external(r->point->label + ": " + id.status().message());
    std::fprintf(stderr, "mobula scale-study: %s, repeat %d: Slurm job %s%s\n", r->point->label.c_str(), r->repeat,
                 id->c_str(), prev.empty() ? "" : (" (after job " + prev + ")").c_str());
    prev = *id;
    jobs.emplace_back(r, *id);
  }
  for (const auto& [r, id] : jobs) {
    auto info = slurm::wait_job(id, s.o.point_timeout_s * double(jobs.size()), 1.0);
    if (!info) return info.status();
    const int code = info->state == "COMPLETED" ? info->exit_code : std::max(1, info->exit_code);
    MOBULA_RETURN_IF_ERROR(record_result(*r, code, ""));
    std::fprintf(stderr, "mobula scale-study: %s, repeat %d: Slurm job %s %s\n", r->point->label.c_str(), r->repeat,
                 id.c_str(), info->state.c_str());
  }
  return Status::ok();
}

// ---------------------------------------------------------------------------------------------
// The outputs of a study directory: fits, predictions, model.csv, index.html, a table.

Status write_model_csv(const fs::path& path, const std::vector<scaling::Prediction>& preds) {
  std::string t =
      "point,ranks,measured_step_s,predicted_step_s,error,loo_error,sample_s,reward_s,transfer_s,train_s,"
      "grad_s,sync_s,ckpt_s,other_s\n";
  for (const auto& p : preds) {
    const auto& x = p.predicted;
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s,%d,%.6g,%.6g,%.4f,%.4f,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g\n",
                  p.measured.median.point.c_str(), p.measured.median.ranks, p.measured.median.step_s, x.total(),
                  p.error, p.loo_error, x.sample, x.reward, x.transfer, x.train, x.grad, x.sync, x.ckpt, x.other);
    t += buf;
  }
  return write_file_atomically(path, t);
}

void print_table(const StudyView& v) {
  std::printf("\n%-28s %5s %7s %10s %12s %8s %6s %10s %7s %9s\n", "point", "ranks", "repeats", "step ms", "items/s",
              "speedup", "eff", "model ms", "error", "LOO err");
  for (size_t i = 0; i < v.points.size(); ++i) {
    const auto& p = v.points[i];
    const scaling::Prediction* pr = i < v.predictions.size() ? &v.predictions[i] : nullptr;
    std::printf("%-28s %5d %7d %10.3f %12.1f %8.2f %6.2f", p.median.point.c_str(), p.median.ranks, p.repeats,
                p.median.step_s * 1e3, p.throughput, p.speedup, p.efficiency);
    if (pr)
      std::printf(" %10.3f %+6.1f%% %+8.1f%%\n", pr->predicted.total() * 1e3, 100 * pr->error, 100 * pr->loo_error);
    else
      std::printf(" %10s %7s %9s\n", "-", "-", "-");
  }
  if (!v.predictions.empty())
    std::printf("model: a waiting rank takes w = %.2f of a core (fitted); LOO err: w fitted without that point\n",
                v.waiting_share);
  if (!v.model_note.empty()) std::printf("model: %s\n", v.model_note.c_str());
}

Status write_outputs(const fs::path& out, const std::string& title, const std::string& spec, const std::string& mode) {
  auto rows = scaling::read_points((out / "points.csv").string());
  if (!rows) return rows.status();
  StudyView v;
  v.title = title, v.spec = spec, v.mode = mode;
  v.rows = *rows;
  v.points = scaling::summarize(v.rows);
  if (fs::exists(out / "comm.csv")) {
    auto samples = scaling::read_comm_samples((out / "comm.csv").string());
    if (!samples) return samples.status();
    v.fits = scaling::fit_comm(*samples);
  }
  auto model = scaling::fit_machine_model(v.points, v.fits);
  if (model) {
    v.predictions = model->predictions;
    v.waiting_share = model->waiting_share;
    MOBULA_RETURN_IF_ERROR(write_model_csv(out / "model.csv", v.predictions));
    if (v.fits.empty()) v.model_note = "no comm.csv: gradient sum, sync and checkpoint times are the base point's";
  } else {
    v.model_note = model.status().message();
  }
  auto sizes = scaling::parse_model_sizes("1B,8B,70B");
  if (sizes) v.projection = scaling::project(*sizes, {64, 128, 256, 512, 1024, 2048, 4096}, v.assumptions);
  print_table(v);
  MOBULA_RETURN_IF_ERROR(write_file_atomically(out / "index.html", render_scale_page(v)));
  std::printf("wrote %s/points.csv, %s/index.html\n", out.c_str(), out.c_str());
  return Status::ok();
}

}  // namespace

Result<std::vector<SweepPoint>> sweep_points(const std::vector<std::string>& sweeps, const std::string& mode,
                                             const std::vector<BatchKey>& batch_keys) {
  if (sweeps.empty()) return Status::invalid_argument("no --sweep given (e.g. --sweep trainers=1,2,4)");
  std::vector<Axis> axes;
  std::set<std::string> keys;
  for (const std::string& s : sweeps) {
    auto a = parse_axis(s);
    if (!a) return a.status();
    if (!keys.insert(a->key).second) return Status::invalid_argument("--sweep " + s + ": " + a->key + " swept twice");
    axes.push_back(std::move(*a));
  }
  // Weak scaling grows the batch with the first role axis.
  const Axis* weak = nullptr;
  long long weak_min = 0;
  if (mode == "weak") {
    for (const Axis& a : axes)
      if (a.role && !weak) weak = &a;
    if (!weak) return Status::invalid_argument("--mode weak needs a role axis (e.g. --sweep trainers=1,2,4)");
    weak_min = std::atoll(weak->values.front().c_str());
    for (const std::string& v : weak->values) weak_min = std::min(weak_min, std::atoll(v.c_str()));
    if (weak_min < 1) return Status::invalid_argument("--mode weak: " + weak->name + " must be at least 1");
  }
  std::vector<SweepPoint> out;
  std::vector<size_t> idx(axes.size(), 0);
  while (true) {
    SweepPoint p;
    for (size_t i = 0; i < axes.size(); ++i) {
      const std::string& v = axes[i].values[idx[i]];
      p.label += (i ? ";" : "") + axes[i].name + "=" + v;
      p.id += (i ? "-" : "") + safe_id(axes[i].name) + safe_id(v);
      p.sets.push_back(axes[i].key + "=" + v);
      if (weak == &axes[i]) {
        const long long f = std::atoll(v.c_str());
        if (f % weak_min != 0)
          return Status::invalid_argument("--mode weak: " + axes[i].name + "=" + v + " is not a multiple of " +
                                          std::to_string(weak_min) + " (the batch grows by whole factors)");
        for (const BatchKey& k : batch_keys) p.sets.push_back(k.key + "=" + std::to_string(k.base * (f / weak_min)));
      }
    }
    out.push_back(std::move(p));
    size_t i = axes.size();
    while (i > 0 && ++idx[i - 1] == axes[i - 1].values.size()) idx[--i] = 0;
    if (i == 0) break;
  }
  return out;
}

int cmd_scale_study(const ScaleStudyOptions& o) {
  auto st = make_study(o);
  if (!st) return fail(st.status());
  Study& s = *st;
  std::error_code ec;
  fs::create_directories(s.out, ec);
  if (ec) return fail(Status::io(s.out.string() + ": " + ec.message()));
  const json def = {{"spec", fs::absolute(o.spec, ec).string()},
                    {"sets", o.sets},
                    {"sweeps", o.sweeps},
                    {"mode", o.mode},
                    {"repeats", o.repeats},
                    {"slurm", o.slurm},
                    {"workload", s.base.workload},
                    {"name", s.base.name}};
  if (Status w = write_file_atomically(s.out / "study.json", def.dump(2) + "\n"); !w) return fail(w);
  if (o.calibrate && !o.slurm)
    if (Status c = calibrate(s); !c) return fail(c);
  std::vector<const Run*> todo;
  int skipped = 0;
  for (const Run& r : s.runs) {
    if (measured(r))
      ++skipped;
    else
      todo.push_back(&r);
  }
  std::fprintf(stderr, "mobula scale-study: %zu point%s x %d repeat%s: %d measured already, %zu to run; out %s\n",
               s.points.size(), s.points.size() == 1 ? "" : "s", o.repeats, o.repeats == 1 ? "" : "s", skipped,
               todo.size(), s.out.c_str());
  if (o.slurm) {
    if (Status r = run_slurm(s, todo); !r) return fail(r);
  } else {
    for (const Run* r : todo) {
      if (Status x = run_local(s, *r); !x) return fail(x);
      if (Status w = write_points(s); !w) return fail(w);
      if (forwarded_signal() != 0) return 128 + forwarded_signal();
    }
  }
  if (Status w = write_points(s); !w) return fail(w);
  if (Status w = write_outputs(s.out, s.base.name, o.spec, o.mode); !w) return fail(w);
  int failed = 0;
  for (const Run& r : s.runs) failed += !measured(r);
  if (failed)
    std::fprintf(stderr, "mobula scale-study: %d run%s failed; rerun to retry them\n", failed, failed == 1 ? "" : "s");
  return failed ? 1 : 0;
}

int cmd_scale_fit(const std::string& dir) {
  auto def = read_json(fs::path(dir) / "study.json");
  if (!def)
    return fail(Status::invalid_argument(dir + ": not a scale-study directory (" + def.status().message() + ")"));
  const Status w =
      write_outputs(fs::absolute(dir), def->value("name", ""), def->value("spec", ""), def->value("mode", ""));
  return w ? 0 : fail(w);
}

int cmd_scale_project(const ProjectOptions& o) {
  auto sizes = scaling::parse_model_sizes(o.models);
  if (!sizes) return fail(sizes.status());
  std::vector<int> gpus;
  for (const std::string& g : split(o.gpus, ',')) {
    const int n = std::atoi(g.c_str());
    if (n < 2 || std::to_string(n) != g)
      return fail(Status::invalid_argument("--gpus " + o.gpus + ": '" + g + "' is not a GPU count >= 2"));
    gpus.push_back(n);
  }
  const auto rows = scaling::project(*sizes, gpus, o.a);
  std::string csv =
      "model,gpus,trainer_gpus,rollout_gpus,model_parallel,data_parallel,t_sample,t_train,t_grad_tree,t_grad_ring,"
      "t_grad_sliced,t_sync,t_ckpt,step_tree,step_sliced,efficiency_tree,efficiency_sliced\n";
  std::printf("%-5s %5s %4s %4s %4s %8s %8s %9s %9s %9s %8s %8s %7s %7s\n", "model", "gpus", "mp", "dp", "", "sample s",
              "train s", "grad tree", "grad ring", "grad slic", "sync s", "ckpt s", "eff tr", "eff sl");
  for (const auto& r : rows) {
    std::printf("%-5s %5d %4d %4d %4s %8.3f %8.3f %9.3f %9.3f %9.3f %8.3f %8.3f %6.1f%% %6.1f%%\n", r.model.c_str(),
                r.gpus, r.model_parallel, r.data_parallel, "", r.t_sample, r.t_train, r.t_grad_tree, r.t_grad_ring,
                r.t_grad_sliced, r.t_sync, r.t_ckpt, 100 * r.efficiency_tree, 100 * r.efficiency_sliced);
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s,%d,%d,%d,%d,%d,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.4f,%.4f\n",
                  r.model.c_str(), r.gpus, r.trainer_gpus, r.rollout_gpus, r.model_parallel, r.data_parallel,
                  r.t_sample, r.t_train, r.t_grad_tree, r.t_grad_ring, r.t_grad_sliced, r.t_sync, r.t_ckpt, r.step_tree,
                  r.step_sliced, r.efficiency_tree, r.efficiency_sliced);
    csv += buf;
  }
  if (!o.out.empty())
    if (Status w = write_file_atomically(o.out, csv); !w) return fail(w);
  return 0;
}

}  // namespace mobula::launch
