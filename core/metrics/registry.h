// The metrics registry of one process (docs/observability.md "Metrics"): counters, gauges and
// histograms with labels, in the Prometheus data model.
//
//   auto& bytes = metrics::registry().counter("mobula_transport_bytes_total", "Bytes moved", {{"flow", "weights"}});
//   bytes.inc(n);   // hot path: one relaxed atomic add on local memory
//
// Look-ups take a mutex: keep the returned reference (it lives as long as the process). Snapshots are
// taken at step boundaries and travel to the coordinator (core/metrics/aggregate.h), which adds the
// rank and role labels and serves the Prometheus text exposition format (exposition() below).
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace mobula::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;  // kept sorted by name
enum class Kind : uint8_t { kCounter, kGauge, kHistogram };

class Counter {
 public:
  void inc(double v = 1.0) { v_.fetch_add(v, std::memory_order_relaxed); }
  double value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> v_{0.0};
};

class Gauge {
 public:
  void set(double v) { v_.store(v, std::memory_order_relaxed); }
  void add(double v) { v_.fetch_add(v, std::memory_order_relaxed); }
  double value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> v_{0.0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);  // upper bounds, increasing; +Inf is implied
  void observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  // Per-bucket (not cumulative) counts, bounds().size() + 1 of them (the last is +Inf).
  std::vector<uint64_t> counts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<double> sum_{0.0};
  std::atomic<uint64_t> count_{0};
};

// Bucket bounds start, start*factor, ... (n of them): latencies from 1 ms to ~1 min with (1e-3, 2.5, 12).
std::vector<double> exponential_buckets(double start, double factor, int n);

class Registry {
 public:
  // Get or create. The name and label names must be valid Prometheus names, and a name keeps one
  // kind (and, for histograms, one set of bounds): a violation is a programming error and aborts.
  Counter& counter(const std::string& name, const std::string& help, Labels labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, Labels labels = {});
  Histogram& histogram(const std::string& name, const std::string& help, const std::vector<double>& bounds,
                       Labels labels = {});

  // Every series now, as JSON: [{"name", "help", "kind", "series": [{"labels": {...}, "value"} or
  // {"labels", "bounds", "counts", "sum", "count"}]}], families sorted by name.
  nlohmann::json snapshot() const;

 private:
  struct Family {
    std::string help;
    Kind kind;
    std::vector<double> bounds;
    std::map<Labels, size_t> index;  // -> position in the kind's deque
  };
  Family& family(const std::string& name, const std::string& help, Kind kind, const std::vector<double>& bounds);

  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
  std::deque<Counter> counters_;  // deques: references stay valid as they grow
  std::deque<Gauge> gauges_;
  std::deque<Histogram> histograms_;
};

// The process-wide registry.
Registry& registry();

// Times one transfer of a named flow ("weights", "gradients", "objects"): adds its bytes and seconds
// to mobula_transport_bytes_total / mobula_transport_seconds_total{flow}; the bandwidth of a flow is
// the ratio of their rates.
class FlowTimer {
 public:
  FlowTimer(const char* flow, double bytes);
  ~FlowTimer();
  FlowTimer(const FlowTimer&) = delete;
  FlowTimer& operator=(const FlowTimer&) = delete;

 private:
  Counter& bytes_;
  Counter& seconds_;
  double n_;
  std::chrono::steady_clock::time_point t0_;
};

// One process's snapshot as the coordinator holds it.
struct RankSnapshot {
  int rank = 0;
  std::string role;
  double age_s = 0;  // seconds since it was taken (the rank's heartbeat age)
  nlohmann::json families;
};

// The Prometheus text exposition format (version 0.0.4) of several ranks' snapshots: one HELP/TYPE
// block per family, every series labelled with its rank and role. Adds mobula_heartbeat_age_seconds
// per rank.
std::string exposition(const std::vector<RankSnapshot>& ranks);

}  // namespace mobula::metrics
