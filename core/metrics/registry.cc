#include "core/metrics/registry.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>

namespace mobula::metrics {

namespace {

bool valid_name(const std::string& s, bool label) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (!label && c == ':');
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return !(label && s.rfind("__", 0) == 0);  // reserved
}

[[noreturn]] void misuse(const std::string& what) {
  std::fprintf(stderr, "mobula: metrics registry misuse: %s\n", what.c_str());
  std::abort();
}

Labels normalized(Labels labels, const std::string& metric) {
  std::sort(labels.begin(), labels.end());
  for (size_t i = 0; i < labels.size(); ++i) {
    if (!valid_name(labels[i].first, true)) misuse(metric + ": bad label name '" + labels[i].first + "'");
    if (i && labels[i].first == labels[i - 1].first) misuse(metric + ": label '" + labels[i].first + "' twice");
  }
  return labels;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kCounter:
      return "counter";
    case Kind::kGauge:
      return "gauge";
    case Kind::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// Values as Prometheus writes them: integers without a fraction, +Inf/-Inf/NaN spelled out.
std::string value_text(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else {
    for (int prec = 6; prec <= 17; ++prec) {  // the shortest text that reads back as v
      std::snprintf(buf, sizeof buf, "%.*g", prec, v);
      if (std::strtod(buf, nullptr) == v) break;
    }
  }
  return buf;
}

std::string escape_label(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string escape_help(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string label_text(const std::vector<std::pair<std::string, std::string>>& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i)
    out += (i ? "," : "") + labels[i].first + "=\"" + escape_label(labels[i].second) + "\"";
  return out + "}";
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double v) {
  const size_t b = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  counts_[b].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::counts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  for (size_t i = 0; i < out.size(); ++i) out[i] = counts_[i].load(std::memory_order_relaxed);
  return out;
}

std::vector<double> exponential_buckets(double start, double factor, int n) {
  std::vector<double> b;
  double x = start;
  for (int i = 0; i < n; ++i, x *= factor) b.push_back(x);
  return b;
}

Registry::Family& Registry::family(const std::string& name, const std::string& help, Kind kind,
                                   const std::vector<double>& bounds) {
  if (!valid_name(name, false)) misuse("bad metric name '" + name + "'");
  auto [it, added] = families_.try_emplace(name);
  Family& f = it->second;
  if (added) {
    f.help = help;
    f.kind = kind;
    f.bounds = bounds;
    if (kind == Kind::kHistogram && !std::is_sorted(bounds.begin(), bounds.end()))
      misuse(name + ": histogram bounds must increase");
  } else if (f.kind != kind || f.bounds != bounds) {
    misuse(name + " was registered as a " + kind_name(f.kind) + " with other bounds or kind");
  }
  return f;
}

Counter& Registry::counter(const std::string& name, const std::string& help, Labels labels) {
  labels = normalized(std::move(labels), name);
  std::lock_guard lock(mu_);
  Family& f = family(name, help, Kind::kCounter, {});
  auto [it, added] = f.index.try_emplace(std::move(labels), counters_.size());
  if (added) counters_.emplace_back();
  return counters_[it->second];
}

Gauge& Registry::gauge(const std::string& name, const std::string& help, Labels labels) {
  labels = normalized(std::move(labels), name);
  std::lock_guard lock(mu_);
  Family& f = family(name, help, Kind::kGauge, {});
  auto [it, added] = f.index.try_emplace(std::move(labels), gauges_.size());
  if (added) gauges_.emplace_back();
  return gauges_[it->second];
}

Histogram& Registry::histogram(const std::string& name, const std::string& help, const std::vector<double>& bounds,
                               Labels labels) {
  labels = normalized(std::move(labels), name);
  std::lock_guard lock(mu_);
  Family& f = family(name, help, Kind::kHistogram, bounds);
  auto [it, added] = f.index.try_emplace(std::move(labels), histograms_.size());
  if (added) histograms_.emplace_back(bounds);
  return histograms_[it->second];
}

nlohmann::json Registry::snapshot() const {
  std::lock_guard lock(mu_);
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [name, f] : families_) {
    nlohmann::json fam = {{"name", name}, {"help", f.help}, {"kind", kind_name(f.kind)}};
    nlohmann::json series = nlohmann::json::array();
    for (const auto& [labels, i] : f.index) {
      nlohmann::json l = nlohmann::json::object();
      for (const auto& [k, v] : labels) l[k] = v;
      if (f.kind == Kind::kCounter) {
        series.push_back({{"labels", l}, {"value", counters_[i].value()}});
      } else if (f.kind == Kind::kGauge) {
        series.push_back({{"labels", l}, {"value", gauges_[i].value()}});
      } else {
        const Histogram& h = histograms_[i];
        series.push_back(
            {{"labels", l}, {"bounds", h.bounds()}, {"counts", h.counts()}, {"sum", h.sum()}, {"count", h.count()}});
      }
    }
    fam["series"] = std::move(series);
    out.push_back(std::move(fam));
  }
  return out;
}

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: threads may record until exit
  return *r;
}

FlowTimer::FlowTimer(const char* flow, double bytes)
    : bytes_(
          registry().counter("mobula_transport_bytes_total", "Bytes moved by this rank, per flow", {{"flow", flow}})),
      seconds_(registry().counter("mobula_transport_seconds_total", "Seconds this rank spent moving them, per flow",
                                  {{"flow", flow}})),
      n_(bytes),
      t0_(std::chrono::steady_clock::now()) {}

FlowTimer::~FlowTimer() {
  bytes_.inc(n_);
  seconds_.inc(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count());
}

std::string exposition(const std::vector<RankSnapshot>& ranks) {
  struct Line {
    std::string help, kind;
    std::vector<std::string> samples;
  };
  std::map<std::string, Line> fams;  // sorted by name, every rank's series under one HELP/TYPE
  for (const RankSnapshot& r : ranks) {
    if (!r.families.is_array()) continue;
    for (const auto& f : r.families) {
      const std::string name = f.value("name", "");
      if (name.empty()) continue;
      Line& line = fams[name];
      if (line.kind.empty()) {
        line.help = f.value("help", "");
        line.kind = f.value("kind", "untyped");
      }
      if (!f.contains("series") || !f["series"].is_array()) continue;
      for (const auto& s : f["series"]) {
        std::vector<std::pair<std::string, std::string>> labels;
        if (s.contains("labels") && s["labels"].is_object())
          for (const auto& [k, v] : s["labels"].items())
            labels.emplace_back(k, v.is_string() ? v.get<std::string>() : "");
        labels.emplace_back("rank", std::to_string(r.rank));
        labels.emplace_back("role", r.role);
        std::sort(labels.begin(), labels.end());
        if (line.kind != "histogram") {
          line.samples.push_back(name + label_text(labels) + " " + value_text(s.value("value", 0.0)));
          continue;
        }
        const auto bounds = s.value("bounds", std::vector<double>{});
        const auto counts = s.value("counts", std::vector<uint64_t>{});
        uint64_t cum = 0;
        for (size_t b = 0; b < counts.size(); ++b) {
          cum += counts[b];
          auto with_le = labels;
          with_le.emplace_back("le", b < bounds.size() ? value_text(bounds[b]) : "+Inf");
          line.samples.push_back(name + "_bucket" + label_text(with_le) + " " + std::to_string(cum));
        }
        line.samples.push_back(name + "_sum" + label_text(labels) + " " + value_text(s.value("sum", 0.0)));
        line.samples.push_back(name + "_count" + label_text(labels) + " " +
                               std::to_string(s.value("count", static_cast<uint64_t>(0))));
      }
    }
  }
  Line& hb = fams["mobula_heartbeat_age_seconds"];
  hb.help = "Seconds since the rank's last metrics snapshot reached the coordinator";
  hb.kind = "gauge";
  for (const RankSnapshot& r : ranks)
    hb.samples.push_back("mobula_heartbeat_age_seconds" +
                         label_text({{"rank", std::to_string(r.rank)}, {"role", r.role}}) + " " + value_text(r.age_s));
  std::string out;
  for (const auto& [name, line] : fams) {
    out += "# HELP " + name + " " + escape_help(line.help) + "\n";
    out += "# TYPE " + name + " " + line.kind + "\n";
    for (const auto& s : line.samples) out += s + "\n";
  }
  return out;
}

}  // namespace mobula::metrics
