// Metrics from every rank to the coordinator (world rank 0), and the Prometheus endpoint it serves.
//
// Ranks record into their own registry (local memory only). At step boundaries, tick() sends a
// snapshot to the coordinator — at most one per metrics.interval_s, and never blocking: a rank whose
// previous snapshot is still in flight skips this one. Point-to-point on a communicator of its own,
// not a collective: trainer and rollout ranks reach their step boundaries at different times (async
// GRPO runs the rollouts a step ahead), and a collective would tie them together. The coordinator
// keeps the newest snapshot of every rank and the time it arrived (the rank's heartbeat age).
#pragma once

#include <mpi.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "core/metrics/registry.h"
#include "core/runtime/status.h"

namespace mobula::metrics {

class Aggregator {
 public:
  // Collective over `comm` (duplicated). `role` labels this rank's series.
  static Result<std::unique_ptr<Aggregator>> create(MPI_Comm comm, std::string role, double interval_s);
  ~Aggregator();
  Aggregator(const Aggregator&) = delete;
  Aggregator& operator=(const Aggregator&) = delete;

  // At a step boundary (cheap when the interval has not passed). Coordinator: takes in what arrived.
  void tick();
  // Once, at the end, on every rank: a last snapshot from each rank; the coordinator waits up to
  // `timeout` for all of them (a rank that died cannot send; the job is failing then anyway).
  Status finish(std::chrono::milliseconds timeout);

  bool coordinator() const { return rank_ == 0; }
  // Coordinator: every rank's newest snapshot (its own taken now), ages filled in. Thread-safe.
  std::vector<RankSnapshot> snapshots() const;
  std::string exposition() const { return metrics::exposition(snapshots()); }

 private:
  struct Impl;
  explicit Aggregator(std::unique_ptr<Impl> impl, int rank);
  std::unique_ptr<Impl> impl_;
  int rank_;
};

// GET /metrics on ADDRESS:PORT in a background thread (cpp-httplib), the body from `aggregator`.
class MetricsServer {
 public:
  static Result<std::unique_ptr<MetricsServer>> start(const std::string& address, int port,
                                                      const Aggregator& aggregator);
  ~MetricsServer();  // stops and joins
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  std::string url() const;

 private:
  struct Impl;
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mobula::metrics
