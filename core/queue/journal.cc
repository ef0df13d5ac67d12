#include "core/queue/journal.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/queue/codec.h"
#include "core/runtime/files.h"
#include "core/runtime/time_format.h"

namespace mobula::queue {

namespace fs = std::filesystem;

bool valid_task_id(const std::string& id) {
  if (id.empty() || id.size() > 200) return false;
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == ':' || c == '/' || c == '-'))
      return false;
  return true;
}

namespace {

constexpr char kMagic[8] = {'M', 'O', 'B', 'U', 'L', 'A', 'Q', 'J'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeader = sizeof(kMagic) + sizeof(uint32_t);
constexpr size_t kRecordHead = 4 + 8 + 1;  // length, checksum, type
constexpr uint32_t kMaxBody = 64u << 20;

// Record types (docs/formats/queue-journal.md).
enum : uint8_t {
  kEnqueue = 1,
  kLease = 2,
  kAck = 3,
  kFail = 4,
  kExpire = 5,
  kRevive = 6,
  kDrain = 7,
  kSnapshot = 8,
  kResume = 9
};

// Not journaled: every replay derives it again from the lease record without an end.
const char* const kLostOnRestart = "lease lost: the queue's owner restarted (the worker or the job died)";

uint64_t checksum(uint8_t type, const std::string& body) {
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, 0);
  XXH64_update(st, &type, 1);
  XXH64_update(st, body.data(), body.size());
  const uint64_t h = XXH64_digest(st);
  XXH64_freeState(st);
  return h;
}

std::string encode_record(uint8_t type, const std::string& body) {
  std::string r;
  const uint32_t n = static_cast<uint32_t>(body.size());
  const uint64_t h = checksum(type, body);
  r.append(reinterpret_cast<const char*>(&n), 4);
  r.append(reinterpret_cast<const char*>(&h), 8);
  r.push_back(static_cast<char>(type));
  r += body;
  return r;
}

std::string header_bytes() {
  std::string h(kMagic, sizeof kMagic);
  h.append(reinterpret_cast<const char*>(&kVersion), sizeof kVersion);
  return h;
}

Status write_all(int fd, const std::string& bytes, const std::string& path) {
  size_t at = 0;
  while (at < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + at, bytes.size() - at);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::io(path + ": write: " + std::strerror(errno));
    at += static_cast<size_t>(n);
  }
  return Status::ok();
}

}  // namespace

JournalOptions owner_options(const std::string& dir) {
  JournalOptions o;
  std::ifstream in(dir + "/queue.json");
  std::stringstream ss;
  ss << in.rdbuf();
  const auto j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_object()) {
    o.lease_s = j.value("lease_s", o.lease_s);
    o.max_attempts = j.value("max_attempts", o.max_attempts);
    o.flush_s = j.value("flush_s", o.flush_s);
  }
  return o;
}

JournalQueue::JournalQueue(std::string dir, const JournalOptions& o)
    : dir_(std::move(dir)), path_(dir_ + "/queue.journal"), o_(o), clock_(monotonic_seconds) {}

Result<std::unique_ptr<JournalQueue>> JournalQueue::open(const std::string& dir, const JournalOptions& o) {
  if (o.max_attempts < 1 || !(o.lease_s > 0) || !(o.flush_s > 0))
    return Status::invalid_argument("queue: max_attempts >= 1, lease_s > 0 and flush_s > 0 are required");
  std::error_code ec;
  if (!o.read_only) fs::create_directories(dir, ec);
  if (ec) return Status::io(dir + ": cannot create the queue directory: " + ec.message());
  std::unique_ptr<JournalQueue> q(new JournalQueue(dir, o));
  const bool fresh = !fs::exists(q->path_, ec);
  if (o.read_only && fresh) return Status::not_found(q->path_ + ": no queue journal here");
  q->fd_ = ::open(q->path_.c_str(), o.read_only ? O_RDONLY | O_CLOEXEC : O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (q->fd_ < 0) return Status::io(q->path_ + ": open: " + std::strerror(errno));
  if (!o.read_only && ::flock(q->fd_, LOCK_EX | LOCK_NB) != 0)
    return Status::invalid_argument(q->path_ +
                                    ": the queue is owned by another process (a running job?); stop it, "
                                    "or use `mobula queue status` to read it");
  if (fresh || fs::file_size(q->path_, ec) == 0) {
    if (o.read_only) return Status::not_found(q->path_ + ": empty queue journal");
    MOBULA_RETURN_IF_ERROR(write_all(q->fd_, header_bytes(), q->path_));
    if (::fdatasync(q->fd_) != 0) return Status::io(q->path_ + ": fdatasync: " + std::strerror(errno));
    MOBULA_RETURN_IF_ERROR(fsync_path(dir, /*directory=*/true));
  }
  MOBULA_RETURN_IF_ERROR(q->replay());
  if (!o.read_only) {
    const nlohmann::ordered_json j = {{"lease_s", o.lease_s}, {"max_attempts", o.max_attempts}, {"flush_s", o.flush_s}};
    MOBULA_RETURN_IF_ERROR(write_file_atomically(dir + "/queue.json", j.dump(2) + "\n", /*durable=*/true));
  }
  if (!o.read_only) q->flusher_ = std::thread([p = q.get()] { p->flusher(); });
  return q;
}

JournalQueue::~JournalQueue() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (flusher_.joinable()) flusher_.join();
  if (!o_.read_only) {
    std::lock_guard<std::mutex> lk(mu_);
    if (Status st = flush_locked(); !st.is_ok()) spdlog::error("queue: {}", st.message());
  }
  if (fd_ >= 0) ::close(fd_);
}

// ---- replay ---------------------------------------------------------------------------------------

Status JournalQueue::replay() {
  std::ifstream in(path_, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string data = ss.str();
  if (data.size() < kHeader || std::memcmp(data.data(), kMagic, sizeof kMagic) != 0)
    return Status::invalid_argument(path_ + ": not a mobula queue journal (no MOBULAQJ header); move it aside");
  uint32_t version = 0;
  std::memcpy(&version, data.data() + sizeof kMagic, sizeof version);
  if (version != kVersion)
    return Status::invalid_argument(path_ + ": journal format version " + std::to_string(version) +
                                    ", this mobula reads " + std::to_string(kVersion));
  size_t at = kHeader;
  int64_t index = 0;
  while (at < data.size()) {
    const size_t left = data.size() - at;
    uint32_t n = 0;
    if (left >= 4) std::memcpy(&n, data.data() + at, 4);
    if (left < kRecordHead || (n <= kMaxBody && left < kRecordHead + n)) {
      // A torn tail: the last append of a process that died; it was never made durable.
      torn_ = "record " + std::to_string(index) + " at byte " + std::to_string(at) + " (" + std::to_string(left) +
              " of " + (left >= 4 ? std::to_string(kRecordHead + n) : std::string("?")) + " bytes)";
      spdlog::warn("{}: dropping a torn last {}: a crash while appending (it was never durable)", path_, torn_);
      break;
    }
    const std::string where = path_ + ": record " + std::to_string(index) + " at byte " + std::to_string(at);
    if (n > kMaxBody)
      return Status::invalid_argument(where + ": length " + std::to_string(n) +
                                      " is impossible; the journal is corrupt from here: move it aside (the "
                                      "outputs already written stay valid) and re-enqueue");
    uint64_t h = 0;
    std::memcpy(&h, data.data() + at + 4, 8);
    const uint8_t type = static_cast<uint8_t>(data[at + 12]);
    const std::string body = data.substr(at + kRecordHead, n);
    if (checksum(type, body) != h)
      return Status::invalid_argument(where +
                                      ": checksum mismatch; the journal is corrupt from here: move it "
                                      "aside (the outputs already written stay valid) and re-enqueue");
    MOBULA_RETURN_IF_ERROR(apply(type, body, index, static_cast<int64_t>(at)));
    at += kRecordHead + n;
    ++index;
  }
  replayed_ = index;
  file_bytes_ = static_cast<int64_t>(at);
  if (!torn_.empty() && !o_.read_only) {  // cut the torn bytes so that new records follow good ones
    if (::ftruncate(fd_, static_cast<off_t>(at)) != 0)
      return Status::io(path_ + ": ftruncate: " + std::strerror(errno));
  }
  if (!o_.read_only && ::lseek(fd_, static_cast<off_t>(at), SEEK_SET) < 0)
    return Status::io(path_ + ": lseek: " + std::strerror(errno));
  // Leases do not survive their process: back to pending, the attempt counted.
  std::vector<std::string> was_leased(leased_.begin(), leased_.end());
  std::sort(was_leased.begin(), was_leased.end());
  for (const auto& id : was_leased) back_to_pending(id, tasks_[id], kLostOnRestart);
  dedup_pending();
  return Status::ok();
}

Status JournalQueue::apply(uint8_t type, const std::string& body, int64_t index, int64_t offset) {
  Parse p(body);
  const std::string where = path_ + ": record " + std::to_string(index) + " at byte " + std::to_string(offset);
  auto bad = [&] {
    return Status::invalid_argument(where + ": malformed body of a type " + std::to_string(type) +
                                    " record; the journal is corrupt from here: move it aside");
  };
  std::string id;
  if (type == kDrain || type == kResume) {
    draining_ = type == kDrain;
    return p.done() ? Status::ok() : bad();
  }
  if (!p.str(&id)) return bad();
  auto it = tasks_.find(id);
  auto need = [&]() -> Task* { return it == tasks_.end() ? nullptr : &it->second; };
  switch (type) {
    case kEnqueue: {
      std::string payload;
      if (!p.str(&payload) || !p.done()) return bad();
      if (it != tasks_.end()) return Status::ok();  // re-enqueued: idempotent
      Task t;
      t.payload = std::move(payload);
      tasks_.emplace(id, std::move(t));
      pending_.push_back(id);
      ++counts_[0];
      return Status::ok();
    }
    case kSnapshot: {
      Task t;
      uint8_t state = 0;
      uint32_t attempts = 0;
      if (!p.str(&t.payload) || !p.u8(&state) || !p.u32(&attempts) || !p.u64(&t.token) || !p.str(&t.error) ||
          !p.done() || state > 3)
        return bad();
      next_token_ = std::max(next_token_, t.token + 1);
      t.state = static_cast<State>(state);
      t.attempts = static_cast<int>(attempts);
      if (it != tasks_.end()) return bad();
      if (t.state == State::kPending) pending_.push_back(id);
      if (t.state == State::kLeased) leased_.insert(id);
      ++counts_[state];
      tasks_.emplace(id, std::move(t));
      return Status::ok();
    }
    case kLease: {
      uint64_t token = 0;
      std::string worker;
      Task* t = need();
      if (!p.u64(&token) || !p.str(&worker) || !p.done() || !t) return bad();
      // Leased again after a restart of the owner: the earlier lease was lost then.
      if (t->state == State::kLeased) back_to_pending(id, *t, kLostOnRestart);
      if (t->state != State::kPending) return bad();
      // The owner leased the first pending task: take it off the front as lease() did (entries
      // of tasks no longer pending are skipped there too).
      while (!pending_.empty() && pending_.front() != id) {
        auto f = tasks_.find(pending_.front());
        if (f != tasks_.end() && f->second.state == State::kPending) break;
        pending_.pop_front();
      }
      if (!pending_.empty() && pending_.front() == id) pending_.pop_front();
      --counts_[0], ++counts_[1];
      t->state = State::kLeased;
      t->token = token;
      t->worker = std::move(worker);
      ++t->attempts;
      leased_.insert(id);
      next_token_ = std::max(next_token_, token + 1);
      return Status::ok();
    }
    case kAck:
    case kFail:
    case kExpire: {
      uint64_t token = 0;
      std::string error;
      Task* t = need();
      if (!p.u64(&token) || (type != kAck && !p.str(&error)) || !p.done() || !t || t->state != State::kLeased ||
          t->token != token)
        return bad();
      leased_.erase(id);
      if (type == kAck) {
        --counts_[1], ++counts_[2];
        t->state = State::kDone;
        t->payload.clear();
        return Status::ok();
      }
      back_to_pending(id, *t, error);
      return Status::ok();
    }
    case kRevive: {
      Task* t = need();
      if (!p.done() || !t) return bad();
      // Dead after a restart of the owner (a lease lost then, at the poison limit): settle it first.
      if (t->state == State::kLeased) back_to_pending(id, *t, kLostOnRestart);
      if (t->state == State::kPending) {  // the limit was not reached: the attempts restart all the same
        t->attempts = 0;
        return Status::ok();
      }
      if (t->state != State::kDead) return bad();
      --counts_[3], ++counts_[0];
      t->state = State::kPending;
      t->attempts = 0;
      t->error.clear();
      pending_.push_back(id);
      return Status::ok();
    }
    default:
      return Status::invalid_argument(where + ": unknown record type " + std::to_string(type) +
                                      "; the journal is corrupt from here (or written by a newer mobula)");
  }
}

// A leased task's lease ended without an ack: pending again, or dead at max_attempts. Journals
// nothing itself (the caller wrote the FAIL/EXPIRE record; at replay the lease record counted).
void JournalQueue::back_to_pending(const std::string& id, Task& t, const std::string& error) {
  leased_.erase(id);
  --counts_[int(t.state)];
  t.error = error;
  t.worker.clear();
  if (t.attempts >= o_.max_attempts) {
    t.state = State::kDead;
    ++counts_[3];
    return;
  }
  t.state = State::kPending;
  ++counts_[0];
  pending_.push_back(id);
}

// ---- writing --------------------------------------------------------------------------------------

void JournalQueue::append(uint8_t type, const std::string& body) {
  buffer_ += encode_record(type, body);
}

Status JournalQueue::write_out() {
  if (!write_error_.is_ok()) return write_error_;
  if (buffer_.empty()) return Status::ok();
  Status st = write_all(fd_, buffer_, path_);
  if (!st.is_ok()) return write_error_ = st;
  file_bytes_ += static_cast<int64_t>(buffer_.size());
  buffer_.clear();
  dirty_ = true;
  return Status::ok();
}

Status JournalQueue::flush_locked() {
  MOBULA_RETURN_IF_ERROR(write_out());
  if (!dirty_) return Status::ok();
  if (::fdatasync(fd_) != 0) return write_error_ = Status::io(path_ + ": fdatasync: " + std::strerror(errno));
  dirty_ = false;
  return Status::ok();
}

Status JournalQueue::flush() {
  std::lock_guard<std::mutex> lk(mu_);
  return flush_locked();
}

void JournalQueue::flusher() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    cv_.wait_for(lk, std::chrono::duration<double>(o_.flush_s));
    if (stop_) break;
    if (Status st = flush_locked(); !st.is_ok()) spdlog::error("queue: {}", st.message());
  }
}

std::string JournalQueue::snapshot() const {
  std::string out = header_bytes();
  std::vector<const std::string*> ids;
  for (const auto& [id, t] : tasks_) ids.push_back(&id);
  std::sort(ids.begin(), ids.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
  // Pending tasks first in queue order (their order is the queue's), then the rest.
  std::unordered_set<std::string> seen;
  auto put = [&](const std::string& id) {
    const Task& t = tasks_.at(id);
    Body b;
    b.str(id).str(t.payload).u8(uint8_t(t.state)).u32(uint32_t(t.attempts)).u64(t.token).str(t.error);
    out += encode_record(kSnapshot, b.bytes());
  };
  for (const auto& id : pending_) {
    auto it = tasks_.find(id);
    if (it == tasks_.end() || it->second.state != State::kPending || !seen.insert(id).second) continue;
    put(id);
  }
  for (const std::string* id : ids)
    if (!seen.count(*id)) put(*id);
  if (draining_) out += encode_record(kDrain, "");
  return out;
}

Status JournalQueue::compact() {
  std::lock_guard<std::mutex> lk(mu_);
  return compact_locked();
}

// The snapshot goes to DIR/.queue.journal.tmp, locked before it is renamed over the journal, so no
// other process can take the queue in between; then fsync of DIR. Leased tasks are written as
// leased (with their lease's token): a reopen returns them to pending, as it would have.
Status JournalQueue::compact_locked() {
  MOBULA_RETURN_IF_ERROR(write_out());
  const std::string snap = snapshot();
  const std::string tmp = dir_ + "/.queue.journal.tmp";
  const int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::io(tmp + ": open: " + std::strerror(errno));
  auto fail_with = [&](Status st) {
    ::close(fd);
    std::error_code ec;
    fs::remove(tmp, ec);
    return st;
  };
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) return fail_with(Status::io(tmp + ": flock: " + std::strerror(errno)));
  if (Status st = write_all(fd, snap, tmp); !st.is_ok()) return fail_with(st);
  if (::fdatasync(fd) != 0) return fail_with(Status::io(tmp + ": fdatasync: " + std::strerror(errno)));
  std::error_code ec;
  fs::rename(tmp, path_, ec);
  if (ec)
    return fail_with(Status::io(path_ + ": rename of the compacted journal: " + ec.message() + " (the old one stays)"));
  ::close(fd_);
  fd_ = fd;
  file_bytes_ = static_cast<int64_t>(snap.size());
  dirty_ = false;
  MOBULA_RETURN_IF_ERROR(fsync_path(dir_, /*directory=*/true));
  dedup_pending();
  return Status::ok();
}

// The queue order stays; entries of tasks no longer pending, and repeats, go.
void JournalQueue::dedup_pending() {
  std::deque<std::string> fresh;
  std::unordered_set<std::string> seen;
  for (auto& id : pending_) {
    auto it = tasks_.find(id);
    if (it != tasks_.end() && it->second.state == State::kPending && seen.insert(id).second) fresh.push_back(id);
  }
  pending_.swap(fresh);
}

Status JournalQueue::maybe_compact() {
  if (file_bytes_ + int64_t(buffer_.size()) < o_.compact_bytes) return Status::ok();
  int64_t live = 0;
  for (const auto& [id, t] : tasks_)
    live += int64_t(kRecordHead + 4 + id.size() + 4 + t.payload.size() + 17 + 4 + t.error.size());
  if (file_bytes_ < 2 * live) return Status::ok();
  return compact_locked();
}

// ---- the queue ------------------------------------------------------------------------------------

Result<int64_t> JournalQueue::enqueue(const std::vector<TaskSpec>& tasks) {
  if (o_.read_only) return Status::invalid_argument(path_ + ": opened read-only");
  std::lock_guard<std::mutex> lk(mu_);
  int64_t added = 0;
  for (const auto& t : tasks) {
    if (!valid_task_id(t.id))
      return Status::invalid_argument("queue: task id '" + t.id.substr(0, 60) +
                                      "' is not 1..200 characters of [A-Za-z0-9._:/-]");
    if (tasks_.count(t.id)) continue;
    Task nt;
    nt.payload = t.payload;
    tasks_.emplace(t.id, std::move(nt));
    pending_.push_back(t.id);
    ++counts_[0];
    append(kEnqueue, Body().str(t.id).str(t.payload).bytes());
    ++added;
  }
  MOBULA_RETURN_IF_ERROR(flush_locked());  // durable before it returns
  return added;
}

Result<std::vector<Lease>> JournalQueue::lease(const std::string& worker, int max) {
  if (o_.read_only) return Status::invalid_argument(path_ + ": opened read-only");
  std::lock_guard<std::mutex> lk(mu_);
  MOBULA_RETURN_IF_ERROR(write_error_);
  std::vector<Lease> out;
  const double now = clock_();
  while (!draining_ && int(out.size()) < max && !pending_.empty()) {
    const std::string id = std::move(pending_.front());
    pending_.pop_front();
    auto it = tasks_.find(id);
    if (it == tasks_.end() || it->second.state != State::kPending) continue;  // stale entry
    Task& t = it->second;
    t.state = State::kLeased;
    t.token = next_token_++;
    t.worker = worker;
    t.deadline = now + o_.lease_s;
    ++t.attempts;
    --counts_[0], ++counts_[1];
    leased_.insert(id);
    append(kLease, Body().str(id).u64(t.token).str(worker).bytes());
    out.push_back({id, t.payload, t.attempts, t.token});
  }
  MOBULA_RETURN_IF_ERROR(write_out());
  return out;
}

Status JournalQueue::lease_lost(const Lease& l, const char* what) {
  return Status::not_found("queue: " + std::string(what) + " of task '" + l.task_id + "' (lease " +
                           std::to_string(l.token) + "): the lease is no longer held (it expired)");
}

Status JournalQueue::renew(const Lease& l) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = tasks_.find(l.task_id);
  if (it == tasks_.end() || it->second.state != State::kLeased || it->second.token != l.token)
    return lease_lost(l, "renewal");
  it->second.deadline = clock_() + o_.lease_s;
  return Status::ok();
}

Status JournalQueue::ack(const Lease& l) {
  std::lock_guard<std::mutex> lk(mu_);
  MOBULA_RETURN_IF_ERROR(write_error_);
  auto it = tasks_.find(l.task_id);
  if (it != tasks_.end() && it->second.state == State::kDone) return Status::ok();  // done already
  if (it == tasks_.end() || it->second.state != State::kLeased || it->second.token != l.token)
    return lease_lost(l, "ack");
  Task& t = it->second;
  leased_.erase(l.task_id);
  --counts_[1], ++counts_[2];
  t.state = State::kDone;
  t.payload.clear();
  append(kAck, Body().str(l.task_id).u64(l.token).bytes());
  MOBULA_RETURN_IF_ERROR(write_out());
  return maybe_compact();
}

Status JournalQueue::fail(const Lease& l, const std::string& error) {
  const Status compacted = [&] {
    std::lock_guard<std::mutex> lk(mu_);
    return maybe_compact();
  }();
  MOBULA_RETURN_IF_ERROR(compacted);
  std::lock_guard<std::mutex> lk(mu_);
  MOBULA_RETURN_IF_ERROR(write_error_);
  auto it = tasks_.find(l.task_id);
  if (it == tasks_.end() || it->second.state != State::kLeased || it->second.token != l.token)
    return lease_lost(l, "failure report");
  append(kFail, Body().str(l.task_id).u64(l.token).str(error).bytes());
  back_to_pending(l.task_id, it->second, error);
  return write_out();
}

Result<int64_t> JournalQueue::expire_leases() {
  std::lock_guard<std::mutex> lk(mu_);
  MOBULA_RETURN_IF_ERROR(write_error_);
  const double now = clock_();
  std::vector<std::string> due;
  for (const auto& id : leased_)
    if (tasks_.at(id).deadline <= now) due.push_back(id);
  std::sort(due.begin(), due.end());
  for (const auto& id : due) {
    Task& t = tasks_.at(id);
    const std::string error = "lease expired after " + std::to_string(o_.lease_s) + " s without renewal (worker " +
                              t.worker + " died or hangs)";
    append(kExpire, Body().str(id).u64(t.token).str(error).bytes());
    back_to_pending(id, t, error);
  }
  MOBULA_RETURN_IF_ERROR(write_out());
  return static_cast<int64_t>(due.size());
}

Result<QueueStats> JournalQueue::stats() {
  std::lock_guard<std::mutex> lk(mu_);
  QueueStats s;
  s.pending = counts_[0], s.leased = counts_[1], s.done = counts_[2], s.dead = counts_[3];
  s.draining = draining_;
  return s;
}

Result<std::vector<DeadTask>> JournalQueue::dead() {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<DeadTask> out;
  for (const auto& [id, t] : tasks_)
    if (t.state == State::kDead) out.push_back({id, t.payload, t.error, t.attempts});
  std::sort(out.begin(), out.end(), [](const DeadTask& a, const DeadTask& b) { return a.id < b.id; });
  return out;
}

Result<int64_t> JournalQueue::requeue_dead() {
  if (o_.read_only) return Status::invalid_argument(path_ + ": opened read-only");
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<std::string> ids;
  for (const auto& [id, t] : tasks_)
    if (t.state == State::kDead) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (const auto& id : ids) {
    Task& t = tasks_.at(id);
    --counts_[3], ++counts_[0];
    t.state = State::kPending;
    t.attempts = 0;
    t.error.clear();
    pending_.push_back(id);
    append(kRevive, Body().str(id).bytes());
  }
  MOBULA_RETURN_IF_ERROR(flush_locked());
  return static_cast<int64_t>(ids.size());
}

Status JournalQueue::drain() {
  if (o_.read_only) return Status::invalid_argument(path_ + ": opened read-only");
  std::lock_guard<std::mutex> lk(mu_);
  if (draining_) return Status::ok();
  draining_ = true;
  append(kDrain, "");
  return flush_locked();
}

Status JournalQueue::resume() {
  if (o_.read_only) return Status::invalid_argument(path_ + ": opened read-only");
  std::lock_guard<std::mutex> lk(mu_);
  if (!draining_) return Status::ok();
  draining_ = false;
  append(kResume, "");
  return flush_locked();
}

int64_t JournalQueue::journal_bytes() const {
  std::lock_guard<std::mutex> lk(mu_);
  return file_bytes_ + static_cast<int64_t>(buffer_.size());
}

void JournalQueue::set_clock(std::function<double()> clock) {
  std::lock_guard<std::mutex> lk(mu_);
  clock_ = std::move(clock);
}

}  // namespace mobula::queue
