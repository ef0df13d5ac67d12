// A Tinker-style training API: every call returns a future, calls execute strictly in submission
// order, forward_backward accumulates gradients until optim_step applies them.
//
// This is the contract a later multi-tenant service exposes over the network, so it carries no MPI
// types. Two backends (docs/rl.md, "The training API"):
//  * local (create_local): one worker thread owning a Gpt, its AdamW state and a Sampler; calls
//    queue and return at once.
//  * SPMD (create_spmd): every member of a trainer group holds a replica and runs the SAME sequence
//    of calls on its own share of the data; forward_backward reports the group's loss statistics and
//    optim_step sums the gradients over the group (through a GradientGroup, deterministic) before
//    the identical AdamW step, so replicas stay bitwise equal. save_weights_for_sampler publishes
//    to a SamplerSink (the rollout group, over the direct transport) instead of a file. Calls run on
//    the caller's thread (the group's collectives must be issued in one order on every member); the
//    returned futures are ready on return, and the order contract holds trivially.
//
// Thread safety: the methods may be called from any thread; local: each enqueues and returns at
// once; SPMD: from one thread per member.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "core/transport/shard_sum.h"
#include "rl/algo/batch.h"
#include "rl/model/gpt.h"
#include "rl/model/sampler.h"
#include "rl/optim/adamw.h"

namespace mobula::rl {

struct AdamParams {
  float lr = 1e-3f;
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.0f, grad_clip = 1.0f;
};

struct OptimStepOutput {
  float grad_norm = 0;
  int step = 0;  // optimizer steps applied so far
};

template <class T>
using Future = std::shared_future<Result<T>>;

// The group a SPMD client's collectives run over; rl/roles implements it over a Transport. Every
// member calls the methods in the same order with the same lengths.
class GradientGroup {
 public:
  virtual ~GradientGroup() = default;
  // Elementwise sums over the group, in rank order (bitwise equal on every member).
  virtual Status sum(std::span<float> values) = 0;
  virtual Status sum(std::span<double> values) = 0;
  // This member's index and the group's size (the shard blocks of core/transport/shard_sum.h).
  virtual int member() const = 0;
  virtual int members() const = 0;
  // The fixed-tree sum over `shards` shards (sum_shards): the same bits whatever the group size.
  virtual Status sum_shards(int shards, const ShardValueFn<float>& value, std::span<float> out) = 0;
  virtual Status sum_shards(int shards, const ShardValueFn<double>& value, std::span<double> out) = 0;
};

// Where save_weights_for_sampler(name) publishes the weights of a SPMD client (collective over
// the trainer group; the sink decides which members send what).
class SamplerSink {
 public:
  virtual ~SamplerSink() = default;
  virtual Status publish(std::span<const float> params, const std::string& name) = 0;
};

struct ClientOptions {
  GptConfig model;
  uint64_t seed = 0;       // weight initialisation
  int max_batch = 16;      // rows per microbatch of forward_backward
  int sample_rows = 64;    // most sequences sampled at once
  bool recompute = false;  // activation recomputation
  int microbatch = 0;      // rows per forward/backward pass of the SPMD backend (0: max_batch)
  // SPMD: 0 sums the members' gradients in rank order (bitwise the same for a fixed group size).
  // S > 0: the step's batch is cut into S shards (Datum::shard), member m holding the block
  // shards_of(m, members, S); each shard's gradient is computed alone and the shards are summed in
  // one fixed tree, so the weights are the same bits for every group size <= S (docs/rl.md,
  // "Determinism"). Then forward_backward does the group's reduction and may be called once per
  // optim_step.
  int shards = 0;
};

// In-process access to the training state, for the roles (HDF5 checkpoints, evaluation): not part
// of the network contract. Changes made through it are what later calls see.
struct TrainingState {
  Gpt<>& model;
  AdamW<>& optimizer;
};

class TrainingClient {
 public:
  static Result<std::unique_ptr<TrainingClient>> create_local(const ClientOptions& opts);
  // A member of a SPMD trainer group (see the top of this file). `group` and `sink` (may be null:
  // save_weights_for_sampler then writes a file) outlive the client. No sampler: sample() fails.
  static Result<std::unique_ptr<TrainingClient>> create_spmd(const ClientOptions& opts, GradientGroup& group,
                                                             SamplerSink* sink);
  ~TrainingClient();
  TrainingClient(const TrainingClient&) = delete;
  TrainingClient& operator=(const TrainingClient&) = delete;

  // Loss over the whole batch (means over all its trained tokens); gradients accumulate. SPMD: the
  // stats (and stats.tokens) are over the group's batch; logprobs are this member's. With shards:
  // every datum's shard is one of this member's, the batch ordered by shard.
  Future<ForwardBackwardOutput> forward_backward(std::vector<Datum> batch, LossConfig loss);
  // Log-probs of every datum's target tokens under the current weights; no gradients.
  Future<std::vector<std::vector<float>>> forward(std::vector<Datum> batch);
  // Applies the accumulated gradients (averaged over the forward_backward calls since the last
  // step) and clears them. A barrier: later calls see the new weights. Fails when no token was
  // trained since the last step (SPMD: by the whole group; check forward_backward's stats.tokens).
  Future<OptimStepOutput> optim_step(AdamParams params);
  // num_samples completions per prompt (prefix shared); seeds derive from (seed, prompt, sample).
  Future<std::vector<Sample>> sample(std::vector<std::vector<int>> prompts, int num_samples, SamplingParams params,
                                     uint64_t seed);
  // Weights only (safetensors, docs/formats/safetensors.md); returns the path written. SPMD with a
  // sink: publishes the weights to it under `path` (a version name) instead.
  Future<std::string> save_weights_for_sampler(std::string path);
  // Weights + optimizer moments + step (three safetensors files PATH, PATH.m, PATH.v with the step
  // in the metadata of PATH.m); load_state restores them bitwise.
  Future<std::string> save_state(std::string path);
  Future<std::string> load_state(std::string path);

  // Runs fn on the training state in submission order (see TrainingState).
  Future<bool> with_state(std::function<Status(TrainingState&)> fn);

  const GptConfig& config() const { return opts_.model; }

 private:
  explicit TrainingClient(const ClientOptions& o);
  template <class T>
  Future<T> submit(std::function<Result<T>()> fn);
  void run();

  ClientOptions opts_;
  std::unique_ptr<Gpt<>> model_;
  std::unique_ptr<AdamW<>> opt_;
  std::unique_ptr<Sampler<>> sampler_;
  Result<ForwardBackwardOutput> forward_backward_shards(const std::vector<Datum>& batch, const LossConfig& loss);

  double tokens_since_step_ = 0;  // trained tokens accumulated in the gradients (SPMD: the group's)
  bool reduced_ = false;          // shards: the gradients hold the group's sum already
  GradientGroup* group_ = nullptr;
  SamplerSink* sink_ = nullptr;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace mobula::rl
