// The Redis backend's throughput (docs/perf.md, "bench_queue"): lease + ack of empty tasks through
// RedisQueue (one Lua script per call) with 1 and 2 clients, against redis-benchmark's raw LMOVE
// rate on the same server in the same run (the reliable-list pattern's floor: one command).
//
//   redis-server --port 6399 --save "" --appendonly yes &     # appendfsync everysec (the default)
//   perf/queue/bench_redis 127.0.0.1:6399 [tasks=20000] [lease_batch=16]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "core/queue/redis.h"
#include "core/runtime/process.h"

using namespace mobula;

namespace {

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "bench_redis: %s\n", msg.c_str());
  std::exit(1);
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Empty tasks per second with `clients` threads, each with its own connection.
double queue_rate(const std::string& addr, int n, int batch, int clients, int round) {
  const std::string name = "bench-" + std::to_string(round) + "-" + std::to_string(clients);
  auto q = queue::RedisQueue::connect(addr, name);
  if (!q) die(q.status().message());
  std::vector<queue::TaskSpec> t;
  for (int i = 0; i < n; ++i) t.push_back({"t" + std::to_string(i), "x"});
  if (!(*q)->enqueue(t).is_ok()) die("enqueue");
  std::vector<std::unique_ptr<queue::RedisQueue>> conns;
  for (int c = 0; c < clients; ++c) {
    auto x = queue::RedisQueue::connect(addr, name);
    if (!x) die(x.status().message());
    conns.push_back(std::move(x).value());
  }
  const double t0 = now();
  std::vector<std::thread> th;
  for (auto& c : conns)
    th.emplace_back([&c, batch] {
      for (;;) {
        auto l = c->lease("w", batch);
        if (!l) die(l.status().message());
        if (l->empty()) return;
        for (const auto& x : *l)
          if (!c->ack(x).is_ok()) die("ack");
      }
    });
  for (auto& x : th) x.join();
  const double dt = now() - t0;
  auto s = (*q)->stats();
  if (!s || s->done != n) die("not every task done");
  if (!(*q)->destroy().is_ok()) die("destroy");
  return n / dt;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) die("usage: bench_redis HOST:PORT [tasks] [lease_batch]");
  const std::string addr = argv[1];
  const int n = argc > 2 ? std::atoi(argv[2]) : 20000, batch = argc > 3 ? std::atoi(argv[3]) : 16;
  const auto colon = addr.rfind(':');
  // The floor: redis-benchmark's LMOVE on an empty list (one round trip, one command), 1 client.
  auto rb =
      run_capture({"redis-benchmark", "-h", addr.substr(0, colon), "-p", addr.substr(colon + 1), "-n",
                   std::to_string(n), "-c", "1", "-q", "LMOVE", "mobula:bench:a", "mobula:bench:b", "LEFT", "RIGHT"},
                  120);
  if (!rb || rb->exit_code != 0) die("redis-benchmark failed: " + (rb ? rb->err : rb.status().message()));
  const auto p = rb->out.rfind(": ");
  const double lmove = p == std::string::npos ? 0 : std::atof(rb->out.c_str() + p + 2);
  for (int clients : {1, 2}) {
    std::vector<double> r;
    for (int round = 0; round < 3; ++round) r.push_back(queue_rate(addr, n, batch, clients, round));
    const double rate = median(r);
    std::printf("redis, %d client(s): %.0f empty tasks/s (median of 3; lease %d + ack each)\n", clients, rate, batch);
    if (clients == 1)
      std::printf(
          "redis-benchmark LMOVE, 1 client: %.0f requests/s; per task the queue costs %.1f us, a raw LMOVE "
          "%.1f us: queue/LMOVE time %.2f\n",
          lmove, 1e6 / rate, 1e6 / lmove, lmove / rate);
  }
  return 0;
}
