#include "launch/charts.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <limits>

namespace mobula::launch::charts {

std::string sf(const char* fmt, ...) {
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

// ---------------------------------------------------------------------------------------------
// Plots. Every chart is a fixed-size viewBox scaled to its card's width by CSS.

constexpr size_t kMaxCircles = 1500;  // per series; longer runs keep only the polyline's vertices

// Ticks at 1, 2, 2.5 or 5 × 10^k covering [lo, hi] with about `target` intervals.
Scale nice_scale(double lo, double hi, bool integer, int target) {
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

std::string axes(const Frame& f, const std::string& xlabel, const std::string& ylabel, bool yticks, bool xpow2) {
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
    const std::string label = xpow2 ? sf("%.0f", std::exp2(v)) : tick_text(v, f.xs);
    o += sf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", f.x(v), f.h - kBottom + 16) + label + "</text>";
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
std::string legend(const std::vector<std::pair<std::string, std::string>>& entries, double w) {
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
  // A log2 x axis plots log2(x); non-positive x values are left out.
  auto xpos = [&](double x) { return c.log2x ? std::log2(x) : x; };
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
      x0 = std::min(x0, xpos(pts[i].first)), x1 = std::max(x1, xpos(pts[i].first));
      y0 = std::min(y0, y), y1 = std::max(y1, y);
      ++n;
    }
  }
  if (n == 0 || !std::isfinite(x0) || !std::isfinite(x1)) return no_data(c.name);
  if (c.zero || c.stacked) y0 = std::min(y0, 0.0), y1 = std::max(y1, 0.0);
  const Frame f{nice_scale(x0, x1, true, 8), nice_scale(y0, y1, false)};

  std::string o =
      sf("<svg class=\"plot\" data-plot=\"%s\" viewBox=\"0 0 %.0f %.0f\" role=\"img\">", c.name.c_str(), kW, kH);
  o += axes(f, c.xlabel, c.ylabel, true, c.log2x);
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
    for (size_t i = 0; i < se.pts.size(); ++i) line += sf("%.1f,%.1f ", f.x(xpos(se.pts[i].first)), f.y(tops[s][i]));
    if (c.stacked) {
      std::string area = line;
      for (size_t i = se.pts.size(); i-- > 0;) {
        const double base = s > 0 && i < tops[s - 1].size() ? tops[s - 1][i] : 0.0;
        area += sf("%.1f,%.1f ", f.x(xpos(se.pts[i].first)), f.y(base));
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
        o += sf("<circle class=\"pt\" cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"%s\" data-tip=\"", f.x(xpos(x)),
                f.y(tops[s][i]), r, se.color.c_str()) +
             esc(sf("%s %.6g · %s %.4g%s", c.xtip.c_str(), x, se.label.c_str(), y, c.unit.c_str())) + "\"/>";
      }
    }
    leg.emplace_back(se.label, c.stacked ? "<rect width=\"12\" height=\"10\" fill=\"" + se.color + "\"/>"
                               : dashed
                                   ? "<path d=\"M0 5.5h5M8 5.5h5\" stroke-width=\"3\" stroke=\"" + se.color + "\"/>"
                                   : "<rect y=\"4\" width=\"13\" height=\"3\" fill=\"" + se.color + "\"/>");
  }
  return o + legend(leg) + "</svg>";
}

const char* const kBlue = "#2563eb";
const char* const kGreen = "#16a34a";
const char* const kPurple = "#9333ea";
const char* const kOrange = "#ea580c";
const char* const kCyan = "#0891b2";
const char* const kRed = "#dc2626";
const char* const kAmber = "#d97706";
const char* const kSlate = "#64748b";

const char* const kStyle = R"(
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
const char* const kScript = R"(
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

std::string fact(const std::string& label, const std::string& value) {
  if (value.empty()) return "";
  return "<div class=\"fact\"><b>" + esc(label) + "</b><span>" + esc(value) + "</span></div>";
}

std::string card(const std::string& title, const std::string& body, bool wide) {
  return std::string("<div class=\"card") + (wide ? " wide" : "") + "\"><h3>" + esc(title) + "</h3>" + body + "</div>";
}

}  // namespace mobula::launch::charts
