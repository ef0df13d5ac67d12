// workload "curate" (docs/queue.md): a fault-tolerant data-curation pipeline on a reliable task queue.
//
//   coordinator (trainer 0)   makes the synthetic input when data.dir has none, enqueues one task
//                             per curate.task_images images (idempotent: a relaunch enqueues the
//                             same ids), serves the queue (journal backend) and, once every task is
//                             done, reduces: near-duplicate filter, output shards, manifest
//   workers (embed ranks)     lease a task, decode its images and embed them with the VAE encoder
//                             (the latent means, L2-normalised), write the part file
//                             WORKDIR/curate/parts/<task>.part atomically and durably, then ack
//
// Every output is a pure function of the spec: a part depends only on its task's images, the
// filter walks the images in index order (an image is dropped when its cosine similarity to an
// earlier KEPT image reaches curate.threshold), and the output shards carry no times. So the
// curated dataset is byte-identical whatever crashed, retried or ran twice (at-least-once delivery,
// exactly-once effects).
#include <mpi.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/metrics/events.h"
#include "core/metrics/registry.h"
#include "core/queue/journal.h"
#include "core/queue/mpi_queue.h"
#include "core/queue/redis.h"
#include "core/runtime/environment.h"
#include "core/runtime/files.h"
#include "core/runtime/log.h"
#include "core/runtime/mpi.h"
#include "core/runtime/time_format.h"
#include "io/image_shards.h"
#include "io/synthetic_images.h"
#include "rl/encoder/image_latents.h"
#include "rl/roles/workload.h"

namespace mobula::rl {

namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---- tasks and part files ----------------------------------------------------------------------

struct TaskRange {
  uint64_t first = 0, count = 0;
};

std::string task_id(uint64_t k) {
  char b[32];
  std::snprintf(b, sizeof b, "part-%06llu", static_cast<unsigned long long>(k));
  return b;
}

std::vector<queue::TaskSpec> all_tasks(uint64_t images, uint64_t per_task) {
  std::vector<queue::TaskSpec> t;
  for (uint64_t k = 0, first = 0; first < images; ++k, first += per_task)
    t.push_back({task_id(k), std::to_string(first) + " " + std::to_string(std::min(per_task, images - first))});
  return t;
}

Result<TaskRange> parse_range(const queue::Lease& l) {
  TaskRange r;
  std::istringstream in(l.payload);
  if (!(in >> r.first >> r.count) || r.count == 0)
    return Status::invalid_argument("curate: task " + l.task_id + ": payload '" + l.payload + "' is not 'FIRST COUNT'");
  return r;
}

// A part: "MOBULACP" u64 first u64 count u32 D, count * D floats (unit embeddings), u64 xxh64 of
// everything before it.
constexpr char kPartMagic[8] = {'M', 'O', 'B', 'U', 'L', 'A', 'C', 'P'};

std::string encode_part(const TaskRange& r, int D, const std::vector<float>& emb) {
  std::string b(kPartMagic, 8);
  const uint32_t d = uint32_t(D);
  b.append(reinterpret_cast<const char*>(&r.first), 8);
  b.append(reinterpret_cast<const char*>(&r.count), 8);
  b.append(reinterpret_cast<const char*>(&d), 4);
  b.append(reinterpret_cast<const char*>(emb.data()), emb.size() * sizeof(float));
  const uint64_t h = XXH64(b.data(), b.size(), 0);
  b.append(reinterpret_cast<const char*>(&h), 8);
  return b;
}

Status decode_part(const std::string& path, const TaskRange& want, int D, std::vector<float>* emb) {
  const std::string b = slurp(path);
  const size_t body = 28 + size_t(want.count) * size_t(D) * sizeof(float);
  if (b.size() != body + 8 || std::memcmp(b.data(), kPartMagic, 8) != 0)
    return Status::io(path + ": not a curation part of " + std::to_string(want.count) + " x " + std::to_string(D) +
                      " floats (" + std::to_string(b.size()) + " bytes); remove it and requeue its task");
  uint64_t h = 0, first = 0, count = 0;
  uint32_t d = 0;
  std::memcpy(&h, b.data() + body, 8);
  std::memcpy(&first, b.data() + 8, 8);
  std::memcpy(&count, b.data() + 16, 8);
  std::memcpy(&d, b.data() + 24, 4);
  if (XXH64(b.data(), body, 0) != h) return Status::io(path + ": checksum mismatch; remove it and requeue its task");
  if (first != want.first || count != want.count || int(d) != D)
    return Status::io(path + ": holds images " + std::to_string(first) + "+" + std::to_string(count) +
                      ", the task says " + std::to_string(want.first) + "+" + std::to_string(want.count));
  emb->resize(size_t(count) * size_t(D));
  std::memcpy(emb->data(), b.data() + 28, emb->size() * sizeof(float));
  return Status::ok();
}

// ---- the worker ------------------------------------------------------------------------------

// One task: embed its images in batches (renewing the lease between them), write the part, ack.
Status run_task(const WorkloadContext& ctx, ImageLatents& enc, queue::TaskQueue& q, const queue::Lease& l,
                const std::string& parts) {
  auto r = parse_range(l);
  if (!r) return r.status();
  const int D = enc.latent_floats();
  if (const char* poison = std::getenv("MOBULA_FAULT_POISON_TASK"); poison && l.task_id == poison) {
    spdlog::warn("fault injection: task {} is poison: SIGKILL (attempt {})", l.task_id, l.attempt);
    events::emit(ctx.spec.workdir, "fault_injected",
                 {{"kind", events::str("poison task")}, {"task", events::str(l.task_id)}}, ctx.rank);
    spdlog::shutdown();
    std::raise(SIGKILL);
  }
  std::vector<float> emb(size_t(r->count) * size_t(D));
  constexpr uint64_t kBatch = 16;
  std::vector<uint64_t> ids;
  for (uint64_t i = 0; i < r->count; i += kBatch) {
    ids.clear();
    for (uint64_t k = i; k < std::min(r->count, i + kBatch); ++k) ids.push_back(r->first + k);
    MOBULA_RETURN_IF_ERROR(enc.means(ids, emb.data() + i * uint64_t(D)));
    if (ctx.watchdog) ctx.watchdog->beat("curate task", int64_t(r->first + i));
    MOBULA_RETURN_IF_ERROR(q.renew(l));  // heartbeat
  }
  for (uint64_t s = 0; s < r->count; ++s) {  // unit vectors: cosine similarity is a dot product
    float* e = emb.data() + s * uint64_t(D);
    double n2 = 0;
    for (int d = 0; d < D; ++d) n2 += double(e[d]) * e[d];
    const float inv = n2 > 0 ? float(1.0 / std::sqrt(n2)) : 0.f;
    for (int d = 0; d < D; ++d) e[d] *= inv;
  }
  MOBULA_RETURN_IF_ERROR(
      write_file_atomically(parts + "/" + l.task_id + ".part", encode_part(*r, D, emb), /*durable=*/true));
  return q.ack(l);  // only after the part is durable
}

Status worker_loop(const WorkloadContext& ctx, const JobSpec& spec, queue::TaskQueue& q, const std::string& parts) {
  auto enc = ImageLatents::create(spec);
  if (!enc) return enc.status();
  const std::string me =
      ctx.layout.at(ctx.rank).role + "-" + std::to_string(ctx.layout.at(ctx.rank).role_rank) + "@" + host_name();
  // Test switch (docs/testing.md): this rank SIGKILLs itself in the middle of its k-th task.
  const long kill_after = fault_attempt_matches() && env_long("MOBULA_FAULT_KILL_RANK", 0) == ctx.rank
                              ? env_long("MOBULA_FAULT_KILL_AFTER_TASKS", -1)
                              : -1;
  auto& done = metrics::registry().counter("mobula_curate_tasks_total", "Curation tasks this rank completed");
  enc->slow_down(static_cast<int>(env_long("MOBULA_FAULT_EMBED_DELAY_MS", 0)));  // test switch: every worker
  long n = 0;
  for (;;) {
    if (ctx.watchdog) ctx.watchdog->beat("curate: waiting for a task", n);
    if (ctx.metrics) ctx.metrics->tick();
    auto leases = q.lease(me, 1);
    if (!leases) return leases.status();
    if (leases->empty()) {
      if (auto e = q.expire_leases(); !e) return e.status();  // a dead worker's lease comes back
      auto s = q.stats();
      if (!s) return s.status();
      if (s->leased == 0 && (s->pending == 0 || s->draining)) return Status::ok();  // nothing can come back
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    for (const auto& l : *leases) {
      if (n == kill_after) {
        spdlog::warn("fault injection: SIGKILL in the middle of task {}", l.task_id);
        events::emit(spec.workdir, "fault_injected",
                     {{"kind", events::str("SIGKILL")}, {"task", events::str(l.task_id)}}, ctx.rank);
        spdlog::shutdown();
        std::raise(SIGKILL);
      }
      if (Status st = run_task(ctx, *enc, q, l, parts); !st.is_ok()) {
        if (st.code() == Status::Code::kNotFound) {  // our lease expired: someone else has it
          spdlog::warn("{}", st.message());
          continue;
        }
        spdlog::error("curate: task {} failed: {}", l.task_id, st.message());
        MOBULA_RETURN_IF_ERROR(q.fail(l, st.message()));
        continue;
      }
      ++n;
      done.inc();
    }
  }
}

// ---- the coordinator -----------------------------------------------------------------------------

// Progress into metrics.jsonl (the progress line, the report) and the registry, every second.
class Progress {
 public:
  Progress(const JobSpec& spec, int64_t total) : spec_(spec), total_(total), t0_(monotonic_seconds()) {}
  void update(const queue::QueueStats& s, bool force = false) {
    auto& r = metrics::registry();
    for (const auto& [state, v] : {std::pair<const char*, int64_t>{"pending", s.pending},
                                   {"leased", s.leased},
                                   {"done", s.done},
                                   {"dead", s.dead}})
      r.gauge("mobula_queue_tasks", "Tasks in the queue by state", {{"state", state}}).set(double(v));
    if (!force && monotonic_seconds() - last_ < 1.0) return;
    last_ = monotonic_seconds();
    const double rate = double(s.done - done0_) / std::max(1e-9, monotonic_seconds() - t0_);
    r.gauge("mobula_queue_tasks_per_second", "Tasks done per second (this attempt)").set(rate);
    ordered_json line = {{"time", utc_now()},        {"attempt", env_long("MOBULA_STEP_ATTEMPT", 0)},
                         {"step", s.done - 1},       {"tasks_done", s.done},
                         {"tasks_total", total_},    {"tasks_pending", s.pending},
                         {"tasks_leased", s.leased}, {"tasks_dead", s.dead},
                         {"tasks_per_s", rate}};
    if (Status a = events::append_line(spec_.workdir, "metrics.jsonl", events::json_line(line), false); !a.is_ok())
      spdlog::warn("metrics.jsonl: {}", a.message());
  }
  void start_from(int64_t done) { done0_ = done; }

 private:
  const JobSpec& spec_;
  int64_t total_, done0_ = 0;
  double t0_, last_ = 0;
};

struct Reduced {
  uint64_t kept = 0, dropped = 0;
  std::string manifest_xxh64;
};

// The near-duplicate filter over every part, in image order, and the curated dataset written to
// WORKDIR/.curated.tmp, then swapped in for WORKDIR/curated.
Result<Reduced> reduce(const JobSpec& spec, uint64_t images, uint64_t per_task, const std::string& parts, int D) {
  auto ds = io::ImageDataset::open(spec.data.dir);
  if (!ds) return ds.status();
  std::vector<float> all(size_t(images) * size_t(D)), part;
  for (const auto& t : all_tasks(images, per_task)) {
    TaskRange r;
    std::istringstream(t.payload) >> r.first >> r.count;
    MOBULA_RETURN_IF_ERROR(decode_part(parts + "/" + t.id + ".part", r, D, &part));
    std::copy(part.begin(), part.end(), all.begin() + long(r.first) * D);
  }
  std::vector<uint64_t> kept;
  ordered_json dropped = ordered_json::array();
  for (uint64_t i = 0; i < images; ++i) {
    const float* e = all.data() + i * uint64_t(D);
    double best = -2;
    uint64_t best_j = 0;
    for (uint64_t j : kept) {
      const float* f = all.data() + j * uint64_t(D);
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += double(e[d]) * f[d];
      if (dot > best) best = dot, best_j = j;
    }
    if (best >= spec.curate.threshold) {
      dropped.push_back({{"image", i}, {"duplicate_of", best_j}, {"similarity", std::round(best * 1e6) / 1e6}});
    } else {
      kept.push_back(i);
    }
  }
  const fs::path out = fs::path(spec.workdir) / "curated", tmp = fs::path(spec.workdir) / ".curated.tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return Status::io(tmp.string() + ": " + ec.message());
  ordered_json shards = ordered_json::array();
  const uint64_t per = uint64_t(spec.curate.per_shard);
  for (uint64_t s = 0, at = 0; at < kept.size(); ++s, at += per) {
    std::vector<std::vector<uint8_t>> enc;
    std::vector<int32_t> labels;
    for (uint64_t k = at; k < std::min<uint64_t>(kept.size(), at + per); ++k) {
      auto bytes = ds->read(kept[k]);
      if (!bytes) return bytes.status();
      enc.push_back(std::move(bytes).value());
      labels.push_back(ds->label(kept[k]));
    }
    const std::string name = io::shard_file_name(s);
    MOBULA_RETURN_IF_ERROR(io::write_shard((tmp / name).string(), at, enc, labels, spec.data.encoding,
                                           "mobula curate of " + spec.data.dir));
    const std::string bytes = slurp(tmp / name);
    shards.push_back({{"file", name},
                      {"first_index", at},
                      {"count", enc.size()},
                      {"xxh64", fmt::format("{:016x}", XXH64(bytes.data(), bytes.size(), 0))}});
  }
  ordered_json source = ordered_json::array();
  for (uint64_t k : kept) source.push_back(k);
  const ordered_json m = {{"format", "mobula-curated-dataset"},
                          {"version", 1},
                          {"input", spec.data.dir},
                          {"input_images", images},
                          {"threshold", spec.curate.threshold},
                          {"embedding", "VAE encoder latent means, L2-normalised (" + std::to_string(D) + " floats)"},
                          {"kept", kept.size()},
                          {"dropped_count", dropped.size()},
                          {"shards", shards},
                          {"source_index", source},
                          {"dropped", dropped}};
  const std::string text = m.dump(2) + "\n";
  MOBULA_RETURN_IF_ERROR(write_file_atomically(tmp / "manifest.json", text, /*durable=*/true));
  MOBULA_RETURN_IF_ERROR(fsync_path(tmp, /*directory=*/true));
  const fs::path old = fs::path(spec.workdir) / ".curated.old";
  fs::remove_all(old, ec);
  if (fs::exists(out)) fs::rename(out, old, ec);
  if (ec) return Status::io(out.string() + ": " + ec.message());
  fs::rename(tmp, out, ec);
  if (ec) return Status::io(out.string() + ": " + ec.message());
  MOBULA_RETURN_IF_ERROR(fsync_path(spec.workdir, /*directory=*/true));
  fs::remove_all(old, ec);
  Reduced red;
  red.kept = kept.size();
  red.dropped = dropped.size();
  red.manifest_xxh64 = fmt::format("{:016x}", XXH64(text.data(), text.size(), 0));
  return red;
}

// The coordinator's wait for the workers: it polls the queue it owns (no MPI call spins).
Status wait_until_settled(const WorkloadContext& ctx, queue::TaskQueue& q, Progress& progress) {
  // Test switch (docs/testing.md): the coordinator SIGKILLs itself once k tasks are done.
  const long kill_after = fault_attempt_matches() && env_long("MOBULA_FAULT_KILL_RANK", 0) == ctx.rank
                              ? env_long("MOBULA_FAULT_KILL_AFTER_TASKS", -1)
                              : -1;
  for (int64_t polls = 0;; ++polls) {
    if (ctx.watchdog) ctx.watchdog->beat("curate: serving the queue", polls);
    if (ctx.metrics) ctx.metrics->tick();
    if (polls % 50 == 0)  // every second: a dead worker's lease comes back (Redis; the journal's server does it too)
      if (auto e = q.expire_leases(); !e) return e.status();
    auto s = q.stats();
    if (!s) return s.status();
    progress.update(*s);
    if (kill_after >= 0 && s->done >= kill_after) {
      spdlog::warn("fault injection: the coordinator SIGKILLs itself after {} tasks", s->done);
      events::emit(ctx.spec.workdir, "fault_injected",
                   {{"kind", events::str("SIGKILL")}, {"tasks", events::num(s->done)}}, ctx.rank);
      spdlog::shutdown();
      std::raise(SIGKILL);
    }
    if (s->leased == 0 && (s->pending == 0 || s->draining)) {
      progress.update(*s, /*force=*/true);
      return Status::ok();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

Status dead_tasks_error(const JobSpec& spec, const std::vector<queue::DeadTask>& dead) {
  std::string list;
  for (size_t i = 0; i < dead.size() && i < 3; ++i)
    list +=
        (i ? "; " : "") + dead[i].id + " (" + std::to_string(dead[i].attempts) + " attempts: " + dead[i].error + ")";
  return Status::invalid_argument("curate: " + std::to_string(dead.size()) + " task(s) are dead (poison): " + list +
                                  (dead.size() > 3 ? "; ..." : "") + ". See `mobula queue status " + spec.workdir +
                                  "`; fix the cause, then `mobula queue requeue-dead " + spec.workdir +
                                  "` and run the job again");
}

// After the queue settled, on the coordinator: dead tasks or a drain stop the job (exit 2); else the
// reduce, and summary.json.
Status finish(const JobSpec& spec, queue::TaskQueue& journal, uint64_t images, double t_tasks) {
  const uint64_t per_task = uint64_t(spec.curate.task_images);
  const std::string parts = spec.workdir + "/curate/parts";
  auto dead = journal.dead();

  if (!dead) return dead.status();
  auto stats = journal.stats();
  if (!stats) return stats.status();
  if (!dead->empty()) return dead_tasks_error(spec, *dead);
  if (stats->draining && stats->pending > 0)
    return Status::invalid_argument("curate: the queue was drained with " + std::to_string(stats->pending) +
                                    " task(s) pending; `mobula queue resume " + spec.workdir +
                                    "` and run the job again to finish them");
  auto cfg = ImageLatents::encoder_config(spec);  // the embedding width (no encoder built)
  if (!cfg) return cfg.status();
  const int D = static_cast<int>(cfg->latent_floats());
  const double tr0 = monotonic_seconds();
  auto red = reduce(spec, images, per_task, parts, D);
  if (!red) return red.status();
  spdlog::info(
      "curate: {} images -> {} kept, {} near-duplicates dropped (threshold {}); {} tasks in {:.2f} s, "
      "reduce {:.2f} s; manifest xxh64 {}",
      images, red->kept, red->dropped, spec.curate.threshold, stats->done, t_tasks, monotonic_seconds() - tr0,
      red->manifest_xxh64);
  const ordered_json summary = {{"job", spec.name},
                                {"images", images},
                                {"tasks", stats->done},
                                {"kept", red->kept},
                                {"dropped", red->dropped},
                                {"threshold", spec.curate.threshold},
                                {"tasks_s", t_tasks},
                                {"tasks_per_s", double(stats->done) / std::max(1e-9, t_tasks)},
                                {"manifest_xxh64", red->manifest_xxh64}};
  return write_file_atomically(spec.workdir + "/summary.json", summary.dump(2) + "\n");
}

// Every rank ends with the coordinator's verdict, with its status code, so that a spec or data
// problem found there is exit 2 everywhere (never relaunched) and a failure a failure.
Status coordinators_verdict(const WorkloadContext& ctx, const Status& mine) {
  int code = static_cast<int>(mine.code());
  MOBULA_MPI(MPI_Bcast(&code, 1, MPI_INT, 0, ctx.world));
  if (ctx.rank == 0 || code == 0) return ctx.rank == 0 ? mine : Status::ok();
  const std::string msg = "curate: the coordinator (rank 0) stopped the job (see its error)";
  switch (static_cast<Status::Code>(code)) {
    case Status::Code::kInvalidSpec:
      return Status::invalid_spec(msg);
    case Status::Code::kInvalidArgument:
      return Status::invalid_argument(msg);
    default:
      return Status::external(msg);
  }
}

// The queue every rank uses: the journal on the coordinator (served to the others over MPI by
// *server), or a Redis connection on every rank. Collective over the world.
struct Queues {
  std::unique_ptr<queue::JournalQueue> journal;
  std::unique_ptr<queue::QueueServer> server;
  std::unique_ptr<queue::TaskQueue> client;  // MpiQueueClient or RedisQueue
  queue::TaskQueue& mine() { return journal ? static_cast<queue::TaskQueue&>(*journal) : *client; }
};

// Opens the queue (the coordinator: creates and enqueues), then serves or connects.
Status open_queues(const WorkloadContext& ctx, uint64_t* images, Queues* qs) {
  const JobSpec& spec = ctx.spec;
  const bool coordinator = ctx.rank == 0, redis = spec.curate.backend == "redis";
  Status setup = Status::ok();
  if (redis) {
    queue::RedisOptions o;
    o.lease_s = spec.curate.lease_s;
    o.max_attempts = spec.curate.max_attempts;
    auto r = queue::RedisQueue::connect(spec.curate.redis, spec.curate.queue, o);
    if (!r) setup = r.status();
    if (r) qs->client = std::move(r).value();
  }
  if (coordinator && setup.is_ok()) {
    auto ds = io::ImageDataset::open(spec.data.dir);
    if (!ds) setup = ds.status();
    if (setup.is_ok()) *images = ds->size();
    std::error_code ec;
    fs::create_directories(spec.workdir + "/curate/parts", ec);
    if (setup.is_ok() && !redis) {
      queue::JournalOptions o;
      o.lease_s = spec.curate.lease_s;
      o.max_attempts = spec.curate.max_attempts;
      auto j = queue::JournalQueue::open(spec.workdir + "/queue", o);
      if (!j) setup = j.status();
      if (j) qs->journal = std::move(j).value();
    }
    if (setup.is_ok()) {
      auto added = qs->mine().enqueue(all_tasks(*images, uint64_t(spec.curate.task_images)));
      if (!added) setup = added.status();
      if (added && *added > 0)
        spdlog::info("curate: enqueued {} task(s) of {} images", *added, spec.curate.task_images);
    }
  }
  // Everybody learns whether the coordinator is ready (or gives up with its error).
  MOBULA_RETURN_IF_ERROR(coordinators_verdict(ctx, setup));
  if (redis) return Status::ok();
  if (coordinator) {
    queue::ServerOptions so;
    so.drain_file = spec.workdir + "/queue/drain";
    so.expire_every_s = std::min(1.0, spec.curate.lease_s / 4);
    auto s = queue::QueueServer::start(ctx.world, *qs->journal, so);
    if (!s) return s.status();
    qs->server = std::move(s).value();
    return Status::ok();
  }
  auto c = queue::MpiQueueClient::connect(ctx.world, 0);
  if (!c) return c.status();
  qs->client = std::move(c).value();
  return Status::ok();
}

}  // namespace

Status run_curate(const WorkloadContext& ctx) {
  const JobSpec& spec = ctx.spec;
  const bool coordinator = ctx.rank == 0, worker = ctx.layout.at(ctx.rank).role == "embed";
  MOBULA_RETURN_IF_ERROR(ensure_synthetic_dataset(ctx, spec.curate.duplicates));
  uint64_t images = 0;
  Queues qs;
  MOBULA_RETURN_IF_ERROR(open_queues(ctx, &images, &qs));
  const double t0 = monotonic_seconds();
  Status st = Status::ok();
  if (worker) st = worker_loop(ctx, spec, qs.mine(), spec.workdir + "/curate/parts");
  if (coordinator) {
    const uint64_t per_task = uint64_t(spec.curate.task_images);
    Progress progress(spec, int64_t((images + per_task - 1) / per_task));
    if (auto s0 = qs.mine().stats(); s0) progress.start_from(s0->done);
    st = wait_until_settled(ctx, qs.mine(), progress);
  }
  // Every worker is done (its last request answered) once all ranks are here.
  int mine = st.is_ok() ? 0 : 1, any = 0;
  MOBULA_MPI(MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, ctx.world));
  if (qs.server) MOBULA_RETURN_IF_ERROR(qs.server->stop());
  qs.server.reset();
  MOBULA_RETURN_IF_ERROR(st);
  if (any) return Status::external("curate: a worker failed (see its log)");
  const Status result = coordinator ? finish(spec, qs.mine(), images, monotonic_seconds() - t0) : Status::ok();
  return coordinators_verdict(ctx, result);
}

}  // namespace mobula::rl
