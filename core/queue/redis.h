// RedisQueue: the task queue (core/queue/queue.h) on a Redis server, so that independent jobs and
// array-job elements share one queue (docs/queue.md). Redis' reliable-list pattern: a lease moves a
// task atomically from the pending list to the processing list (LMOVE) and records its token and
// deadline; ack/fail/expiry take it off the processing list again. Every call is one Lua script
// (EVALSHA after the first EVAL of it), atomic on the server; deadlines use the server's clock (TIME), so every client
// agrees on them.
//
// Keys (one hash tag, so a cluster keeps them in one slot): mobula:q:{NAME}:pending (list),
// :processing (list), :lease (hash id -> "token deadline_ms worker"), :payload, :attempts, :state
// (p, l, d = done, x = dead), :error (hashes), :dead (set), :counts (hash), :token (counter),
// :draining (flag).
//
// Durability is the server's: run it with appendonly yes (the tests do; appendfsync everysec loses
// at most a second, like the journal's group commit). Leases survive a worker's crash: they expire
// after lease_s and the task goes back (someone must call expire_leases(): workers do when idle,
// the curation coordinator every second).
//
// Connection loss (a restarted server): a call reconnects and retries for up to `reconnect_s`;
// a lease whose reply was lost expires later (at-least-once), an ack retried is idempotent.
// Thread-safe (one mutex around the connection).
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/queue/queue.h"

struct redisContext;
struct redisReply;

namespace mobula::queue {

struct RedisOptions : QueueOptions {
  double connect_timeout_s = 5;
  double reconnect_s = 30;  // how long a call keeps trying when the server is gone
};

class RedisQueue final : public TaskQueue {
 public:
  // address "HOST:PORT"; name: the queue's name (keys mobula:q:{NAME}:*).
  static Result<std::unique_ptr<RedisQueue>> connect(const std::string& address, const std::string& name,
                                                     const RedisOptions& o = {});
  ~RedisQueue() override;

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

  // Deletes every key of the queue (tests, and `mobula queue` on a finished queue).
  Status destroy();
  int64_t reconnects() const { return reconnects_; }

 private:
  struct Reply;
  RedisQueue(std::string host, int port, std::string name, const RedisOptions& o);
  Status reconnect_locked();
  // Runs script `s` (EVALSHA, loading it on NOSCRIPT) with the queue's keys and `args`.
  Result<std::shared_ptr<redisReply>> run(int s, const std::vector<std::string>& args);
  std::string host_;
  int port_;
  std::string name_;
  RedisOptions o_;
  std::vector<std::string> keys_;
  std::vector<std::string> shas_;  // per script: its SHA-1 once the server has it
  redisContext* c_ = nullptr;
  int64_t reconnects_ = 0;
  std::mutex mu_;
};

}  // namespace mobula::queue
