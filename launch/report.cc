#include "launch/report.h"

#include "core/runtime/time_format.h"
#include "launch/charts.h"

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
using namespace charts;

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
