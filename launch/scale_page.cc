// The scaling study's page: OUT/index.html of `mobula scale-study` (launch/scale_study.h).
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "launch/charts.h"
#include "launch/scale_study.h"

namespace mobula::launch {

namespace {

using namespace charts;
using scaling::PhaseTimes;
using scaling::PointSummary;
using scaling::Prediction;

// One stacked bar per category: segment i of every bar is series i (values >= 0). Drawn twice as
// wide as a line chart: it spans the grid (a wide card), so its text keeps the same size.
struct Bars {
  std::string name, ylabel, unit;
  std::vector<std::string> categories;
  std::vector<Series> series;  // pts[k].second is category k's segment
};
constexpr double kBarsW = 2 * kW;

std::string render_bars(const Bars& b) {
  const size_t n = b.categories.size();
  double top = 0;
  for (size_t k = 0; k < n; ++k) {
    double sum = 0;
    for (const Series& s : b.series) sum += k < s.pts.size() ? std::max(0.0, s.pts[k].second) : 0;
    top = std::max(top, sum);
  }
  if (n == 0 || top <= 0) return no_data(b.name);
  const Frame f{{0, double(n), 1, 0}, nice_scale(0, top, false)};
  std::string o =
      sf("<svg class=\"plot\" data-plot=\"%s\" viewBox=\"0 0 %.0f %.0f\" role=\"img\">", b.name.c_str(), kBarsW, kH);
  // The y grid and axis; the categories label the x axis.
  for (const double t : ticks(f.ys))
    o += sf("<line class=\"gl\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", kLeft, kBarsW - kRight, f.y(t),
            f.y(t)) +
         sf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", kLeft - 6, f.y(t) + 4) + tick_text(t, f.ys) + "</text>";
  o += sf("<line class=\"ax\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", kLeft, kBarsW - kRight, kH - kBottom,
          kH - kBottom);
  o += sf("<text class=\"lbl\" transform=\"translate(14 %.1f) rotate(-90)\" text-anchor=\"middle\">",
          (kTop + kH - kBottom) / 2) +
       esc(b.ylabel) + "</text>";
  const double slot = (kBarsW - kLeft - kRight) / double(n), width = std::min(48.0, slot * 0.6);
  for (size_t k = 0; k < n; ++k) {
    const double x = kLeft + slot * (double(k) + 0.5);
    double base = 0;
    for (const Series& s : b.series) {
      const double v = k < s.pts.size() ? std::max(0.0, s.pts[k].second) : 0;
      if (v <= 0) continue;
      o += sf("<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\" data-tip=\"",
              x - width / 2, f.y(base + v), width, f.y(base) - f.y(base + v), s.color.c_str()) +
           esc(b.categories[k] + " · " + s.label + sf(" %.4g%s", v, b.unit.c_str())) + "\"/>";
      base += v;
    }
    o += sf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", x, kH - kBottom + 16) + esc(b.categories[k]) +
         "</text>";
  }
  std::vector<std::pair<std::string, std::string>> leg;
  for (const Series& s : b.series)
    leg.emplace_back(s.label, "<rect width=\"12\" height=\"10\" fill=\"" + s.color + "\"/>");
  return o + legend(leg, kBarsW) + "</svg>";
}

Chart line_chart(std::string name, std::string xlabel, std::string ylabel, std::string unit) {
  Chart c;
  c.name = std::move(name), c.xlabel = std::move(xlabel), c.ylabel = std::move(ylabel), c.unit = std::move(unit);
  c.zero = true;
  c.xtip = "ranks";
  return c;
}

// Points sorted by rank count (a line's x values ascend).
std::vector<size_t> by_ranks(const std::vector<PointSummary>& pts) {
  std::vector<size_t> idx(pts.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::stable_sort(idx.begin(), idx.end(),
                   [&](size_t a, size_t b) { return pts[a].median.ranks < pts[b].median.ranks; });
  return idx;
}

std::string measured_cards(const StudyView& v) {
  const auto idx = by_ranks(v.points);
  const bool model = v.predictions.size() == v.points.size() && !v.points.empty();
  Chart speed = line_chart("speedup", "ranks", "speed-up (throughput / base)", "x");
  Chart eff = line_chart("efficiency", "ranks", "efficiency (speed-up / ideal)", "");
  Chart step = line_chart("step_time", "ranks", "step time (ms)", " ms");
  Chart thr = line_chart("throughput", "ranks", "items/s", "/s");
  speed.series = {{"ideal", kSlate, {}}, {"measured", kBlue, {}}};
  eff.series = {{"ideal", kSlate, {}}, {"measured", kBlue, {}}};
  step.series = {{"measured", kBlue, {}}};
  thr.series = {{"measured", kBlue, {}}};
  if (model) {
    speed.series.push_back({"model", kOrange, {}});
    eff.series.push_back({"model", kOrange, {}});
    step.series.push_back({"model", kOrange, {}});
  }
  for (size_t i : idx) {
    const PointSummary& p = v.points[i];
    const double x = p.median.ranks;
    speed.series[0].pts.emplace_back(x, p.ideal);
    speed.series[1].pts.emplace_back(x, p.speedup);
    eff.series[0].pts.emplace_back(x, 1.0);
    eff.series[1].pts.emplace_back(x, p.efficiency);
    step.series[0].pts.emplace_back(x, p.median.step_s * 1e3);
    thr.series[0].pts.emplace_back(x, p.throughput);
    if (model) {
      const double pred = v.predictions[i].predicted.total();
      const double mspeed = pred > 0 ? p.speedup * p.median.step_s / pred : 0;
      speed.series[2].pts.emplace_back(x, mspeed);
      eff.series[2].pts.emplace_back(x, p.ideal > 0 ? mspeed / p.ideal : 0);
      step.series[1].pts.emplace_back(x, pred * 1e3);
    }
  }
  // Measured time breakdown per point (and the model's beside it).
  Bars bars{"breakdown", "ms per step", " ms", {}, {}};
  const std::vector<std::pair<const char*, const char*>> phases = {
      {"sample", kBlue},  {"reward", kCyan}, {"transfer", kOrange},  {"train", kGreen},
      {"grad sum", kRed}, {"sync", kPurple}, {"checkpoint", kSlate}, {"other", kAmber}};
  for (const auto& [label, color] : phases) bars.series.push_back({label, color, {}});
  auto add = [&](const std::string& cat, const PhaseTimes& t) {
    bars.categories.push_back(cat);
    const double vals[] = {t.sample, t.reward, t.transfer, t.train, t.grad, t.sync, t.ckpt, t.other};
    for (size_t s = 0; s < bars.series.size(); ++s)
      bars.series[s].pts.emplace_back(double(bars.categories.size()), vals[s] * 1e3);
  };
  for (size_t i : idx) {
    const auto& m = v.points[i].median;
    add(sf("%d ranks", m.ranks),
        PhaseTimes{m.sample_s, m.reward_s, m.transfer_s, m.train_s, 0, m.sync_s, m.ckpt_s, m.other_s});
    if (model) add(sf("model %d", m.ranks), v.predictions[i].predicted);
  }
  std::string o = "<h2>Measured on this machine</h2>\n<div class=\"plots\">\n";
  o += card("Speed-up against the base point", render_chart(speed)) + "\n";
  o += card("Efficiency against ideal (2x ranks = 2x throughput)", render_chart(eff)) + "\n";
  o += card("Step time, measured and model", render_chart(step)) + "\n";
  o += card("Throughput (tokens/s for GRPO, samples/s for latent-pretrain)", render_chart(thr)) + "\n";
  o += card("Time breakdown per step (stacked; the model's bars beside the measured ones)", render_bars(bars), true) +
       "\n</div>\n";
  return o;
}

std::string projection_cards(const StudyView& v) {
  if (v.projection.empty()) return "";
  Chart eff;
  eff.name = "projection_efficiency", eff.xlabel = "GPUs", eff.ylabel = "efficiency (compute / step)", eff.unit = "";
  eff.zero = true, eff.log2x = true, eff.xtip = "GPUs";
  Chart step = eff;
  step.name = "projection_step", step.ylabel = "step time (s)", step.unit = " s";
  const char* colors[] = {kBlue, kGreen, kPurple, kOrange, kCyan, kRed};
  std::map<std::string, size_t> series_of;
  for (const auto& r : v.projection) {
    if (!series_of.count(r.model)) {
      const size_t k = series_of.size();
      series_of[r.model] = eff.series.size();
      for (Chart* c : {&eff, &step}) {
        c->series.push_back({r.model + " tree (as built)", colors[(2 * k) % 6], {}});
        c->series.push_back({r.model + " sliced", colors[(2 * k + 1) % 6], {}});
      }
    }
    const size_t s = series_of[r.model];
    eff.series[s].pts.emplace_back(r.gpus, r.efficiency_tree);
    eff.series[s + 1].pts.emplace_back(r.gpus, r.efficiency_sliced);
    step.series[s].pts.emplace_back(r.gpus, r.step_tree);
    step.series[s + 1].pts.emplace_back(r.gpus, r.step_sliced);
  }
  // The step at the largest GPU count of each model, by phase.
  Bars bars{"projection_breakdown", "seconds per step", " s", {}, {}};
  const std::vector<std::pair<const char*, const char*>> phases = {
      {"sample", kBlue}, {"train", kGreen}, {"grad sum", kRed}, {"sync", kPurple}, {"checkpoint", kSlate}};
  for (const auto& [label, color] : phases) bars.series.push_back({label, color, {}});
  std::map<std::string, const scaling::ProjectionRow*> largest;
  for (const auto& r : v.projection)
    if (!largest[r.model] || r.gpus > largest[r.model]->gpus) largest[r.model] = &r;
  for (const auto& [model, r] : largest)
    for (bool sliced : {false, true}) {
      bars.categories.push_back(sf("%s %d %s", model.c_str(), r->gpus, sliced ? "sliced" : "tree"));
      const double vals[] = {r->t_sample, r->t_train, sliced ? r->t_grad_sliced : r->t_grad_tree, r->t_sync, r->t_ckpt};
      for (size_t s = 0; s < bars.series.size(); ++s) bars.series[s].pts.emplace_back(0, vals[s]);
    }
  const auto& a = v.assumptions;
  std::string o = "<h2>Projection to large clusters</h2>\n";
  o +=
      "<p class=\"note\">" +
      esc(sf("Assumptions: %.0f TFLOP/s per GPU at %.0f%% MFU, %.0f GB/s HBM, decode batch %.0f, %.0f GB/s and %.0f us "
             "per message between nodes, %.0f tokens per trainer GPU per step, %.0f%% of the GPUs sample, "
             "checkpoint every %d steps at %.0f GB/s per node (file system %.0f GB/s). 'tree (as built)' is "
             "sum_shards' tree reduce + broadcast of whole buffers; 'sliced' the same fixed trees per slice "
             "(reduce-scatter shape), which keeps results bitwise-stable. docs/scaling.md states the model.",
             a.gpu_tflops, 100 * a.mfu, a.hbm_gbs, a.decode_batch, a.link_gbs, a.alpha_us, a.tokens_per_gpu,
             100 * a.rollout_fraction, a.ckpt_every, a.ckpt_node_gbs, a.fs_gbs)) +
      "</p>\n<div class=\"plots\">\n";
  o += card("Projected efficiency", render_chart(eff)) + "\n";
  o += card("Projected step time", render_chart(step)) + "\n";
  o += card("Projected step at the largest size, by phase", render_bars(bars), true) + "\n</div>\n";
  return o;
}

std::string tables(const StudyView& v) {
  std::string o =
      "<h2>Points (medians over repeats)</h2>\n<table><thead><tr><th>point</th><th>ranks</th>"
      "<th>repeats</th><th>batch</th><th>step ms</th><th>items/s</th><th>speed-up</th><th>efficiency</th>"
      "<th>model ms</th><th>error</th><th>LOO error</th></tr></thead><tbody>\n";
  for (size_t i = 0; i < v.points.size(); ++i) {
    const auto& p = v.points[i];
    const bool model = i < v.predictions.size();
    o += "<tr><td>" + esc(p.median.point) + "</td>" +
         sf("<td>%d</td><td>%d</td><td>%.0f</td><td>%.3f</td><td>%.1f</td><td>%.2f</td><td>%.2f</td>", p.median.ranks,
            p.repeats, p.median.batch, p.median.step_s * 1e3, p.throughput, p.speedup, p.efficiency) +
         (model ? sf("<td>%.3f</td><td>%+.1f%%</td><td>%+.1f%%</td>", v.predictions[i].predicted.total() * 1e3,
                     100 * v.predictions[i].error, 100 * v.predictions[i].loo_error)
                : std::string("<td>-</td><td>-</td><td>-</td>")) +
         "</tr>\n";
  }
  o += "</tbody></table>\n";
  if (!v.predictions.empty())
    o +=
        "<p class=\"note\">" +
        esc(sf("Model: a waiting rank takes w = %.2f of a core (fitted on the points); 'LOO error' predicts each point "
               "with w fitted on the others only.",
               v.waiting_share)) +
        "</p>\n";
  if (!v.model_note.empty()) o += "<p class=\"note\">Model: " + esc(v.model_note) + "</p>\n";
  if (!v.fits.empty()) {
    o +=
        "<h2>Communication model (alpha-beta fits)</h2>\n<table class=\"narrow\"><thead><tr><th>backend</th><th>op</th>"
        "<th>ranks</th><th>alpha (us)</th><th>bandwidth (GB/s)</th><th>sizes</th><th>max "
        "error</th></tr></thead><tbody>\n";
    for (const auto& f : v.fits)
      o += "<tr><td>" + esc(f.backend) + "</td><td>" + esc(f.op) + "</td>" +
           sf("<td>%d</td><td>%.2f</td><td>%.2f</td><td>%d</td><td>%.0f%%</td></tr>\n", f.ranks, f.alpha * 1e6,
              f.beta > 0 ? 1e-9 / f.beta : 0.0, f.samples, 100 * f.max_rel_err);
    o += "</tbody></table>\n";
  }
  o += sf("<h2>Runs (%zu)</h2>\n", v.rows.size());
  o += "<table><thead><tr><th>point</th><th>repeat</th><th>exit</th><th>ranks</th><th>cores</th><th>wall s</th>"
       "<th>step ms</th><th>params hash</th></tr></thead><tbody>\n";
  for (const auto& r : v.rows)
    o += std::string(r.exit_code ? "<tr class=\"bad\">" : "<tr>") + "<td>" + esc(r.point) + "</td>" +
         sf("<td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%.2f</td><td>%.3f</td>", r.repeat, r.exit_code, r.ranks,
            r.cores, r.wall_s, r.step_s * 1e3) +
         "<td class=\"mono\">" + esc(r.params_fnv1a) + "</td></tr>\n";
  return o + "</tbody></table>\n";
}

}  // namespace

std::string render_scale_page(const StudyView& v) {
  std::string o = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  o += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  o += "<title>" + esc(v.title) + " — mobula scaling study</title>\n<style>" + kStyle +
       "</style>\n</head>\n<body>\n<main>\n";
  o += "<header><h1>" + esc(v.title) + " — scaling study</h1><div class=\"sub\">" + esc(v.spec) + " · " + esc(v.mode) +
       " scaling</div>\n<div class=\"facts\">";
  o += fact("points", std::to_string(v.points.size())) + fact("runs", std::to_string(v.rows.size()));
  if (!v.points.empty()) {
    const auto& last = v.points.back();
    o += fact("workload", last.median.workload) + fact("host cores", std::to_string(last.median.cores));
    double worst = 0;
    for (const auto& p : v.predictions) worst = std::max(worst, std::abs(p.loo_error));
    if (!v.predictions.empty()) {
      o += fact("model error, leave-one-out (worst)", sf("%.1f%%", 100 * worst));
      o += fact("waiting rank's core share w", sf("%.2f", v.waiting_share));
    }
  }
  o += "</div></header>\n";
  o += measured_cards(v) + projection_cards(v) + tables(v);
  o += "</main>\n<div id=\"tip\"></div>\n<script>" + std::string(kScript) + "</script>\n</body>\n</html>\n";
  return o;
}

}  // namespace mobula::launch
