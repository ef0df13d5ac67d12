// `mobula scale-study` (docs/scaling.md): runs a job spec over a sweep of rank counts, locally
// (`mobula run`) or on Slurm (one job per run, each depending on the last, so no two runs share
// the machine), resumable; writes OUT/points.csv (one row per run), the fitted communication model
// (OUT/comm.csv from bench_transport and bench_checkpoint), the machine model's predictions
// (OUT/model.csv) and OUT/index.html (efficiency plots, time breakdown, projection).
#pragma once

#include <string>
#include <vector>

#include "core/runtime/status.h"
#include "perf/scaling/cost_model.h"

namespace mobula::launch {

struct ScaleStudyOptions {
  std::string spec;
  std::vector<std::string> sets;    // --set, for every point
  std::vector<std::string> sweeps;  // "trainers=1,2,4", "rollouts=1,2", "job.shards=4,8", "nodes=1,2"
  std::string mode = "strong";      // strong: the batch stays; weak: it grows with the first role axis
  int repeats = 1;
  std::string out;                // default: the spec's work dir + "-scale"
  bool slurm = false;             // each run an sbatch job (afterany: the previous run's)
  bool calibrate = true;          // run the benchmarks for the communication model
  double point_timeout_s = 3600;  // per run
  std::string bench_dir;          // where bench_transport / bench_checkpoint are (default: the build's perf/)
};

// One point of a sweep: its label ("trainers=2;rollouts=1"), directory name and --set overrides.
struct SweepPoint {
  std::string label, id;
  std::vector<std::string> sets;
};
// The sweep's points in order (the first axis varies slowest). `role_names`: the roles the spec
// schema knows ("trainer", ...): an axis "trainers" or "trainer" means roles.trainer.ranks, "nodes"
// slurm.nodes, a dotted name that key. Weak mode multiplies `batch_keys` (with their base values)
// by the first role axis' value over its smallest.
struct BatchKey {
  std::string key;
  long long base = 0;
};
Result<std::vector<SweepPoint>> sweep_points(const std::vector<std::string>& sweeps, const std::string& mode,
                                             const std::vector<BatchKey>& batch_keys);

int cmd_scale_study(const ScaleStudyOptions& o);
// Refits and redraws a study directory from its files (points.csv, comm.csv).
int cmd_scale_fit(const std::string& dir);

struct ProjectOptions {
  std::string models = "1B,8B,70B";
  std::string gpus = "64,128,256,512,1024,2048,4096";
  scaling::ClusterAssumptions a;
  std::string out;  // CSV file to write; "" prints only
};
int cmd_scale_project(const ProjectOptions& o);

// The study's page (launch/scale_page.cc).
struct StudyView {
  std::string title, spec, mode, note;
  std::vector<scaling::PointRow> rows;
  std::vector<scaling::PointSummary> points;
  std::vector<scaling::Prediction> predictions;  // empty: `model_note` says why
  double waiting_share = 0;                      // the machine model's fitted w
  std::string model_note;
  std::vector<scaling::CommFit> fits;
  std::vector<scaling::ProjectionRow> projection;
  scaling::ClusterAssumptions assumptions;
};
std::string render_scale_page(const StudyView& v);

}  // namespace mobula::launch
