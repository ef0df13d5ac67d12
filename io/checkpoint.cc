#include "io/checkpoint.h"

#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/config.h"
#include "core/metrics/registry.h"
#include "core/runtime/environment.h"
#include "core/runtime/files.h"
#include "core/runtime/log.h"
#include "core/runtime/mpi.h"
#include "core/runtime/time_format.h"
#include "io/hdf5.h"

namespace mobula::io {

namespace fs = std::filesystem;

namespace {

std::string ckpt_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "ckpt-%08lld.h5", static_cast<long long>(step));
  return buf;
}

std::string hex64(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

uint64_t hash_of(std::span<const float> b) {
  return XXH64(b.data(), b.size_bytes(), 0);
}

// Every rank's status becomes the worst one; returns the local status if it failed, else a
// generic one naming the rank count that failed.
Status vote(const Status& local, MPI_Comm comm, const std::string& what) {
  int ok = local.is_ok() ? 1 : 0, all = 0;
  MOBULA_MPI(MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm));
  if (all) return Status::ok();
  if (!local.is_ok()) return local;
  return Status::io(what + ": failed on another rank");
}

// Rank 0 alone writes the whole file (the replicas are identical): one sequential writer is what
// the file system does best, better than a collective MPI-IO write of shards (docs/perf.md). Called on rank 0 only.
Status write_file(const std::string& tmp, const CheckpointState& s, int replicas) {
  MPI_Comm comm = MPI_COMM_SELF;
  auto f = H5File::create(tmp, comm);
  if (!f) return f.status();
  std::string names;
  for (const auto& [name, buf] : s.buffers) {
    MOBULA_RETURN_IF_ERROR(f->write_slices(name, buf, comm));
    MOBULA_RETURN_IF_ERROR(f->set_attr("xxh64:" + name, hex64(hash_of(buf))));
    names += (names.empty() ? "" : ",") + name;
  }
  const std::string when = utc_now(/*millis=*/false);  // gmtime_r: saves run on a background thread too
  char scalar[40];
  std::snprintf(scalar, sizeof scalar, "%.17g", s.scalar);
  for (const auto& [k, v] :
       std::vector<std::pair<std::string, std::string>>{{"format", "mobula-checkpoint"},
                                                        {"format_version", std::to_string(kCheckpointFormatVersion)},
                                                        {"mobula_version", MOBULA_VERSION},
                                                        {"created", when},
                                                        {"spec_hash", s.spec_hash},
                                                        {"writers", "1"},
                                                        {"replicas", std::to_string(replicas)},
                                                        {"buffers", names},
                                                        {"step", std::to_string(s.step)},
                                                        {"optimizer_steps", std::to_string(s.optimizer_steps)},
                                                        {"attempt", std::to_string(s.attempt)},
                                                        {"scalar", scalar}})
    MOBULA_RETURN_IF_ERROR(f->set_attr(k, v));
  return f->close();
}

Result<int64_t> parse_i64(const std::string& v, const std::string& what) {
  try {
    size_t used = 0;
    const long long x = std::stoll(v, &used);
    if (used == v.size()) return static_cast<int64_t>(x);
  } catch (...) {
  }
  return Status::io("attribute " + what + " = '" + v + "' is not an integer");
}

Result<int64_t> read_fence(const std::string& dir) {
  std::ifstream in(dir + "/fence");
  if (!in) return int64_t{0};  // never fenced
  std::string v;
  std::getline(in, v);
  return parse_i64(v, dir + "/fence");
}

// Every rank reads the whole file on its own (MPI_COMM_SELF): no collective, and any number of
// ranks can load what any number wrote.
Status read_file(const std::string& path, CheckpointState* s) {
  MPI_Comm comm = MPI_COMM_SELF;
  auto f = H5File::open(path, comm);
  if (!f) return f.status();
  auto format = f->get_attr("format");
  if (!format) return format.status();
  if (*format != "mobula-checkpoint") return Status::io("not a mobula checkpoint (format '" + *format + "')");
  auto version = f->get_attr("format_version");
  if (!version) return version.status();
  if (*version != std::to_string(kCheckpointFormatVersion))
    return Status::io("format version " + *version + ", this mobula reads " + std::to_string(kCheckpointFormatVersion));
  for (auto& [name, buf] : s->buffers) {
    auto n = f->dataset_size(name);
    if (!n) return n.status();
    if (*n != buf.size())
      return Status::io(name + " has " + std::to_string(*n) + " elements, the job expects " +
                        std::to_string(buf.size()) + " (different model?)");
    MOBULA_RETURN_IF_ERROR(f->read_slices(name, buf, comm));
    auto want = f->get_attr("xxh64:" + name);
    if (!want) return want.status();
    if (hex64(hash_of(buf)) != *want)
      return Status::io(name + ": checksum mismatch (xxh64 " + hex64(hash_of(buf)) + ", recorded " + *want + ")");
  }
  auto step = f->get_attr("step");
  auto opt = f->get_attr("optimizer_steps");
  auto scalar = f->get_attr("scalar");
  auto hash = f->get_attr("spec_hash");
  if (!step || !opt || !scalar || !hash) return (!step ? step : !opt ? opt : !scalar ? scalar : hash).status();
  auto st = parse_i64(*step, "step");
  auto ot = parse_i64(*opt, "optimizer_steps");
  if (!st) return st.status();
  if (!ot) return ot.status();
  s->step = *st;
  s->optimizer_steps = *ot;
  s->scalar = std::strtod(scalar->c_str(), nullptr);
  s->spec_hash = *hash;
  return f->close();
}

}  // namespace

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.size() == 16 && n.rfind("ckpt-", 0) == 0 && n.substr(13) == ".h5" &&
        n.substr(5, 8).find_first_not_of("0123456789") == std::string::npos)
      out.push_back(n);
  }
  std::sort(out.rbegin(), out.rend());  // fixed-width numbers: lexicographic = numeric
  return out;
}

namespace {

metrics::Histogram& ckpt_seconds(const char* name, const char* help) {
  return metrics::registry().histogram(name, help, metrics::exponential_buckets(1e-3, 2.5, 14));
}

Status save_checkpoint_unmeasured(const std::string& dir, const CheckpointState& state, int keep, MPI_Comm comm);

}  // namespace

Status save_checkpoint(const std::string& dir, const CheckpointState& state, int keep, MPI_Comm comm) {
  const auto t0 = std::chrono::steady_clock::now();
  Status s = save_checkpoint_unmeasured(dir, state, keep, comm);
  auto& r = metrics::registry();
  r.counter("mobula_checkpoint_saves_total", "Checkpoint saves this rank took part in, by result",
            {{"result", s.is_ok() ? "ok" : "failed"}})
      .inc();
  if (s.is_ok()) {
    double bytes = 0;
    for (const auto& [name, buf] : state.buffers) bytes += static_cast<double>(buf.size_bytes());
    r.counter("mobula_checkpoint_bytes_total", "Bytes of state this rank wrote into checkpoints").inc(bytes);
    ckpt_seconds("mobula_checkpoint_write_seconds", "Write, verify and publish of one checkpoint (this rank)")
        .observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return s;
}

namespace {

Status save_checkpoint_unmeasured(const std::string& dir, const CheckpointState& state, int keep, MPI_Comm comm) {
  int rank = 0;
  MOBULA_MPI(MPI_Comm_rank(comm, &rank));
  const std::string name = ckpt_name(state.step);
  const std::string tmp = dir + "/." + name + ".tmp", final_path = dir + "/" + name;
  Status local = Status::ok();
  if (rank == 0) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) local = Status::io("checkpoint dir " + dir + ": " + ec.message());
  }
  MOBULA_RETURN_IF_ERROR(vote(local, comm, "checkpoint dir " + dir));
  int size = 1;
  MOBULA_MPI(MPI_Comm_size(comm, &size));
  Status written = Status::ok();
  if (rank == 0) {
    // Fault injection (docs/testing.md): a write that fails (as with ENOSPC) at this step.
    if (env_long("MOBULA_FAULT_SAVE_ERROR_AT_STEP", -1) == state.step && fault_attempt_matches())
      written =
          Status::io("writing " + tmp + ": No space left on device (injected by MOBULA_FAULT_SAVE_ERROR_AT_STEP)");
    else
      written = write_file(tmp, state, size);
    if (!written.is_ok()) {
      std::error_code ec;
      fs::remove(tmp, ec);
    }
  }
  MOBULA_RETURN_IF_ERROR(vote(written, comm, "writing " + tmp));
  Status published = Status::ok();
  if (rank == 0) {
    // Fault injection: the writer dies with the file written but not published.
    if (env_long("MOBULA_FAULT_KILL_IN_SAVE_AT_STEP", -1) == state.step && fault_attempt_matches()) {
      spdlog::warn("fault injection: SIGKILL while saving {} (written, not published)", tmp);
      spdlog::shutdown();
      std::raise(SIGKILL);
    }
    published = fsync_path(tmp, false);
    if (published.is_ok()) {
      auto fence = read_fence(dir);
      if (!fence) {
        published = fence.status();
      } else if (*fence > state.attempt) {
        published =
            Status::io("not publishing " + final_path + ": written by attempt " + std::to_string(state.attempt) +
                       ", but attempt " + std::to_string(*fence) + " has started on " + dir + " (fenced)");
      }
    }
    if (published.is_ok() && std::rename(tmp.c_str(), final_path.c_str()) != 0)
      published = Status::io("rename " + tmp + " -> " + final_path + ": " + std::strerror(errno));
    if (published.is_ok()) published = fsync_path(dir, true);
    if (published.is_ok()) published = write_file_atomically(dir + "/latest", name + "\n", /*durable=*/true);
    if (published.is_ok()) {
      // Retention: the newest `keep` stay; leftovers of crashed saves go.
      const auto all = list_checkpoints(dir);
      for (size_t i = size_t(std::max(keep, 1)); i < all.size(); ++i) fs::remove(dir + "/" + all[i]);
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(dir, ec)) {
        const std::string n = e.path().filename().string();
        if (n.rfind(".ckpt-", 0) == 0 && n != "." + name + ".tmp") fs::remove(e.path(), ec);
      }
    } else {
      std::error_code ec;
      fs::remove(tmp, ec);
    }
  }
  return vote(published, comm, "publishing " + final_path);
}

}  // namespace

Status fence_checkpoints(const std::string& dir, int64_t attempt) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::io("checkpoint dir " + dir + ": " + ec.message());
  auto cur = read_fence(dir);
  if (!cur) return cur.status();
  if (*cur >= attempt && fs::exists(dir + "/fence")) return Status::ok();
  return write_file_atomically(dir + "/fence", std::to_string(attempt) + "\n", /*durable=*/true);
}

struct AsyncCheckpointer::Staged {
  CheckpointState state;  // buffers: the caller's until copied, then into `copies`
  std::vector<std::vector<float>> copies;
  std::shared_future<void> copied;
  std::future<Status> done;
};

AsyncCheckpointer::AsyncCheckpointer(std::string dir, int keep, Event on_event)
    : dir_(std::move(dir)), keep_(keep), on_event_(std::move(on_event)) {}

AsyncCheckpointer::~AsyncCheckpointer() {
  const Status s = wait();
  if (!s.is_ok()) spdlog::error("checkpoint: {}", s.message());
}

Status AsyncCheckpointer::wait() {
  if (!staged_) return Status::ok();
  Status s = staged_->done.get();
  spare_ = std::move(staged_->copies);
  staged_.reset();
  return s;
}

Status AsyncCheckpointer::stage(const CheckpointState& state, double* stall_s) {
  const auto t0 = std::chrono::steady_clock::now();
  Status previous = wait();  // at most one save in flight
  // The staging buffers persist across saves: only the first save pays for faulting the pages in.
  auto st = std::make_unique<Staged>();
  st->copies = std::move(spare_);
  st->copies.resize(state.buffers.size());
  st->state = state;
  std::promise<void> copied;
  st->copied = copied.get_future().share();
  const double stall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (stall_s) *stall_s = stall;
  Staged* raw = st.get();
  // The background thread copies first (the caller's buffers must not change until then:
  // wait_staged()), then writes and publishes the copy.
  st->done = std::async(std::launch::async, [raw, copied = std::move(copied), dir = dir_, keep = keep_, t0,
                                             on_event = on_event_]() mutable {
    std::vector<std::pair<std::string, std::span<float>>> staged;
    for (size_t i = 0; i < raw->state.buffers.size(); ++i) {
      const auto& [name, buf] = raw->state.buffers[i];
      raw->copies[i].resize(buf.size());
      std::memcpy(raw->copies[i].data(), buf.data(), buf.size_bytes());
      staged.push_back({name, std::span<float>(raw->copies[i])});
    }
    raw->state.buffers = std::move(staged);
    const double t_copy = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    copied.set_value();
    spdlog::info("checkpoint step {} staged in {:.1f} ms", raw->state.step, t_copy * 1e3);
    ckpt_seconds("mobula_checkpoint_stage_seconds", "Request to staged copy, asynchronous saves").observe(t_copy);
    if (on_event) on_event(raw->state.step, "staged", Status::ok(), t_copy);
    Status s = save_checkpoint(dir, raw->state, keep, MPI_COMM_SELF);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s.is_ok()) {
      spdlog::info("checkpoint step {} durable in {:.3f} s", raw->state.step, secs);
      ckpt_seconds("mobula_checkpoint_durable_seconds", "Request to durable (published), asynchronous saves")
          .observe(secs);
    } else {
      spdlog::error("checkpoint step {} failed: {}", raw->state.step, s.message());
    }
    if (on_event) on_event(raw->state.step, s.is_ok() ? "durable" : "failed", s, secs);
    return s;
  });
  staged_ = std::move(st);
  return previous;
}

double AsyncCheckpointer::wait_staged() {
  if (!staged_) return 0;
  const auto t0 = std::chrono::steady_clock::now();
  staged_->copied.wait();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Result<std::optional<std::string>> load_latest_checkpoint(const std::string& dir, CheckpointState* state, MPI_Comm comm,
                                                          std::vector<std::string>* rejected) {
  int rank = 0;
  MOBULA_MPI(MPI_Comm_rank(comm, &rank));
  // Rank 0's listing is everyone's: the candidates must be the same on every rank.
  std::string joined;
  if (rank == 0)
    for (const auto& n : list_checkpoints(dir)) joined += n + "\n";
  int len = static_cast<int>(joined.size());
  MOBULA_MPI(MPI_Bcast(&len, 1, MPI_INT, 0, comm));
  joined.resize(size_t(len));
  MOBULA_MPI(MPI_Bcast(joined.data(), len, MPI_CHAR, 0, comm));
  std::vector<std::string> names;
  std::istringstream in(joined);
  for (std::string n; std::getline(in, n);) names.push_back(n);
  if (names.empty()) return std::optional<std::string>{};
  for (const auto& n : names) {
    const std::string path = dir + "/" + n;
    const Status st = vote(read_file(path, state), comm, path);
    if (st.is_ok()) return std::optional<std::string>{path};
    if (rejected) rejected->push_back(path + ": " + st.message());
  }
  return Status::io(dir + ": " + std::to_string(names.size()) + " checkpoint(s) and none verifies (newest: " +
                    (rejected && !rejected->empty() ? rejected->front() : names.front()) +
                    "); refusing to start from scratch. Move the directory away to start over");
}

}  // namespace mobula::io
