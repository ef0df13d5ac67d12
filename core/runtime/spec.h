// Job spec: one TOML file describes a job; parsed with toml++ and validated into typed structs.
//
// Contract
//  * load_spec() is local (no MPI) and deterministic: every rank that loads the same file with the
//    same overrides gets the same JobSpec (and the same hash()).
//  * Errors are returned, never thrown, as Status::invalid_spec with exactly one line:
//        FILE:LINE: KEY: message[; what to do]
//    Unknown keys get a "did you mean" suggestion. Overrides (--set k=v) report "--set:N" as
//    FILE:LINE, N being the 1-based position of the override.
//  * Every key has a schema entry (spec_schema()) with its type, default and documentation;
//    docs/spec.md documents every one of them (a unit test keeps the two in step).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/runtime/status.h"

namespace mobula {

enum class ValueType { kInt, kFloat, kBool, kString, kStringList };
using SpecValue = std::variant<int64_t, double, bool, std::string, std::vector<std::string>>;

struct KeyDef {
  std::string path;  // dotted, e.g. "roles.trainer.ranks"
  ValueType type;
  SpecValue default_value;  // ignored when required
  bool required = false;
  int64_t min = INT64_MIN;           // for kInt
  int64_t max = INT64_MAX;           // for kInt
  std::vector<std::string> choices;  // for kString: allowed values (empty = any)
  std::string doc;
};

// Role kinds known to this version, in canonical order. World ranks are assigned to roles in this
// order (trainer ranks first) unless Slurm heterogeneous-job groups decide.
const std::vector<std::string>& known_roles();
// Top-level sections of a spec (including those later versions fill).
const std::vector<std::string>& spec_sections();
// Every key a spec may contain.
const std::vector<KeyDef>& spec_schema();
std::string value_to_string(const SpecValue& v);
std::string type_name(ValueType t);

struct RoleSpec {
  std::string name;
  int ranks = 0;
  int het_group = -1;  // Slurm heterogeneous-job component that hosts this role; -1: any
};

struct TransportSpec {
  std::string weights = "auto";    // trainers -> rollout ranks
  std::string rollouts = "auto";   // rollout ranks -> trainers
  std::string gradients = "auto";  // among trainers
};

// The job's flows, one row each: its transport.* key and the member holding the choice. The one
// table every user of the keys goes through (the parser, core/transport/flows.h, the worker's log).
enum class Flow : int { kWeights = 0, kRollouts = 1, kGradients = 2 };
struct FlowKey {
  Flow flow;
  const char* key;
  const char* name;  // the metrics' flow label
  std::string TransportSpec::*choice;
};
inline constexpr FlowKey kFlowKeys[] = {
    {Flow::kWeights, "transport.weights", "weights", &TransportSpec::weights},
    {Flow::kRollouts, "transport.rollouts", "rollouts", &TransportSpec::rollouts},
    {Flow::kGradients, "transport.gradients", "gradients", &TransportSpec::gradients},
};
inline const FlowKey& flow_key(Flow f) {
  return kFlowKeys[static_cast<int>(f)];
}

struct ModelSpec {
  int layers = 2, heads = 4, d_model = 64, mlp_ratio = 4, context = 16, microbatch = 64;
};

struct RlSpec {
  std::string task = "addition";
  int digits = 2;
  int warm_start_steps = 400, warm_start_batch = 64, warm_start_noise = 45;
  int prompts_per_step = 16, group_size = 8, max_new_tokens = 5, eval_problems = 100, max_staleness = 0;
  double lr = 3e-4, warm_start_lr = 3e-3, clip = 0.2, clip_high = 0.28, temperature = 1.0, kl_coef = 0.0;
  bool advantage_std = true;
};

// Slurm resources of the whole job or of one role ([slurm] / [slurm.ROLE]); ""/0 = unset.
struct SlurmResources {
  std::string partition, account, qos, constraint, gres;
  int nodes = 0, tasks_per_node = 0, gpus_per_node = 0;
  bool operator==(const SlurmResources&) const = default;
  // This role's values where set, the global ones elsewhere.
  SlurmResources inherit(const SlurmResources& global) const;
};

struct SlurmSpec {
  SlurmResources job;
  std::map<std::string, SlurmResources> role;  // every known role, raw (not yet inherited)
  std::string time;
  std::vector<std::string> extra, env;
  bool requeue = true;
  std::string signal = "USR1";
  int keep_on_failure_s = 0;  // slurm.keep_on_failure, parsed
  int signal_grace_s = 120;
  std::string mpi = "pmix";
  int step_grace_s = 15;
  SlurmResources for_role(const std::string& r) const { return role.at(r).inherit(job); }
};

// Relaunch of a failed job, by `mobula run` and by `mobula step` (submit).
struct FaultSpec {
  int max_restarts = 2;
  int restart_delay_s = 5;
  int hang_timeout_s = 600;
  int abort_grace_s = 10;  // a failed rank's wait for the outcome agreement before MPI_Abort
  int max_requeues = 3;
};

struct DataSpec {
  std::string dir;  // resolved: WORKDIR/data when empty
  int64_t images = 2048;
  int per_shard = 256;
  int size = 64;
  std::string encoding = "png";
};

struct LatentSpec {
  std::string mode = "jit";
  int batch = 32;
  int prefetch = 4;
  int base_channels = 16;
  int downsamples = 3;
  int hidden = 512;
  double lr = 1e-3;
  std::string encoder_weights;
};

struct CurateSpec {
  int task_images = 64;
  double threshold = 0.97;
  int per_shard = 256;
  int duplicates = 20;
  std::string backend = "journal", redis = "127.0.0.1:6379", queue;
  double lease_s = 30;
  int max_attempts = 3;
};

struct ServeSpec {
  std::string host = "127.0.0.1", state_dir, base;  // state_dir resolved: WORKDIR/serve when empty
  int port = 8480, max_body_kib = 4096, max_rows = 64, pass_rows = 32, chunk_rows = 8, sample_rows = 64;
  int max_adapters = 8, max_pending = 256, lora_rank = 8, threads = 32;
  double lora_alpha = 16, max_wait_s = 30;
};

struct MetricsSpec {
  int port = 0;  // 0 off, -1 any free port
  std::string address = "127.0.0.1";
  double interval_s = 1.0;
};

struct CheckpointSpec {
  int every = 0;
  int keep = 3;
  bool async = true;
  std::string dir;  // resolved against job.workdir
};

struct ResolvedKey {
  const KeyDef* def;
  SpecValue value;
  std::string origin;  // "default", "FILE:LINE" or "--set:N"
};

class JobSpec {
 public:
  std::string file;  // path as given
  std::string name;
  std::string workdir;  // with {name} substituted
  std::string workload;
  int64_t seed = 0;
  int64_t steps = 1;
  int threads = 1;              // job.threads: BLAS / Kokkos host threads per rank
  int shards = 8;               // job.shards: fixed shards of a step's batch (docs/rl.md, "Determinism")
  std::vector<RoleSpec> roles;  // canonical order; roles with ranks > 0 only
  TransportSpec transport;
  ModelSpec model;
  RlSpec rl;
  SlurmSpec slurm;
  CheckpointSpec checkpoint;
  FaultSpec fault;
  MetricsSpec metrics;
  DataSpec data;
  LatentSpec latent;
  CurateSpec curate;
  ServeSpec serve;

  int total_ranks() const;
  const RoleSpec* role(std::string_view name) const;
  // "FILE:LINE" where a key (or the closest enclosing table) was set; for error messages.
  std::string where(std::string_view key) const;
  // Stable hash of every resolved value (xxh64, hex); goes into logs and checkpoints.
  std::string hash() const { return hash_; }
  const std::vector<ResolvedKey>& keys() const { return keys_; }

 private:
  friend Result<JobSpec> load_spec_from_string(std::string_view, std::string, const std::vector<std::string>&);
  std::vector<ResolvedKey> keys_;
  std::map<std::string, std::string, std::less<>> where_;
  std::string hash_;
};

// Parse, apply overrides ("key=value", value in TOML syntax; plain text for string keys),
// validate. `file` is used in messages.
Result<JobSpec> load_spec(const std::string& file, const std::vector<std::string>& overrides = {});

// Seconds of a duration in Slurm's --time syntax: "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S";
// "" is 0. An error for anything else.
Result<int64_t> parse_slurm_duration(const std::string& t);
Result<JobSpec> load_spec_from_string(std::string_view toml_text, std::string file,
                                      const std::vector<std::string>& overrides = {});

// Levenshtein edit distance; exposed for tests.
size_t edit_distance(std::string_view a, std::string_view b);

}  // namespace mobula
