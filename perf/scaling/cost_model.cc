#include "perf/scaling/cost_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <tuple>

namespace mobula::scaling {

namespace {

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> out;
  std::string field;
  std::stringstream ss(line);
  while (std::getline(ss, field, sep)) out.push_back(field);
  if (!line.empty() && line.back() == sep) out.emplace_back();
  return out;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

std::string g(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// The double columns of points.csv and where they live in a row.
const std::vector<std::pair<const char*, double PointRow::*>>& double_fields() {
  static const std::vector<std::pair<const char*, double PointRow::*>> f = {{"batch", &PointRow::batch},
                                                                            {"steps", &PointRow::steps},
                                                                            {"wall_s", &PointRow::wall_s},
                                                                            {"step_s", &PointRow::step_s},
                                                                            {"steps_per_s", &PointRow::steps_per_s},
                                                                            {"tokens_per_s", &PointRow::tokens_per_s},
                                                                            {"samples_per_s", &PointRow::samples_per_s},
                                                                            {"sample_s", &PointRow::sample_s},
                                                                            {"reward_s", &PointRow::reward_s},
                                                                            {"transfer_s", &PointRow::transfer_s},
                                                                            {"train_s", &PointRow::train_s},
                                                                            {"sync_s", &PointRow::sync_s},
                                                                            {"ckpt_s", &PointRow::ckpt_s},
                                                                            {"stall_s", &PointRow::stall_s},
                                                                            {"other_s", &PointRow::other_s},
                                                                            {"param_bytes", &PointRow::param_bytes}};
  return f;
}
const std::vector<std::pair<const char*, int PointRow::*>>& int_fields() {
  static const std::vector<std::pair<const char*, int PointRow::*>> f = {
      {"repeat", &PointRow::repeat}, {"trainers", &PointRow::trainers},   {"rollouts", &PointRow::rollouts},
      {"embed", &PointRow::embed},   {"nodes", &PointRow::nodes},         {"ranks", &PointRow::ranks},
      {"cores", &PointRow::cores},   {"exit_code", &PointRow::exit_code}, {"ckpt_every", &PointRow::ckpt_every}};
  return f;
}

Result<double> to_double(const std::string& s, const std::string& where) {
  if (s.empty()) return 0.0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (!end || *end || !std::isfinite(v)) return Status::invalid_argument(where + ": '" + s + "' is not a number");
  return v;
}

int ceil_log2(int n) {
  int l = 0;
  while ((1 << l) < n) ++l;
  return l;
}

}  // namespace

int CsvTable::column(const std::string& name) const {
  for (size_t i = 0; i < header.size(); ++i)
    if (header[i] == name) return static_cast<int>(i);
  return -1;
}

Result<CsvTable> read_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::not_found(path + ": cannot read (no such file?)");
  CsvTable t;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    auto fields = split(line, ',');
    if (t.header.empty()) {
      t.header = std::move(fields);
      continue;
    }
    if (fields.size() != t.header.size())
      return Status::invalid_argument(path + ":" + std::to_string(lineno) + ": " + std::to_string(fields.size()) +
                                      " fields, the header has " + std::to_string(t.header.size()) +
                                      " (a torn line? remove it and rerun)");
    t.rows.push_back(std::move(fields));
  }
  if (t.header.empty()) return Status::invalid_argument(path + ": empty (no header line)");
  return t;
}

const std::vector<std::string>& point_columns() {
  static const std::vector<std::string> cols = [] {
    std::vector<std::string> c = {"point", "repeat", "mode",  "workload", "trainers", "rollouts", "embed",
                                  "nodes", "ranks",  "cores", "batch",    "steps",    "exit_code"};
    for (const char* k : {"wall_s", "step_s", "steps_per_s", "tokens_per_s", "samples_per_s", "sample_s", "reward_s",
                          "transfer_s", "train_s", "sync_s", "ckpt_s", "stall_s", "other_s", "param_bytes"})
      c.emplace_back(k);
    c.insert(c.end(), {"ckpt_every", "params_fnv1a"});
    return c;
  }();
  return cols;
}

std::string point_line(const PointRow& r) {
  std::string o;
  for (const std::string& c : point_columns()) {
    if (!o.empty()) o += ',';
    if (c == "point")
      o += r.point;
    else if (c == "mode")
      o += r.mode;
    else if (c == "workload")
      o += r.workload;
    else if (c == "params_fnv1a")
      o += r.params_fnv1a;
    for (const auto& [name, f] : int_fields())
      if (c == name) o += std::to_string(r.*f);
    for (const auto& [name, f] : double_fields())
      if (c == name) o += g(r.*f);
  }
  return o;
}

Result<std::vector<PointRow>> read_points(const std::string& path) {
  auto t = read_csv(path);
  if (!t) return t.status();
  for (const std::string& c : point_columns())
    if (t->column(c) < 0) return Status::invalid_argument(path + ": no column '" + c + "' (not a points.csv?)");
  std::vector<PointRow> rows;
  for (size_t i = 0; i < t->rows.size(); ++i) {
    const auto& f = t->rows[i];
    const std::string where = path + ":" + std::to_string(i + 2);
    auto col = [&](const char* name) -> const std::string& { return f[static_cast<size_t>(t->column(name))]; };
    PointRow r;
    r.point = col("point"), r.mode = col("mode"), r.workload = col("workload"), r.params_fnv1a = col("params_fnv1a");
    for (const auto& [name, field] : double_fields()) {
      auto v = to_double(col(name), where + ": " + name);
      if (!v) return v.status();
      r.*field = *v;
    }
    for (const auto& [name, field] : int_fields()) {
      auto v = to_double(col(name), where + ": " + name);
      if (!v) return v.status();
      r.*field = static_cast<int>(*v);
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

std::vector<PointSummary> summarize(const std::vector<PointRow>& rows) {
  std::vector<std::string> order;
  std::map<std::string, std::vector<const PointRow*>> by_point;
  for (const PointRow& r : rows) {
    if (r.exit_code != 0) continue;
    if (!by_point.count(r.point)) order.push_back(r.point);
    by_point[r.point].push_back(&r);
  }
  std::vector<PointSummary> out;
  for (const std::string& p : order) {
    const auto& runs = by_point[p];
    PointSummary s;
    s.median = *runs.front();
    s.repeats = static_cast<int>(runs.size());
    for (const auto& [name, field] : double_fields()) {
      std::vector<double> v;
      for (const PointRow* r : runs) v.push_back(r->*field);
      s.median.*field = median(v);
    }
    s.throughput = s.median.workload == "grpo" ? s.median.tokens_per_s : s.median.samples_per_s;
    out.push_back(s);
  }
  for (PointSummary& s : out) {
    const PointSummary& base = out.front();
    s.speedup = base.throughput > 0 ? s.throughput / base.throughput : 0;
    s.ideal = base.median.ranks > 0 ? double(s.median.ranks) / base.median.ranks : 0;
    s.efficiency = s.ideal > 0 ? s.speedup / s.ideal : 0;
  }
  return out;
}

Result<std::vector<CommSample>> read_comm_samples(const std::string& path) {
  auto t = read_csv(path);
  if (!t) return t.status();
  for (const char* c : {"bench", "backend", "op", "ranks", "bytes", "median_s", "wrong"})
    if (t->column(c) < 0) return Status::invalid_argument(path + ": no column '" + c + "' (not a bench --csv file?)");
  std::vector<CommSample> out;
  for (size_t i = 0; i < t->rows.size(); ++i) {
    const auto& f = t->rows[i];
    auto col = [&](const char* name) -> const std::string& { return f[static_cast<size_t>(t->column(name))]; };
    const std::string where = path + ":" + std::to_string(i + 2);
    auto ranks = to_double(col("ranks"), where + ": ranks");
    auto bytes = to_double(col("bytes"), where + ": bytes");
    auto secs = to_double(col("median_s"), where + ": median_s");
    auto wrong = to_double(col("wrong"), where + ": wrong");
    for (const auto* r : {&ranks, &bytes, &secs, &wrong})
      if (!*r) return r->status();
    if (*wrong != 0) continue;  // a benchmark row with wrong data measured nothing
    out.push_back({col("bench"), col("backend"), col("op"), static_cast<int>(*ranks), *bytes, *secs});
  }
  return out;
}

std::vector<CommFit> fit_comm(const std::vector<CommSample>& samples) {
  std::map<std::tuple<std::string, std::string, int>, std::vector<const CommSample*>> groups;
  for (const CommSample& s : samples)
    if (s.seconds > 0) groups[{s.backend, s.op, s.ranks}].push_back(&s);
  std::vector<CommFit> fits;
  for (const auto& [key, ss] : groups) {
    CommFit f;
    std::tie(f.backend, f.op, f.ranks) = key;
    f.samples = static_cast<int>(ss.size());
    // Weighted least squares with w = 1/t^2: the relative error of every size counts the same.
    double sw = 0, sx = 0, sxx = 0, st = 0, sxt = 0;
    for (const CommSample* s : ss) {
      const double w = 1.0 / (s->seconds * s->seconds);
      sw += w, sx += w * s->bytes, sxx += w * s->bytes * s->bytes, st += w * s->seconds,
          sxt += w * s->bytes * s->seconds;
    }
    const double det = sw * sxx - sx * sx;
    if (ss.size() >= 2 && det > 0) {
      f.alpha = (sxx * st - sx * sxt) / det;
      f.beta = (sw * sxt - sx * st) / det;
    }
    if (ss.size() < 2 || det <= 0 || f.alpha < 0 || f.beta < 0) {
      // One size, or a fit with a negative term: keep the physical one and refit the other.
      if (sxx > 0 && (f.alpha < 0 || ss.size() < 2 || det <= 0)) {
        f.alpha = 0, f.beta = sxt / sxx;
      } else {
        f.beta = 0, f.alpha = st / sw;
      }
    }
    for (const CommSample* s : ss) f.max_rel_err = std::max(f.max_rel_err, std::abs(f.at(s->bytes) / s->seconds - 1));
    fits.push_back(f);
  }
  return fits;
}

const CommFit* find_fit(const std::vector<CommFit>& fits, const std::string& backend, const std::string& op,
                        int ranks) {
  for (const CommFit& f : fits)
    if (f.backend == backend && f.op == op && f.ranks == ranks) return &f;
  return nullptr;
}

namespace {

// The machine model's pieces that do not depend on w.
struct MachineBase {
  const PointRow* b = nullptr;
  const std::vector<CommFit>* fits = nullptr;
  std::string backend;
  double cores = 1;
  double grad(int T, double bytes) const {  // comm + the cross-member fold; a lone trainer folds in train
    const CommFit* f = T > 1 ? find_fit(*fits, backend, "shardsum", T) : nullptr;
    return f ? f->at(bytes) : 0.0;
  }
  double sync(int ranks, double bytes) const {
    const CommFit* f = find_fit(*fits, backend, "sync", ranks);
    return f ? f->at(bytes) : b->sync_s;
  }
  double ckpt(int T, double bytes, int every) const {
    const CommFit* f = find_fit(*fits, "hdf5", "checkpoint_save", T);
    return f && every > 0 ? f->at(3 * bytes) / every : b->ckpt_s;  // params + Adam's two moments
  }
  double kappa(double busy, double waiting, double w) const { return std::max(1.0, (busy + w * waiting) / cores); }

  PhaseTimes predict(const PointRow& p, double w) const {
    const double work = p.batch / b->batch;
    PhaseTimes t;
    t.sample = b->sample_s * work * b->rollouts / p.rollouts * kappa(p.rollouts, p.trainers, w) /
               kappa(b->rollouts, b->trainers, w);
    t.reward = b->reward_s * work * b->rollouts / p.rollouts;
    t.transfer = b->transfer_s * work;
    t.grad = grad(p.trainers, p.param_bytes);
    t.sync = sync(p.ranks, p.param_bytes);
    t.ckpt = ckpt(p.trainers, p.param_bytes, p.ckpt_every);
    // The trainers' compute, with the wait for the slowest trainer (measured inside the base's sync).
    const double b_train =
        std::max(0.0, b->train_s + b->sync_s - grad(b->trainers, b->param_bytes) - sync(b->ranks, b->param_bytes));
    t.train = b_train * work * b->trainers / p.trainers * kappa(p.trainers, p.rollouts, w) /
              kappa(b->trainers, b->rollouts, w);
    t.other =
        std::max(0.0, b->step_s - (b->sample_s + b->reward_s + b->transfer_s + b->train_s + b->sync_s + b->ckpt_s));
    return t;
  }

  // w in [0, 2] minimising the squared log errors over `points` (indices; the base excluded).
  double fit_w(const std::vector<PointSummary>& pts, const std::vector<size_t>& use) const {
    if (use.empty()) return 0;
    double best = 0, best_cost = std::numeric_limits<double>::infinity();
    for (int i = 0; i <= 200; ++i) {
      const double w = 0.01 * i;
      double cost = 0;
      for (size_t k : use) {
        const double e = std::log(predict(pts[k].median, w).total() / pts[k].median.step_s);
        cost += e * e;
      }
      if (cost < best_cost - 1e-15) best = w, best_cost = cost;
    }
    return best;
  }
};

}  // namespace

Result<MachineModel> fit_machine_model(const std::vector<PointSummary>& points, const std::vector<CommFit>& fits,
                                       const MachineModelOptions& opt) {
  if (points.empty()) return Status::invalid_argument("no measured points (every run failed?)");
  const PointRow& b = points.front().median;
  if (b.workload != "grpo")
    return Status::invalid_argument("the machine model covers GRPO points; these are " + b.workload +
                                    " (they are measured and plotted, not predicted)");
  for (const PointSummary& ps : points)
    if (ps.median.trainers < 1 || ps.median.rollouts < 1 || ps.median.batch <= 0 || ps.median.step_s <= 0)
      return Status::invalid_argument("point " + ps.median.point +
                                      ": a GRPO point needs trainers, rollouts, a batch and a step time");
  MachineBase m{&b, &fits, opt.backend, double(std::max(1, b.cores))};
  std::vector<size_t> others;
  for (size_t i = 1; i < points.size(); ++i) others.push_back(i);
  MachineModel out;
  out.cores = std::max(1, b.cores);
  out.waiting_share = m.fit_w(points, others);
  for (size_t i = 0; i < points.size(); ++i) {
    Prediction pr;
    pr.measured = points[i];
    pr.predicted = m.predict(points[i].median, out.waiting_share);
    pr.error = pr.predicted.total() / points[i].median.step_s - 1;
    if (i > 0) {
      std::vector<size_t> rest;
      for (size_t k : others)
        if (k != i) rest.push_back(k);
      pr.loo_error = m.predict(points[i].median, m.fit_w(points, rest)).total() / points[i].median.step_s - 1;
    }
    out.predictions.push_back(pr);
  }
  return out;
}

Result<std::vector<ModelSize>> parse_model_sizes(const std::string& list) {
  std::vector<ModelSize> out;
  for (const std::string& item : split(list, ',')) {
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    double mult = 0;
    if (end && end != item.c_str()) {
      const std::string suffix = end;
      mult = suffix == "K"    ? 1e3
             : suffix == "M"  ? 1e6
             : suffix == "B"  ? 1e9
             : suffix == "T"  ? 1e12
             : suffix.empty() ? 1
                              : 0;
    }
    if (!(v > 0) || mult == 0)
      return Status::invalid_argument("--models " + list + ": '" + item + "' is not a size like 1B, 8B, 70B or 350M");
    out.push_back({item, v * mult});
  }
  return out;
}

double refit_seconds(double params, int sources, int replicas, int mp, const ClusterAssumptions& a) {
  const double shard = 2 * params / mp;  // bf16 bytes each rollout GPU receives
  const double receivers = double(replicas) * mp;
  // Buckets k go from trainer k % sources straight to every receiver: a receiver takes its shard at
  // link speed, a source sends receivers/sources shards' worth.
  const double per_link = shard * std::max(1.0, receivers / std::max(1, sources));
  const double buckets = std::ceil(shard / (a.bucket_mib * 1048576.0));
  return per_link / (a.link_gbs * 1e9) + buckets * a.alpha_us * 1e-6;
}

std::vector<ProjectionRow> project(const std::vector<ModelSize>& sizes, const std::vector<int>& gpus,
                                   const ClusterAssumptions& a) {
  std::vector<ProjectionRow> out;
  const double bw = a.link_gbs * 1e9, alpha = a.alpha_us * 1e-6;
  for (const ModelSize& m : sizes) {
    // Model parallel: the smallest power of two whose share of the training state (bf16 weights and
    // gradients, fp32 master weights and Adam moments: 16 bytes per parameter) fits 60 % of a GPU.
    int mp = 1;
    while (16 * m.params / mp > 0.6 * a.gpu_mem_gib * 1073741824.0) mp *= 2;
    for (const int n : gpus) {
      ProjectionRow r;
      r.model = m.name;
      r.gpus = n;
      r.rollout_gpus = static_cast<int>(std::lround(n * a.rollout_fraction));
      r.trainer_gpus = n - r.rollout_gpus;
      r.model_parallel = mp;
      if (r.trainer_gpus < mp || r.rollout_gpus < mp) continue;  // not one replica per role
      r.data_parallel = r.trainer_gpus / mp;
      const int D = r.data_parallel, L = ceil_log2(D);
      r.t_train = 6 * m.params * a.tokens_per_gpu / (a.gpu_tflops * 1e12 * a.mfu);
      const double tokens_per_rollout_gpu = a.tokens_per_gpu * r.trainer_gpus / r.rollout_gpus;
      r.t_sample = tokens_per_rollout_gpu * 2 * m.params / (a.decode_batch * a.hbm_gbs * 1e9);
      const double grad_bytes = 4 * m.params / mp;  // fp32 gradient shard per GPU
      r.t_grad_tree = D > 1 ? 2 * L * (alpha + grad_bytes / bw) : 0;
      r.t_grad_ring = D > 1 ? 2 * (D - 1) * alpha + 2.0 * (D - 1) / D * grad_bytes / bw : 0;
      r.t_grad_sliced = D > 1 ? 2 * L * alpha + 2.0 * (D - 1) / D * grad_bytes / bw : 0;
      r.t_sync = refit_seconds(m.params, r.trainer_gpus, r.rollout_gpus / mp, mp, a);
      const double nodes = std::ceil(double(r.trainer_gpus) / a.gpus_per_node);
      const double ckpt_bw = std::min(nodes * a.ckpt_node_gbs, a.fs_gbs) * 1e9;
      r.t_ckpt = a.ckpt_every > 0 ? 12 * m.params / ckpt_bw / a.ckpt_every : 0;
      const double compute = r.t_sample + r.t_train;
      r.step_tree = compute + r.t_grad_tree + r.t_sync + r.t_ckpt;
      r.step_sliced = compute + r.t_grad_sliced + r.t_sync + r.t_ckpt;
      r.efficiency_tree = compute / r.step_tree;
      r.efficiency_sliced = compute / r.step_sliced;
      out.push_back(r);
    }
  }
  return out;
}

}  // namespace mobula::scaling
