// The embedded queue served over MPI (docs/queue.md): one rank (the coordinator) owns the
// JournalQueue and a server thread answers the other ranks' requests; every other rank holds an
// MpiQueueClient, a TaskQueue whose calls are one request and one reply each.
//
// Contract
//  * QueueServer::start (on the server rank) and MpiQueueClient::connect (on every other rank of
//    `comm`) are collective over `comm`: both duplicate it, so queue traffic never mixes with the
//    caller's.
//  * The server thread makes all its MPI calls itself (MPI_THREAD_MULTIPLE, which Environment
//    requests); it polls yielding for spin_us after each request (the next one comes within
//    microseconds while workers are busy) and with a short sleep when idle (a spinning thread would
//    take a core from the workers on the same node), and calls expire_leases() every
//    `expire_every_s`. Clients wait for a reply the same way (yield for 1 ms, then sleep).
//  * A client is thread-safe (a mutex around each request/reply), so a worker may renew its lease
//    from a heartbeat thread while its main thread works.
//  * Requests time out after `timeout` (the server rank died or hangs): the call returns
//    Status::timeout and the client must not be used again (the reply may still arrive).
//  * stop() ends the server thread; call it once every client is done (after a barrier): a request
//    sent after stop() is never answered.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "core/queue/journal.h"

namespace mobula::queue {

struct ServerOptions {
  int spin_us = 2000;  // after a request, yield (not sleep) this long while polling for the next
  int idle_sleep_us = 200;
  double expire_every_s = 1.0;
  std::string drain_file;  // when this file appears, the server drains the queue ("" never)
};

class QueueServer {
 public:
  static Result<std::unique_ptr<QueueServer>> start(MPI_Comm comm, TaskQueue& queue, const ServerOptions& o = {});
  ~QueueServer();  // stop()
  QueueServer(const QueueServer&) = delete;
  QueueServer& operator=(const QueueServer&) = delete;
  Status stop();
  int64_t requests() const { return requests_.load(); }

 private:
  QueueServer(MPI_Comm comm, TaskQueue& q, const ServerOptions& o) : comm_(comm), q_(q), o_(o) {}
  void loop();
  std::string handle(const std::string& request);
  MPI_Comm comm_;
  TaskQueue& q_;
  ServerOptions o_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> requests_{0};
  Status error_;
  std::thread thread_;
};

class MpiQueueClient final : public TaskQueue {
 public:
  static Result<std::unique_ptr<MpiQueueClient>> connect(MPI_Comm comm, int server,
                                                         std::chrono::milliseconds timeout = std::chrono::minutes(2));
  ~MpiQueueClient() override;

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

 private:
  MpiQueueClient(MPI_Comm comm, int server, std::chrono::milliseconds timeout)
      : comm_(comm), server_(server), timeout_(timeout) {}
  // One request, its reply's body (after the status).
  Result<std::string> call(const std::string& request);
  Status call_status(const std::string& request);          // a reply with no body
  Result<int64_t> call_count(const std::string& request);  // a reply of one count
  MPI_Comm comm_;
  int server_;
  std::chrono::milliseconds timeout_;
  std::mutex mu_;
};

}  // namespace mobula::queue
