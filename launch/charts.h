// The SVG charts and the page furniture (style, tooltip script, fact boxes, cards) of mobula's
// self-contained HTML pages: the job report (launch/report.h) and the scaling study
// (perf/scaling/study.h). Inline SVG and CSS only, no network access.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mobula::launch::charts {

// printf into a std::string.
[[gnu::format(printf, 1, 2)]] std::string sf(const char* fmt, ...);
// Text for HTML (& < > " ' escaped).
std::string esc(std::string_view s);

// Every chart is a fixed-size viewBox scaled to its card's width by CSS.
constexpr double kW = 640, kH = 270, kLeft = 62, kRight = 14, kTop = 30, kBottom = 42;

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
  std::string xtip = "step";                          // the x value's name in a point's tooltip
  bool log2x = false;                                 // x axis in powers of two (x > 0)
};

struct Scale {
  double lo, hi, step;
  int decimals;
};
// Ticks at 1, 2, 2.5 or 5 × 10^k covering [lo, hi] with about `target` intervals.
Scale nice_scale(double lo, double hi, bool integer, int target = 5);
// At most 100 tick values (a bound even for a degenerate scale).
std::vector<double> ticks(const Scale& s);
std::string tick_text(double v, const Scale& s);
std::string no_data(const std::string& what);

// A plot area mapping [xs] × [ys].
struct Frame {
  Scale xs, ys;
  double w = kW, h = kH, top = kTop;  // the viewBox size and the plot area's top edge
  double x(double v) const { return kLeft + (v - xs.lo) / (xs.hi - xs.lo) * (w - kLeft - kRight); }
  double y(double v) const { return h - kBottom - (v - ys.lo) / (ys.hi - ys.lo) * (h - top - kBottom); }
};
// Axes, grid, ticks and axis titles; `xpow2`: x tick labels are 2^v.
std::string axes(const Frame& f, const std::string& xlabel, const std::string& ylabel, bool yticks = true,
                 bool xpow2 = false);
// Legend entries right-aligned along the top margin; `swatch` is the SVG of one 12×10 symbol at (0,0).
std::string legend(const std::vector<std::pair<std::string, std::string>>& entries, double w = kW);
// A line chart (or stacked areas) with a data point circle (class "pt", tooltip) per value.
std::string render_chart(const Chart& c);

extern const char* const kBlue;
extern const char* const kGreen;
extern const char* const kPurple;
extern const char* const kOrange;
extern const char* const kCyan;
extern const char* const kRed;
extern const char* const kAmber;
extern const char* const kSlate;

// The pages' CSS, and one floating tooltip for every element with a data-tip attribute (JS).
extern const char* const kStyle;
extern const char* const kScript;

// A labelled figure box ("" when value is empty), and a titled card around a chart.
std::string fact(const std::string& label, const std::string& value);
std::string card(const std::string& title, const std::string& body, bool wide = false);

}  // namespace mobula::launch::charts
