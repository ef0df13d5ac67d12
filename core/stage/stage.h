// The stage runtime (docs/embedding.md): producer ranks (e.g. `embed`) compute data for consumer
// ranks (e.g. trainers) ahead of time, pulled and credit-controlled, delivered in a deterministic
// order.
//
// Order. The sample at global position p is sample_at(p): epoch p / N, and within the epoch a seeded
// permutation of the N samples (a Feistel network: O(1) memory, any N). Item j of consumer c is the
// S = global_batch / C samples at positions j*global_batch + c*S ... + S-1: a consumer's sequence is a
// function of (seed, N, global_batch, C, j) only — never of which producer computed what, or when.
//
// Flow. Consumer c grants `prefetch` credits (items it has buffer space for, receives posted); the
// dispatcher (a thread of consumer 0) hands each credit to the next producer that said it is ready
// (pull: an idle producer always takes the next item, so slow and fast producers mix), lowest item
// first; the producer computes the item and sends it straight to its consumer; the consumer reorders
// and delivers items in order and grants a new credit when it releases one. Memory is bounded on both
// sides: a consumer holds at most `prefetch` items, a producer at most `producer_slots`.
//
// Threads: each consumer runs a pump thread that alone makes its MPI calls (needs
// MPI_THREAD_MULTIPLE, which Environment requests); producers call MPI from the thread that runs
// run(). Two communicators are duplicated from the one given (control, data).
//
// Restart: the consumers' cursor (the next item) goes into the checkpoint; producers are stateless.
// Consumer::create(..., start_item = cursor) continues the same sequence: nothing skipped or repeated.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::stage {

struct StageOptions {
  uint64_t dataset_size = 0;  // N
  uint64_t seed = 0;
  int global_batch = 0;    // samples per item, all consumers together; a multiple of the consumer count
  int sample_floats = 0;   // floats a producer computes per sample
  int prefetch = 4;        // items in flight per consumer (credits): its buffer bound
  int producer_slots = 2;  // items a producer may hold: one computing, one queued
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};  // a consumer waiting this long fails
};

// The sample at global position `position` (see the order above).
uint64_t sample_at(uint64_t position, uint64_t dataset_size, uint64_t seed);

struct Item {
  int64_t index = 0;                  // item number j
  std::span<const uint64_t> samples;  // sample ids, S of them
  std::span<const float> data;        // S * sample_floats
  int producer = -1;                  // rank (in the communicator given) that computed it
};

class Consumer {
 public:
  // Collective over `comm` with Producer::create on the producer ranks. `consumers` / `producers`:
  // ranks in comm, disjoint, every rank in exactly one. Items start_item .. end_item-1 are delivered.
  static Result<std::unique_ptr<Consumer>> create(MPI_Comm comm, std::vector<int> consumers, std::vector<int> producers,
                                                  const StageOptions& opt, int64_t start_item, int64_t end_item);
  ~Consumer();
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;

  // The next item in order (the previous Item's spans are invalid from here on).
  Result<Item> next();
  // The cursor: the item next() returns next.
  int64_t cursor() const;
  // Ends the stage on every consumer and producer (collective with the producers' run()); items
  // still in flight are received and dropped. Call it also when stopping early (preemption).
  // Destroying a Consumer without finish() (a failing rank) aborts the stage: every producer's run()
  // and every other consumer's next() return an error naming this rank, at once.
  Status finish();

  struct Stats {
    double wait_s = 0;      // time next() waited for data: the stall
    int64_t items = 0;      // delivered
    int max_in_flight = 0;  // most items credited and not yet released, ever (<= prefetch)
    int max_buffered = 0;   // most items arrived and not yet released, ever (<= prefetch)
  };
  Stats stats() const;

  struct Impl;

 private:
  explicit Consumer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Computes the data of `samples` (S ids) into `out` (S * sample_floats floats).
using ProduceFn = std::function<Status(std::span<const uint64_t> samples, float* out)>;

class Producer {
 public:
  static Result<std::unique_ptr<Producer>> create(MPI_Comm comm, std::vector<int> consumers, std::vector<int> producers,
                                                  const StageOptions& opt);
  ~Producer();
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;

  // Takes items until the consumers finish. A failing `fn` ends it with that error, and tells the
  // consumers (their next() fails at once); a consumer that fails (destroyed without finish()) ends
  // run() with an error naming it.
  Status run(const ProduceFn& fn);

  struct Stats {
    double busy_s = 0;  // inside fn
    int64_t items = 0;
  };
  Stats stats() const { return stats_; }

 private:
  Producer() = default;
  Status run_items(const ProduceFn& fn);
  int me_ = 0;
  bool peer_aborted_ = false;
  MPI_Comm ctrl_ = MPI_COMM_NULL, data_ = MPI_COMM_NULL;
  std::vector<int> consumers_;
  StageOptions opt_;
  int dispatcher_ = 0;
  Stats stats_;
};

}  // namespace mobula::stage
