// A reliable task queue (docs/queue.md): Redis' reliable-list pattern for MPI/Slurm jobs.
//
// A task is an (id, payload) pair. lease() moves a pending task to a worker, for lease_s seconds;
// the worker renews the lease while it works (heartbeat), writes its output durably, then ack()s.
// A lease that expires (a worker that died or hangs) or fail()s sends the task back to pending; the
// attempt that lease was counts, and a task whose attempts reach max_attempts is parked in the
// dead-letter list with its last error (a poison task never takes the job down forever).
//
// Semantics
//  * At-least-once delivery: a task may run more than once (a worker died after writing its output
//    but before the ack). Exactly-once EFFECTS come from idempotent, content-addressed outputs: the
//    output of a task is a pure function of its payload, written atomically under a name derived
//    from the task, so a second run rewrites the same bytes.
//  * enqueue() is idempotent by id: an id the queue has seen (pending, leased, done or dead) is
//    skipped, so a restarted producer re-enqueues its whole input safely.
//  * A lease carries a token. renew/ack/fail of a lease the queue no longer holds (it expired and
//    the task went back or to another worker) is refused with Status::not_found; the late
//    worker's output is still correct (idempotent), only the current lease counts.
//  * drain(): no new leases are handed out; leases in flight may still ack or fail.
//
// Backends: JournalQueue (core/queue/journal.h, the default: a journaled queue owned by one
// process, served to MPI ranks by core/queue/mpi_queue.h) and RedisQueue (core/queue/redis.h,
// shared by independent jobs and array-job elements).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::queue {

struct TaskSpec {
  std::string id;  // 1..200 characters of [A-Za-z0-9._:/-]
  std::string payload;
};

struct Lease {
  std::string task_id, payload;
  int attempt = 0;     // 1 for the first delivery
  uint64_t token = 0;  // identity of this lease
};

struct QueueStats {
  int64_t pending = 0, leased = 0, done = 0, dead = 0;
  bool draining = false;
  int64_t total() const { return pending + leased + done + dead; }
};

struct DeadTask {
  std::string id, payload, error;
  int attempts = 0;
};

struct QueueOptions {
  double lease_s = 30;   // a lease not renewed within this many seconds expires
  int max_attempts = 3;  // attempts (failed or expired leases) before a task is dead
};

// Whether `id` is a valid task id (see TaskSpec).
bool valid_task_id(const std::string& id);

class TaskQueue {
 public:
  virtual ~TaskQueue() = default;
  // Adds the tasks not seen before (see above); returns how many were new.
  virtual Result<int64_t> enqueue(const std::vector<TaskSpec>& tasks) = 0;
  // Up to `max` pending tasks leased to `worker` (empty: none pending now, or draining; leases in
  // flight may still come back, see stats()).
  virtual Result<std::vector<Lease>> lease(const std::string& worker, int max = 1) = 0;
  virtual Status renew(const Lease& l) = 0;
  virtual Status ack(const Lease& l) = 0;
  virtual Status fail(const Lease& l, const std::string& error) = 0;
  // Leases past their deadline go back to pending (or dead); returns how many.
  virtual Result<int64_t> expire_leases() = 0;
  virtual Result<QueueStats> stats() = 0;
  virtual Result<std::vector<DeadTask>> dead() = 0;
  // Dead tasks back to pending with their attempts reset; returns how many.
  virtual Result<int64_t> requeue_dead() = 0;
  virtual Status drain() = 0;
  // Undoes drain(): leases are handed out again.
  virtual Status resume() = 0;
};

}  // namespace mobula::queue
