// The scaling study's numbers (docs/scaling.md): the rows of points.csv, their medians and
// efficiencies, the alpha-beta communication model fitted on bench_transport / bench_checkpoint
// CSV lines, the step-time model of this machine's points, and the projection to large clusters.
// Pure computation over files: no MPI, no processes.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::scaling {

// ---------------------------------------------------------------------------------------------
// A small CSV table: a header line and rows of comma-separated fields (no quoting: mobula's own
// files never put a comma in a field).
struct CsvTable {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  int column(const std::string& name) const;  // -1 when absent
};
// Fails with "FILE:LINE: ..." on a row whose field count differs from the header's.
Result<CsvTable> read_csv(const std::string& path);

// ---------------------------------------------------------------------------------------------
// One run of a study point: a row of points.csv (docs/scaling.md lists the columns).
struct PointRow {
  std::string point;  // the sweep values, "trainers=2;rollouts=1"
  int repeat = 0;
  std::string mode;  // strong | weak
  std::string workload;
  int trainers = 0, rollouts = 0, embed = 0, nodes = 0, ranks = 0;
  int cores = 0;      // CPU cores the run's host offered (sched_getaffinity)
  double batch = 0;   // the workload's batch per step (GRPO: prompts; latent-pretrain: samples)
  double steps = 0;   // steps timed
  int exit_code = 0;  // of `mobula run` / the Slurm job; rows with exit_code != 0 are not measured points
  double wall_s = 0, step_s = 0, steps_per_s = 0, tokens_per_s = 0, samples_per_s = 0;
  double sample_s = 0, reward_s = 0, transfer_s = 0, train_s = 0, sync_s = 0, ckpt_s = 0, stall_s = 0, other_s = 0;
  double param_bytes = 0;  // the model's parameters (fp32)
  int ckpt_every = 0;      // checkpoint.every of the run
  std::string params_fnv1a;
};

// The columns of points.csv, in order, and one row as a line (no newline).
const std::vector<std::string>& point_columns();
std::string point_line(const PointRow& r);
Result<std::vector<PointRow>> read_points(const std::string& path);

// The measured points: medians over the successful repeats of each point, in the order the points
// first appear; speed-up and efficiency are against the first point (the smallest rank count).
struct PointSummary {
  PointRow median;  // every numeric column is the median over the repeats
  int repeats = 0;
  double throughput = 0;  // items per second: tokens/s (GRPO) or samples/s (latent-pretrain)
  double speedup = 0;     // throughput / the base point's
  double ideal = 0;       // ranks / the base point's ranks
  double efficiency = 0;  // speedup / ideal
};
std::vector<PointSummary> summarize(const std::vector<PointRow>& rows);

// ---------------------------------------------------------------------------------------------
// Communication: t(bytes) = alpha + beta * bytes per (backend, op, ranks), least squares on the
// relative error (every size weighs the same) over the bench's sizes.
struct CommSample {
  std::string bench, backend, op;
  int ranks = 0;
  double bytes = 0, seconds = 0;
};
struct CommFit {
  std::string backend, op;
  int ranks = 0;
  double alpha = 0, beta = 0;  // seconds, seconds per byte
  int samples = 0;
  double max_rel_err = 0;  // of the fit over its own samples
  double at(double bytes) const { return alpha + beta * bytes; }
};
Result<std::vector<CommSample>> read_comm_samples(const std::string& path);
std::vector<CommFit> fit_comm(const std::vector<CommSample>& samples);
// The fit for (backend, op, ranks), or nullptr.
const CommFit* find_fit(const std::vector<CommFit>& fits, const std::string& backend, const std::string& op, int ranks);

// ---------------------------------------------------------------------------------------------
// The step-time model of this machine's GRPO points (docs/scaling.md, "The model of this machine").
// Calibrated on the base point (the first, smallest): its phases per unit of work. Another point
// is predicted from its role counts and batch: a role's compute phase shrinks with its rank count
// and grows with the time-sharing of the cores, max(1, (busy + w * waiting) / cores), where `busy`
// are that role's ranks, `waiting` the other role's (blocked for the phase, but their server
// threads poll) and w the share of a core a waiting rank takes: the model's one free parameter,
// fitted on the points. The gradient sum, weight sync and checkpoint come from the fitted
// communication model. Each point is also predicted with w fitted on the other points only
// (leave-one-out): that error is the model's honest error.
struct PhaseTimes {
  double sample = 0, reward = 0, transfer = 0, train = 0, grad = 0, sync = 0, ckpt = 0, other = 0;
  double total() const { return sample + reward + transfer + train + grad + sync + ckpt + other; }
};
struct Prediction {
  PointSummary measured;
  PhaseTimes predicted;  // with w fitted on every point
  double error = 0;      // predicted step / measured step - 1
  double loo_error = 0;  // the same with w fitted without this point (0 for the base point)
};
struct MachineModel {
  int cores = 0;
  double waiting_share = 0;  // w
  std::vector<Prediction> predictions;
};
struct MachineModelOptions {
  std::string backend = "mpi";  // whose fits (transport.gradients / weights)
};
Result<MachineModel> fit_machine_model(const std::vector<PointSummary>& points, const std::vector<CommFit>& fits,
                                       const MachineModelOptions& opt = {});

// ---------------------------------------------------------------------------------------------
// Projection of a GRPO step to large clusters (docs/scaling.md, "Projection"): every input stated.
struct ClusterAssumptions {
  double gpu_tflops = 989;        // dense bf16 peak per GPU (H100 SXM)
  double mfu = 0.40;              // of that peak in training
  double hbm_gbs = 3350;          // per GPU; decoding reads the weights once per token step
  double decode_batch = 128;      // sequences decoded together per model replica
  double link_gbs = 25;           // per GPU between nodes (200 Gb/s IB per GPU)
  double alpha_us = 5;            // per message between nodes
  double bucket_mib = 256;        // weight-sync bucket
  double tokens_per_gpu = 16384;  // trained tokens per trainer GPU per step (weak scaling)
  double rollout_fraction = 0.5;  // of the GPUs that sample
  double gpu_mem_gib = 80;        // training state must fit in 60 % of it per model-parallel group
  int gpus_per_node = 8;
  double ckpt_node_gbs = 2;  // checkpoint write bandwidth per node
  double fs_gbs = 200;       // the file system's aggregate write bandwidth
  int ckpt_every = 50;       // steps per checkpoint (synchronous save amortised over them)
};
struct ModelSize {
  std::string name;  // "8B"
  double params = 0;
};
// "1B,8B,70B" -> sizes; a number with K, M, B or T suffix.
Result<std::vector<ModelSize>> parse_model_sizes(const std::string& list);

struct ProjectionRow {
  std::string model;
  int gpus = 0, trainer_gpus = 0, rollout_gpus = 0, model_parallel = 0, data_parallel = 0;
  double t_sample = 0, t_train = 0;
  double t_grad_tree = 0;    // sum_shards as built: a tree reduce + broadcast of the whole buffer
  double t_grad_ring = 0;    // ring all-reduce (what NCCL does; not bitwise-stable across sizes)
  double t_grad_sliced = 0;  // the fixed tree per slice (reduce-scatter + all-gather shape): bitwise-stable
  double t_sync = 0, t_ckpt = 0;
  double step_tree = 0, step_sliced = 0;              // on-policy step: sample + train + grad + sync + ckpt
  double efficiency_tree = 0, efficiency_sliced = 0;  // compute / step
};
std::vector<ProjectionRow> project(const std::vector<ModelSize>& sizes, const std::vector<int>& gpus,
                                   const ClusterAssumptions& a);

// Weight-sync (refit) time of `params` (bf16) from `sources` trainer GPUs to `replicas` rollout
// replicas of `mp` GPUs each (each GPU receives its 1/mp shard), as the projection counts it.
double refit_seconds(double params, int sources, int replicas, int mp, const ClusterAssumptions& a);

}  // namespace mobula::scaling
