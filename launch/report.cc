#include "launch/report.h"

#include "core/runtime/time_format.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <tuple>
#include <utility>

namespace mobula::launch {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

[[gnu::format(printf, 1, 2)]] std::string sf(const char* fmt, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  const int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return "";
  if (static_cast<size_t>(n) < sizeof buf) return std::string(buf, static_cast<size_t>(n));
  std::string s(static_cast<size_t>(n), '\0');
  va_start(ap, fmt);
  std::vsnprintf(s.data(), s.size() + 1, fmt, ap);
  va_end(ap);
  return s;
}

std::string esc(std::string_view s) {
  std::string o;
  o.reserve(s.size() + 8);
  for (char c : s) {
    switch (c) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      case '\'':
        o += "&#39;";
        break;
      default:
        o += c;
    }
  }
  return o;
}

// nlohmann's accessors throw on a type mismatch; these never do (a wrong type reads as missing).
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::optional<double> num(const json& j, const char* key) {
  if (!j.is_object()) return std::nullopt;
  const auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  const double v = it->get<double>();
  return std::isfinite(v) ? std::optional<double>(v) : std::nullopt;
}

std::string text(const json& j, const char* key) {
  if (!j.is_object()) return "";
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  return it->is_string() ? it->get_ref<const std::string&>() : dump(*it);
}

int attempt_of(const json& j) {
  return static_cast<int>(std::clamp(num(j, "attempt").value_or(0), -1e9, 1e9));  // in range: no UB cast
}

// ---------------------------------------------------------------------------------------------
// Plots. Every chart is a fixed-size viewBox scaled to its card's width by CSS.

constexpr double kW = 640, kH = 270, kLeft = 62, kRight = 14, kTop = 30, kBottom = 42;
constexpr size_t kMaxCircles = 1500;  // per series; longer runs keep only the polyline's vertices

struct Series {
  std::string label, color;
  std::vector<std::pair<double, double>> pts;  // (x, y), x ascending
};

struct Chart {
  std::string name, xlabel, ylabel, unit;
  std::vector<Series> series;
  bool stacked = false;  // areas: series i drawn on top of 0..i-1; all series share the same x values
  bool zero = false;     // y axis includes 0
  std::vector<std::pair<double, std::string>> marks;  // dashed vertical lines (restarts)
};

struct Scale {
  double lo, hi, step;
  int decimals;
};

// Ticks at 1, 2, 2.5 or 5 × 10^k covering [lo, hi] with about `target` intervals.
Scale nice_scale(double lo, double hi, bool integer, int target = 5) {
  const double size = std::max(std::abs(lo), std::abs(hi));
  if (!(hi - lo > size * 1e-9)) {  // flat, or too narrow for doubles to step through: give it room
    const double pad = size == 0 ? 1 : size * 0.1;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / target;
  if (!std::isfinite(raw) || raw <= 0) return {0, 1, 0.2, 1};
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / mag;
  double step = (r <= 1 ? 1 : r <= 2 ? 2 : r <= 2.5 ? 2.5 : r <= 5 ? 5 : 10) * mag;
  if (integer) step = std::max(1.0, std::round(step));
  int decimals = 0;
  while (decimals < 12) {
    const double scaled = step * std::pow(10.0, decimals);
    if (std::abs(scaled - std::round(scaled)) < 1e-6 * scaled) break;
    ++decimals;
  }
  return {std::floor(lo / step + 1e-9) * step, std::ceil(hi / step - 1e-9) * step, step, decimals};
}

// At most 100 tick values (a bound even for a degenerate scale).
std::vector<double> ticks(const Scale& s) {
  std::vector<double> v;
  for (int i = 0; i <= 100 && s.lo + i * s.step <= s.hi + s.step * 1e-6; ++i) v.push_back(s.lo + i * s.step);
  return v;
}

std::string tick_text(double v, const Scale& s) {
  if (std::abs(v) < s.step * 1e-9) return "0";
  if (std::max(std::abs(s.lo), std::abs(s.hi)) >= 1e7 || s.step < 1e-6) return sf("%.3g", v);
  if (s.step >= 1000 && std::max(std::abs(s.lo), std::abs(s.hi)) >= 10000) return sf("%gk", v / 1000);
  return sf("%.*f", s.decimals, v);
}

std::string no_data(const std::string& what) {
  return "<div class=\"nodata\">" + esc(what) + ": no data</div>";
}

// Axes, grid, ticks and axis titles of a plot area mapping [xs] × [ys].
struct Frame {
  Scale xs, ys;
  double w = kW, h = kH, top = kTop;  // the viewBox size and the plot area's top edge
  double x(double v) const { return kLeft + (v - xs.lo) / (xs.hi - xs.lo) * (w - kLeft - kRight); }
  double y(double v) const { return h - kBottom - (v - ys.lo) / (ys.hi - ys.lo) * (h - top - kBottom); }
};

std::string axes(const Frame& f, const std::string& xlabel, const std::string& ylabel, bool yticks = true) {
  std::string o;
  if (yticks) {
    for (const double v : ticks(f.ys)) {
      o += sf("<line class=\"gl\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", kLeft, f.w - kRight, f.y(v),
              f.y(v));
      o += sf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", kLeft - 6, f.y(v) + 4) + tick_text(v, f.ys) +
           "</text>";
    }
  }
  for (const double v : ticks(f.xs)) {
    o += sf("<line class=\"ax\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", f.x(v), f.x(v), f.h - kBottom,
            f.h - kBottom + 4);
    o += sf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", f.x(v), f.h - kBottom + 16) + tick_text(v, f.xs) +
         "</text>";
  }
  o += sf("<line class=\"ax\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", kLeft, f.w - kRight, f.h - kBottom,
          f.h - kBottom);
  o += sf("<line class=\"ax\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", kLeft, kLeft, f.top, f.h - kBottom);
  o += sf("<text class=\"lbl\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", (kLeft + f.w - kRight) / 2, f.h - 6) +
       esc(xlabel) + "</text>";
  if (!ylabel.empty())
    o += sf("<text class=\"lbl\" transform=\"translate(14 %.1f) rotate(-90)\" text-anchor=\"middle\">",
            (f.top + f.h - kBottom) / 2) +
         esc(ylabel) + "</text>";
  return o;
}

// Legend entries right-aligned along the top margin; `swatch` is the SVG of one 12×10 symbol at (0,0).
std::string legend(const std::vector<std::pair<std::string, std::string>>& entries, double w = kW) {
  double width = 0;
  for (const auto& [label, swatch] : entries) width += 24 + 6.6 * static_cast<double>(label.size());
  double x = std::max(kLeft, w - kRight - width);
  std::string o = "<g class=\"legend\">";
  for (const auto& [label, swatch] : entries) {
    o += sf("<g transform=\"translate(%.1f 8)\">", x) + swatch + "<text x=\"16\" y=\"9\">" + esc(label) + "</text></g>";
    x += 24 + 6.6 * static_cast<double>(label.size());
  }
  return o + "</g>";
}

std::string render_chart(const Chart& c) {
  // Stacked charts plot cumulative tops; bottoms are the previous series' tops.
  std::vector<std::vector<double>> tops(c.series.size());
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  size_t n = 0;
  for (size_t s = 0; s < c.series.size(); ++s) {
    const auto& pts = c.series[s].pts;
    for (size_t i = 0; i < pts.size(); ++i) {
      double y = pts[i].second;
      if (c.stacked && s > 0 && i < tops[s - 1].size()) y += tops[s - 1][i];
      tops[s].push_back(y);
      x0 = std::min(x0, pts[i].first), x1 = std::max(x1, pts[i].first);
      y0 = std::min(y0, y), y1 = std::max(y1, y);
      ++n;
    }
  }
  if (n == 0) return no_data(c.name);
  if (c.zero || c.stacked) y0 = std::min(y0, 0.0), y1 = std::max(y1, 0.0);
  const Frame f{nice_scale(x0, x1, true, 8), nice_scale(y0, y1, false)};

  std::string o =
      sf("<svg class=\"plot\" data-plot=\"%s\" viewBox=\"0 0 %.0f %.0f\" role=\"img\">", c.name.c_str(), kW, kH);
  o += axes(f, c.xlabel, c.ylabel);
  for (const auto& [x, label] : c.marks) {
    if (x < f.xs.lo || x > f.xs.hi) continue;
    o += sf("<line class=\"mark\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", f.x(x), f.x(x), kTop,
            kH - kBottom);
    o += sf("<text class=\"marktext\" x=\"%.1f\" y=\"%.1f\">", f.x(x) + 3, kTop + 10) + esc(label) + "</text>";
  }
  std::vector<std::pair<std::string, std::string>> leg;
  for (size_t s = 0; s < c.series.size(); ++s) {
    const Series& se = c.series[s];
    if (se.pts.empty()) continue;
    std::string line;
    for (size_t i = 0; i < se.pts.size(); ++i) line += sf("%.1f,%.1f ", f.x(se.pts[i].first), f.y(tops[s][i]));
    if (c.stacked) {
      std::string area = line;
      for (size_t i = se.pts.size(); i-- > 0;) {
        const double base = s > 0 && i < tops[s - 1].size() ? tops[s - 1][i] : 0.0;
        area += sf("%.1f,%.1f ", f.x(se.pts[i].first), f.y(base));
      }
      o += "<polygon class=\"area\" fill=\"" + se.color + "\" points=\"" + area + "\"/>";
    }
    // Later series of a line chart are dashed, so one hiding exactly behind another (reward = accuracy
    // for a 0/1 reward) still shows.
    const bool dashed = !c.stacked && s > 0;
    o += "<polyline class=\"line" + std::string(dashed ? " dash" : "") + "\" stroke=\"" + se.color + "\" points=\"" +
         line + "\"/>";
    if (se.pts.size() <= kMaxCircles) {
      const double r = se.pts.size() > 200 ? 1.6 : 2.6;
      for (size_t i = 0; i < se.pts.size(); ++i) {
        const auto [x, y] = se.pts[i];
        o += sf("<circle class=\"pt\" cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"%s\" data-tip=\"", f.x(x),
                f.y(tops[s][i]), r, se.color.c_str()) +
             esc(sf("step %.0f · %s %.4g%s", x, se.label.c_str(), y, c.unit.c_str())) + "\"/>";
      }
    }
    leg.emplace_back(se.label, c.stacked ? "<rect width=\"12\" height=\"10\" fill=\"" + se.color + "\"/>"
                               : dashed
                                   ? "<path d=\"M0 5.5h5M8 5.5h5\" stroke-width=\"3\" stroke=\"" + se.color + "\"/>"
                                   : "<rect y=\"4\" width=\"13\" height=\"3\" fill=\"" + se.color + "\"/>");
  }
  return o + legend(leg) + "</svg>";
}

// ---------------------------------------------------------------------------------------------
// Data selection.

struct StepRow {
  double step;
  int attempt;
  const json* line;
};

// One metrics line per step: the latest attempt's (a later line of the same attempt wins too).
std::vector<StepRow> latest_steps(const std::vector<json>& metrics) {
  std::map<double, StepRow> by_step;
  for (const json& m : metrics) {
    const auto step = num(m, "step");
    if (!step) continue;
    const int a = attempt_of(m);
    const auto it = by_step.find(*step);
    if (it == by_step.end() || a >= it->second.attempt) by_step[*step] = {*step, a, &m};
  }
  std::vector<StepRow> rows;
  for (const auto& [step, row] : by_step) rows.push_back(row);
  return rows;
}

Series series_of(const std::vector<StepRow>& rows, const char* key, std::string label, std::string color,
                 double scale = 1) {
  Series s{std::move(label), std::move(color), {}};
  for (const StepRow& r : rows)
    if (const auto v = num(*r.line, key)) s.pts.emplace_back(r.step, *v * scale);
  return s;
}

const char* kBlue = "#2563eb";
const char* kGreen = "#16a34a";
const char* kPurple = "#9333ea";
const char* kOrange = "#ea580c";
const char* kCyan = "#0891b2";
const char* kRed = "#dc2626";
const char* kAmber = "#d97706";
const char* kSlate = "#64748b";

// The attempt/restart timeline: one bar per attempt on a wall-clock axis, with event markers.
std::string render_timeline(const std::vector<json>& events) {
  struct Attempt {
    double start = 0, end = 0;
    bool has_start = false, has_end = false, seen = false;
    double first = 0, last = 0;
    std::string outcome, exit_code;
  };
  struct Marker {
    int attempt;
    double t;
    std::string event, tip;
  };
  std::map<int, Attempt> attempts;
  std::vector<Marker> markers;
  double t0 = std::numeric_limits<double>::infinity(), t1 = -t0;
  static const std::set<std::string> kMarked = {"fault_injected", "preempted",          "watchdog",
                                                "node_failure",   "checkpoint_durable", "requeue"};
  for (const json& e : events) {
    const auto t = parse_utc(text(e, "time"));
    if (!t) continue;
    t0 = std::min(t0, *t), t1 = std::max(t1, *t);
    const std::string ev = text(e, "event");
    Attempt& a = attempts[attempt_of(e)];
    if (!a.seen) a.first = a.last = *t, a.seen = true;
    a.first = std::min(a.first, *t), a.last = std::max(a.last, *t);
    if (ev == "attempt_start" && !a.has_start) a.start = *t, a.has_start = true;
    if (ev == "attempt_end")
      a.end = *t, a.has_end = true, a.outcome = text(e, "outcome"), a.exit_code = text(e, "exit_code");
    if (kMarked.count(ev)) {
      std::string tip = ev;
      for (const char* k : {"kind", "signal", "mode", "step", "phase", "who", "reason", "slurm_restart_count"})
        if (const std::string v = text(e, k); !v.empty()) tip += sf(" %s=", k) + v;
      markers.push_back({attempt_of(e), *t, ev, tip});
    }
  }
  if (attempts.empty()) return no_data("timeline");

  // Wall-clock unit that keeps tick labels short.
  const double span = t1 - t0;
  const double unit = span > 7200 ? 3600 : span > 180 ? 60 : 1;
  const char* uname = unit == 3600 ? "h" : unit == 60 ? "min" : "s";
  // Twice as wide as the step plots: it spans the whole grid, so its text keeps the same size.
  const double width = 2 * kW, row_h = 34, top = 30;
  const double height = top + row_h * static_cast<double>(attempts.size()) + kBottom;
  const Frame f{nice_scale(0, span / unit, false, 12), {0, 1, 1, 0}, width, height, top};
  std::string o =
      sf("<svg class=\"plot\" data-plot=\"timeline\" viewBox=\"0 0 %.0f %.0f\" role=\"img\">", width, height);
  o += axes(f, sf("time since the first event (%s)", uname), "", false);
  std::map<int, double> row_y;
  double y = top;
  for (auto& [n, a] : attempts) {
    row_y[n] = y + 22;  // the bar's centre: y+14..y+30, markers above it at y+3..y+13
    const double s = (a.has_start ? a.start : a.first) - t0, e = (a.has_end ? a.end : a.last) - t0;
    std::string outcome = a.has_end ? (a.outcome.empty() ? "ended" : a.outcome) : "running";
    const char* color = outcome == "completed"   ? kGreen
                        : outcome == "preempted" ? kAmber
                        : outcome == "running"   ? kBlue
                                                 : kRed;
    const double x = f.x(s / unit), w = std::max(2.0, f.x(e / unit) - x);
    o += sf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">attempt %d</text>", kLeft - 6, y + 26, n);
    std::string tip = sf("attempt %d: ", n) + outcome;
    if (!a.exit_code.empty()) tip += ", exit " + a.exit_code;
    tip += ", " + format_duration(e - s);
    o += sf("<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" rx=\"3\" fill=\"%s\" data-tip=\"",
            x, y + 14, w, 16.0, color) +
         esc(tip) + "\"/>";
    y += row_h;
  }
  // Markers: a distinct ~10px shape per event kind centred at (cx, cy), left open for more attributes.
  // Checkpoints are ticks across the bar; the rarer events sit just above it, pointing at their time.
  auto shape = [](const std::string& ev, double cx, double cy) -> std::string {
    if (ev == "checkpoint_durable")
      return sf("<rect x=\"%.1f\" y=\"%.1f\" width=\"2\" height=\"16\" fill=\"#334155\"", cx - 1, cy - 8);
    if (ev == "fault_injected") return sf("<path d=\"M%.1f %.1fl10 0l-5 10z\" fill=\"%s\"", cx - 5, cy - 5, kRed);
    if (ev == "preempted") return sf("<path d=\"M%.1f %.1fl5 5l-5 5l-5 -5z\" fill=\"%s\"", cx, cy - 5, kAmber);
    if (ev == "watchdog")
      return sf("<rect x=\"%.1f\" y=\"%.1f\" width=\"9\" height=\"9\" fill=\"%s\"", cx - 4.5, cy - 4.5, kPurple);
    if (ev == "node_failure") return sf("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"#7f1d1d\"", cx, cy);
    return sf("<path d=\"M%.1f %.1fl10 5l-10 5z\" fill=\"%s\"", cx - 5, cy - 5, kCyan);  // requeue
  };
  for (const Marker& m : markers) {
    const double cy = row_y[m.attempt] - (m.event == "checkpoint_durable" ? 0 : 14);
    o += shape(m.event, f.x((m.t - t0) / unit), cy);
    o += " class=\"mk\" data-tip=\"" + esc(m.tip + sf(" @ %.1f s", m.t - t0)) + "\"/>";
  }
  std::vector<std::pair<std::string, std::string>> leg;
  for (const auto& [label, color] : std::vector<std::pair<std::string, const char*>>{
           {"completed", kGreen}, {"preempted", kAmber}, {"failed", kRed}, {"running", kBlue}})
    leg.emplace_back(label, sf("<rect width=\"12\" height=\"10\" rx=\"2\" fill=\"%s\"/>", color));
  std::set<std::string> kinds;
  for (const Marker& m : markers) kinds.insert(m.event);
  for (const std::string& k : kinds) leg.emplace_back(k, shape(k, 6, 5) + "/>");
  return o + legend(leg, width) + "</svg>";
}

// ---------------------------------------------------------------------------------------------
// Page parts.

const char* kStyle = R"(
:root{--fg:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--card:#fff}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1360px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 10px 0 0;display:inline}
h2{font-size:16px;margin:28px 0 10px}
h3{font-size:13px;margin:0 0 6px;color:#374151;font-weight:600}
.sub{color:var(--muted);font-size:13px;margin-top:4px}
.badge{display:inline-block;padding:2px 10px;border-radius:999px;font-size:12px;font-weight:600;vertical-align:4px;background:#e5e7eb;color:#374151}
.badge.ok{background:#dcfce7;color:#166534}.badge.bad{background:#fee2e2;color:#991b1b}
.badge.warn{background:#fef3c7;color:#92400e}.badge.run{background:#dbeafe;color:#1e40af}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:8px;margin-top:14px}
.fact{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:7px 12px}
.fact b{display:block;font-size:11px;color:var(--muted);font-weight:500;text-transform:uppercase;letter-spacing:.04em}
.fact span{overflow-wrap:anywhere}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px}
.card.wide{grid-column:1/-1}
svg.plot{width:100%;height:auto;display:block}
svg text{font-size:11px;fill:#4b5563}
svg .lbl{fill:#6b7280}
.gl{stroke:#eef0f3}.ax{stroke:#9ca3af}
.line{fill:none;stroke-width:1.6}.dash{stroke-dasharray:5 3}.area{fill-opacity:.6;stroke:none}
.mark{stroke:#9ca3af;stroke-dasharray:4 3}.marktext{fill:#6b7280;font-size:10px}
.pt:hover,.mk:hover,.bar:hover{stroke:#111827;stroke-width:1.5}
.nodata{color:var(--muted);padding:28px 0;text-align:center;font-style:italic}
.note{color:var(--muted);font-size:12.5px;margin:6px 0}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line);font-size:12.5px}
table.narrow{width:auto;min-width:360px}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#f1f5f9;font-weight:600}
table.ev td{white-space:nowrap}table.ev td.mono{white-space:normal}td.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;overflow-wrap:anywhere}
tr.bad td{background:#fef2f2}tr.warn td{background:#fffbeb}tr.ok td{background:#f0fdf4}
#tip{position:absolute;display:none;pointer-events:none;background:#111827;color:#fff;padding:3px 8px;border-radius:4px;font-size:12px;white-space:nowrap}
)";

// One floating tooltip for every element with a data-tip attribute.
const char* kScript = R"(
(function () {
  var tip = document.getElementById('tip');
  if (!tip) return;
  document.addEventListener('mouseover', function (e) {
    var s = e.target && e.target.getAttribute ? e.target.getAttribute('data-tip') : null;
    if (s) { tip.textContent = s; tip.style.display = 'block'; } else { tip.style.display = 'none'; }
  });
  document.addEventListener('mousemove', function (e) {
    tip.style.left = (e.pageX + 12) + 'px';
    tip.style.top = (e.pageY + 12) + 'px';
  });
})();
)";

const char* badge_class(const std::string& status) {
  if (status == "COMPLETED") return "ok";
  if (status == "RUNNING" || status == "PENDING" || status == "REQUEUED") return "run";
  if (status == "PREEMPTED" || status == "UNKNOWN") return "warn";
  return "bad";
}

// Row colour of the event list (from a fixed set: event names in the file are only ever escaped text).
const char* event_class(const std::string& ev, const json& e) {
  if (ev == "fault_injected" || ev == "node_failure" || ev == "checkpoint_failed" || ev == "checkpoint_rejected" ||
      ev == "watchdog")
    return " class=\"bad\"";
  if (ev == "preempted" || ev == "requeue") return " class=\"warn\"";
  if (ev == "attempt_end" || ev == "job_end") {
    const std::string outcome = text(e, "outcome");
    return outcome == "completed" ? " class=\"ok\"" : outcome == "preempted" ? " class=\"warn\"" : " class=\"bad\"";
  }
  return "";
}

std::string fact(const std::string& label, const std::string& value) {
  if (value.empty()) return "";
  return "<div class=\"fact\"><b>" + esc(label) + "</b><span>" + esc(value) + "</span></div>";
}

std::string card(const std::string& title, const std::string& body, bool wide = false) {
  return std::string("<div class=\"card") + (wide ? " wide" : "") + "\"><h3>" + esc(title) + "</h3>" + body + "</div>";
}

// The task queue of a curation job (metrics.jsonl lines with tasks_done, one a second): tasks by
// state and tasks/s over the job's seconds; "" when the job has no queue.
std::string queue_cards(const std::vector<json>& metrics) {
  std::optional<double> t0;
  Chart states{"queue", "seconds", "tasks", "", {}, true, true, {}},
      rate{"queue_rate", "seconds", "tasks/s", " /s", {}, false, true, {}};
  states.series = {{"done", kGreen, {}}, {"leased", kOrange, {}}, {"pending", kBlue, {}}, {"dead", kSlate, {}}};
  rate.series = {{"tasks/s", kCyan, {}}};
  for (const json& m : metrics) {
    const auto t = parse_utc(text(m, "time"));
    if (!t || !num(m, "tasks_done")) continue;
    if (!t0) t0 = *t;
    const double x = *t - *t0;
    const char* keys[] = {"tasks_done", "tasks_leased", "tasks_pending", "tasks_dead"};
    for (size_t i = 0; i < 4; ++i) states.series[i].pts.emplace_back(x, num(m, keys[i]).value_or(0));
    rate.series[0].pts.emplace_back(x, num(m, "tasks_per_s").value_or(0));
  }
  if (!t0) return "";
  return "<h2>Task queue</h2>\n<div class=\"plots\">\n" + card("Tasks by state (stacked)", render_chart(states)) +
         "\n" + card("Tasks per second (this attempt)", render_chart(rate)) + "\n</div>\n";
}

}  // namespace

std::string html_escape(std::string_view s) {
  return esc(s);
}

Result<JobView> load_job_view(const std::string& workdir) {
  std::error_code ec;
  if (!fs::is_directory(workdir, ec))
    return Status::not_found("report: " + workdir + " is not a directory (expected a job's work dir)");
  JobView v;
  fs::path dir = fs::absolute(workdir, ec).lexically_normal();
  if (ec) dir = workdir;
  if (dir.filename().empty()) dir = dir.parent_path();  // "runs/t/" -> "runs/t"
  v.workdir = dir.string();

  auto read_lines = [&](const char* file, std::vector<json>& out) {
    std::ifstream in(dir / file);
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      json j = json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object())
        ++v.skipped_lines;
      else
        out.push_back(std::move(j));
    }
  };
  read_lines("events.jsonl", v.events);
  read_lines("metrics.jsonl", v.metrics);
  if (std::ifstream in(dir / "summary.json"); in) {
    json j = json::parse(in, nullptr, false);
    if (j.is_discarded() || !j.is_object())
      ++v.skipped_lines;  // counted like a torn line: the file exists but is unreadable
    else
      v.summary = std::move(j);
  }
  for (const json& e : v.events)
    if (text(e, "event") == "job_start" && !text(e, "name").empty()) v.name = text(e, "name");
  if (v.name.empty()) v.name = dir.filename().string();
  return v;
}

std::string render_report(const JobView& job) {
  const json* start = nullptr;  // the last job_start
  const json* end = nullptr;    // the last job_end
  std::set<int> attempts;
  std::optional<double> t_first, t_last;
  std::string first_time, slurm_id = job.id;
  for (const json& e : job.events) {
    const std::string ev = text(e, "event");
    if (ev == "job_start") start = &e;
    if (ev == "attempt_start" && job.id.empty() && !text(e, "slurm_job").empty()) slurm_id = text(e, "slurm_job");
    if (ev == "job_end") end = &e;
    attempts.insert(attempt_of(e));
    if (const auto t = parse_utc(text(e, "time"))) {
      if (!t_first || *t < *t_first) t_first = t, first_time = text(e, "time");
      if (!t_last || *t > *t_last) t_last = t;
    }
  }
  for (const json& m : job.metrics) attempts.insert(attempt_of(m));
  const std::vector<StepRow> rows = latest_steps(job.metrics);

  std::string status = job.status;
  if (status.empty()) {
    const std::string outcome = end ? text(*end, "outcome") : "";
    status = job.events.empty()       ? "UNKNOWN"
             : !end                   ? "RUNNING"
             : outcome == "completed" ? "COMPLETED"
             : outcome == "preempted" ? "PREEMPTED"
                                      : "FAILED";
  }

  std::string o = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  o += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  o += "<title>" + esc(job.name) + " — mobula report</title>\n<style>" + kStyle + "</style>\n</head>\n<body>\n<main>\n";

  // Header.
  o += "<header><h1>" + esc(job.name) + "</h1><span class=\"badge " + badge_class(status) + "\">" + esc(status) +
       "</span>";
  o += "<div class=\"sub\">" + (slurm_id.empty() ? std::string("local run") : "Slurm job " + esc(slurm_id)) + " · " +
       esc(job.workdir) + "</div>\n<div class=\"facts\">";
  const json none;
  const json& js = start ? *start : none;
  o += fact("spec", text(js, "spec")) + fact("spec hash", text(js, "spec_hash")) +
       fact("workload", text(js, "workload"));
  o += fact("ranks", text(js, "ranks")) + fact("mobula version", text(js, "mobula_version"));
  if (first_time.size() > 10 && first_time[10] == 'T') first_time[10] = ' ';  // easier to read
  o += fact("first start (UTC)", first_time);
  if (t_first && t_last) o += fact("duration", format_duration(*t_last - *t_first));
  o += fact("attempts", attempts.empty() ? "" : std::to_string(attempts.size()));
  if (!rows.empty()) o += fact("last step", sf("%.0f", rows.back().step));
  if (const auto a = num(job.summary, "base_accuracy")) o += fact("base accuracy", sf("%.4f", *a));
  if (const auto a = num(job.summary, "final_accuracy")) o += fact("final accuracy", sf("%.4f", *a));
  if (end) o += fact("exit code", text(*end, "exit_code"));
  o += "</div>";
  if (job.skipped_lines > 0)
    o += sf("<p class=\"note\">%d malformed line(s) skipped (a torn write after a crash?).</p>", job.skipped_lines);
  o += "</header>\n";

  // Step plots. Dashed lines mark the first step of each attempt after a restart.
  std::vector<std::pair<double, std::string>> marks;
  for (size_t i = 1; i < rows.size(); ++i)
    if (rows[i].attempt != rows[i - 1].attempt) marks.emplace_back(rows[i].step, sf("attempt %d", rows[i].attempt));
  auto chart = [&](std::string name, std::string ylabel, std::string unit, std::vector<Series> series) {
    Chart c{std::move(name), "step", std::move(ylabel), std::move(unit), std::move(series), false, false, marks};
    return c;
  };
  Chart reward = chart("reward", "", "",
                       {series_of(rows, "reward", "reward", kBlue), series_of(rows, "accuracy", "accuracy", kGreen)});
  Chart loss = chart("loss", "", "", {series_of(rows, "loss", "loss", kPurple), series_of(rows, "kl", "KL", kOrange)});
  Chart tokens = chart("tokens", "tokens/s", " tok/s", {series_of(rows, "tokens_per_s", "tokens/s", kCyan)});
  tokens.zero = true;
  // Breakdown: steps without any phase timing are left out, a missing phase counts as 0 (shared x values).
  static const std::vector<std::tuple<const char*, const char*, const char*, double>> kPhases = {
      {"sample_s", "sample", kBlue, 1},
      {"transfer_s", "transfer", kOrange, 1},
      {"train_s", "train", kGreen, 1},
      {"sync_ms", "sync", kPurple, 0.001},
      {"checkpoint_s", "checkpoint", kSlate, 1}};
  Chart breakdown = chart("breakdown", "seconds", " s", {});
  breakdown.stacked = true;
  for (const auto& [key, label, color, scale] : kPhases) breakdown.series.push_back({label, color, {}});
  for (const StepRow& r : rows) {
    bool any = false;
    for (const auto& p : kPhases) any = any || num(*r.line, std::get<0>(p)).has_value();
    if (!any) continue;
    for (size_t i = 0; i < kPhases.size(); ++i)
      breakdown.series[i].pts.emplace_back(r.step,
                                           num(*r.line, std::get<0>(kPhases[i])).value_or(0) * std::get<3>(kPhases[i]));
  }
  Chart sync = chart("sync", "ms", " ms", {series_of(rows, "sync_ms", "weight sync", kPurple)});
  sync.zero = true;
  // Checkpoint times come from the events; a step saved again after a restart keeps its latest time.
  std::map<double, double> staged, durable;
  for (const json& e : job.events) {
    const std::string ev = text(e, "event");
    const auto step = num(e, "step"), secs = num(e, "seconds");
    if (!step || !secs) continue;
    if (ev == "checkpoint_staged") staged[*step] = *secs;
    if (ev == "checkpoint_durable") durable[*step] = *secs;
  }
  Chart ckpt =
      chart("checkpoint", "seconds", " s",
            {{"staged", kBlue, {staged.begin(), staged.end()}}, {"durable", kGreen, {durable.begin(), durable.end()}}});
  ckpt.zero = true;

  // A curation job has queue lines instead of training steps: its page shows the queue.
  const std::string queue = queue_cards(job.metrics);
  const bool training = queue.empty() || !reward.series[0].pts.empty() || !loss.series[0].pts.empty();
  o += "<h2>" + std::string(training ? "Training" : "Attempts") + "</h2>\n<div class=\"plots\">\n";
  if (training) {
    o += card("Reward and accuracy", render_chart(reward)) + "\n";
    o += card("Loss and KL", render_chart(loss)) + "\n";
    o += card("Throughput (tokens/s)", render_chart(tokens)) + "\n";
    o += card("Step-time breakdown (stacked, s)", render_chart(breakdown)) + "\n";
    o += card("Weight-sync time (ms)", render_chart(sync)) + "\n";
    o += card("Checkpoint stage / durable time (s)", render_chart(ckpt)) + "\n";
  }
  o += card("Attempts and restarts", render_timeline(job.events), true) + "\n</div>\n";
  o += queue;

  // Layout: rank, role, host from the last job_start.
  o += "<h2>Layout</h2>\n";
  const json* roles = start && start->contains("roles") && (*start)["roles"].is_array() ? &(*start)["roles"] : nullptr;
  const json* hosts = start && start->contains("hosts") && (*start)["hosts"].is_array() ? &(*start)["hosts"] : nullptr;
  const size_t nranks = std::max(roles ? roles->size() : 0, hosts ? hosts->size() : 0);
  if (nranks == 0) {
    o += "<p class=\"note\">No layout recorded (no job_start event with roles/hosts).</p>\n";
  } else {
    o += "<table class=\"narrow\"><thead><tr><th>rank</th><th>role</th><th>host</th></tr></thead><tbody>\n";
    auto at = [](const json* a, size_t i) {
      if (!a || i >= a->size()) return std::string();
      return (*a)[i].is_string() ? (*a)[i].get<std::string>() : dump((*a)[i]);
    };
    for (size_t i = 0; i < nranks; ++i)
      o += sf("<tr><td>%zu</td><td>", i) + esc(at(roles, i)) + "</td><td>" + esc(at(hosts, i)) + "</td></tr>\n";
    o += "</tbody></table>\n";
  }

  // Summary figures (scalar fields of summary.json; json objects iterate in key order).
  if (job.summary.is_object()) {
    o += "<h2>Summary</h2>\n<div class=\"facts\">";
    for (const auto& [key, value] : job.summary.items())
      if (value.is_primitive() && !value.is_null())
        o += fact(key, value.is_string() ? value.get<std::string>() : dump(value));
    o += "</div>\n";
  }

  // Event list: the last kMaxEvents events, file order.
  constexpr size_t kMaxEvents = 500;
  o += sf("<h2>Events (%zu)</h2>\n", job.events.size());
  const size_t first = job.events.size() > kMaxEvents ? job.events.size() - kMaxEvents : 0;
  if (first > 0) o += sf("<p class=\"note\">Showing the last %zu of %zu events.</p>\n", kMaxEvents, job.events.size());
  if (job.events.empty()) {
    o += "<p class=\"note\">No events recorded.</p>\n";
  } else {
    o += "<table class=\"ev\"><thead><tr><th>time (UTC)</th><th>attempt</th><th>rank</th><th>host</th><th>event</th>"
         "<th>details</th></tr></thead><tbody>\n";
    static const std::set<std::string> kCommon = {"time", "event", "attempt", "rank", "host"};
    for (size_t i = first; i < job.events.size(); ++i) {
      const json& e = job.events[i];
      const std::string ev = text(e, "event");
      std::string details;
      for (const auto& [key, value] : e.items()) {
        if (kCommon.count(key)) continue;
        if (!details.empty()) details += "  ";
        details += key + "=" + (value.is_string() ? value.get<std::string>() : dump(value));
      }
      o += std::string("<tr") + event_class(ev, e) + "><td>" + esc(text(e, "time")) + "</td><td>" +
           esc(text(e, "attempt")) + "</td><td>" + esc(text(e, "rank")) + "</td><td>" + esc(text(e, "host")) +
           "</td><td>" + esc(ev) + "</td><td class=\"mono\">" + esc(details) + "</td></tr>\n";
    }
    o += "</tbody></table>\n";
  }
  o += "</main>\n<div id=\"tip\"></div>\n<script>" + std::string(kScript) + "</script>\n</body>\n</html>\n";
  return o;
}

}  // namespace mobula::launch
