// JournalQueue: the embedded backend of the task queue (core/queue/queue.h; docs/queue.md). One
// process owns DIR/queue.journal: the queue's state lives in memory and every change is appended to
// the journal, so reopening after a crash of the whole job replays it.
//
// Why a journal and not SQLite in WAL mode: the state is a handful of transitions per task and the
// only reads are the replay; an append-only log with a checksum per record names the exact record
// that is damaged (SQLite reports a corrupt database as a whole), and group commit (one fdatasync
// per flush_s for every record since) reaches tens of thousands of transitions a second where
// SQLite's synchronous=FULL commit per transition is bound to the disk's fsync latency.
//
// Durability
//  * enqueue() returns after its records are on disk (fdatasync).
//  * lease/ack/fail records are written at once and made durable within flush_s (group commit,
//    by a background thread): after a crash the journal has lost at most that window. Losing an
//    ack re-runs a task (at-least-once; outputs are idempotent); losing a lease loses one counted
//    attempt of a task that crashed its worker within flush_s of being leased.
//  * Leases do not survive the process: on open, every task the journal shows leased goes back to
//    pending (its attempt stays counted: a task that takes the whole job down with it is a poison
//    task too), or to the dead list at max_attempts.
//
// Format (docs/formats/queue-journal.md): "MOBULAQJ" u32 version, then records
//   u32 body length | u64 xxh64(type, body) | u8 type | body
// A record shorter than its header says at the end of the file (a crash while appending, never
// made durable) is dropped with a warning naming it; any other damage (a checksum mismatch, an
// unknown type, bad lengths) is an error naming the record and its byte offset, and nothing is
// written: the journal is never silently cut.
//
// Compaction: when the journal is larger than compact_bytes and twice what a snapshot of the state
// would take, it is rewritten as one snapshot (tmp file, fsync, rename, fsync of DIR).
//
// Threads: every method may be called from any thread (one mutex). One process only: the journal
// is locked (flock); a second open fails naming the holder.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "core/queue/queue.h"

namespace mobula::queue {

struct JournalOptions : QueueOptions {
  double flush_s = 0.01;                      // group commit window
  int64_t compact_bytes = int64_t{64} << 20;  // compaction threshold
  bool read_only = false;                     // replay only (mobula queue status while a job runs)
};

// The options the owner last opened DIR with (DIR/queue.json, written at every open), so that
// readers (mobula queue status) replay with the same poison limit; the defaults when there is none.
JournalOptions owner_options(const std::string& dir);

class JournalQueue final : public TaskQueue {
 public:
  static Result<std::unique_ptr<JournalQueue>> open(const std::string& dir, const JournalOptions& o = {});
  ~JournalQueue() override;  // flushes

  Result<int64_t> enqueue(const std::vector<TaskSpec>& tasks) override;
  Result<std::vector<Lease>> lease(const std::string& worker, int max = 1) override;
  Status renew(const Lease& l) override;
  Status ack(const Lease& l) override;
  Status fail(const Lease& l, const std::string& error) override;
  Result<int64_t> expire_leases() override;
  Result<QueueStats> stats() override;
  Result<std::vector<DeadTask>> dead() override;
  Result<int64_t> requeue_dead() override;
  Status drain() override;
  Status resume() override;

  // Makes every record written so far durable now.
  Status flush();
  // Rewrites the journal as one snapshot of the state (also done on its own, see above).
  Status compact();
  int64_t journal_bytes() const;
  const std::string& path() const { return path_; }
  // Seconds on a monotonic clock; tests replace it.
  void set_clock(std::function<double()> clock);
  // What replay found: records read, and a dropped torn tail ("" when none).
  int64_t replayed_records() const { return replayed_; }
  const std::string& torn_tail() const { return torn_; }

 private:
  enum class State : uint8_t { kPending = 0, kLeased = 1, kDone = 2, kDead = 3 };
  struct Task {
    std::string payload, error, worker;
    State state = State::kPending;
    int attempts = 0;
    uint64_t token = 0;
    double deadline = 0;
  };

  JournalQueue(std::string dir, const JournalOptions& o);
  Status replay();
  Status apply(uint8_t type, const std::string& body, int64_t index, int64_t offset);
  void append(uint8_t type, const std::string& body);  // mu_ held
  Status write_out();                                  // mu_ held: the buffer to the file
  Status flush_locked();
  Status maybe_compact();   // mu_ held
  Status compact_locked();  // mu_ held
  Status lease_lost(const Lease& l, const char* what);
  void back_to_pending(const std::string& id, Task& t, const std::string& error);  // mu_ held
  std::string snapshot() const;
  void dedup_pending();  // mu_ held
  void flusher();

  std::string dir_, path_;
  JournalOptions o_;
  int fd_ = -1;
  std::unordered_map<std::string, Task> tasks_;
  std::deque<std::string> pending_;  // ids, oldest first (may hold stale entries: checked on pop)
  std::unordered_set<std::string> leased_;
  int64_t counts_[4] = {0, 0, 0, 0};
  bool draining_ = false;
  uint64_t next_token_ = 1;
  std::string buffer_;      // written, not yet handed to the file
  int64_t file_bytes_ = 0;  // bytes in the file (written)
  bool dirty_ = false;      // written since the last fdatasync
  Status write_error_;      // the first failed write or sync: every later call returns it
  int64_t replayed_ = 0;
  std::string torn_;
  std::function<double()> clock_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread flusher_;
};

}  // namespace mobula::queue
