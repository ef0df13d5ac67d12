// A Tinker-style training API: every call returns a future, calls execute strictly in submission
// order, forward_backward accumulates gradients until optim_step applies them.
//
// This is the contract a later multi-tenant service exposes over the network, so it carries no MPI
// types. This file has the local backend: one worker thread owning a Gpt, its AdamW state and a
// Sampler; the SPMD backend (trainer group executes forward_backward/optim_step data-parallel,
// rollout group executes sample) implements the same interface.
//
// Thread safety: the methods may be called from any thread; each enqueues and returns at once.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

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

struct ClientOptions {
  GptConfig model;
  uint64_t seed = 0;       // weight initialisation
  int max_batch = 16;      // rows per microbatch of forward_backward
  int sample_rows = 64;    // most sequences sampled at once
  bool recompute = false;  // activation recomputation
};

class TrainingClient {
 public:
  static Result<std::unique_ptr<TrainingClient>> create_local(const ClientOptions& opts);
  ~TrainingClient();
  TrainingClient(const TrainingClient&) = delete;
  TrainingClient& operator=(const TrainingClient&) = delete;

  // Loss over the whole batch (means over all its trained tokens); gradients accumulate.
  Future<ForwardBackwardOutput> forward_backward(std::vector<Datum> batch, LossConfig loss);
  // Applies the accumulated gradients (averaged over the forward_backward calls since the last
  // step) and clears them. A barrier: later calls see the new weights.
  Future<OptimStepOutput> optim_step(AdamParams params);
  // num_samples completions per prompt (prefix shared); seeds derive from (seed, prompt, sample).
  Future<std::vector<Sample>> sample(std::vector<std::vector<int>> prompts, int num_samples, SamplingParams params,
                                     uint64_t seed);
  // Weights only (safetensors, docs/formats/safetensors.md); returns the path written.
  Future<std::string> save_weights_for_sampler(std::string path);
  // Weights + optimizer moments + step (three safetensors files PATH, PATH.m, PATH.v with the step
  // in the metadata of PATH.m); load_state restores them bitwise.
  Future<std::string> save_state(std::string path);
  Future<std::string> load_state(std::string path);

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
  double tokens_since_step_ = 0;  // trained tokens accumulated in the gradients

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace mobula::rl
