// The task queue's throughput and overhead (docs/perf.md, "bench_queue"):
//  1. in-process JournalQueue: lease + ack of empty tasks per second, against the same transitions
//     on a bare std::deque + std::unordered_map (the data-structure floor) in the same run;
//  2. over MPI (rank 0 serves the journal, ranks 1.. work): empty tasks per second for 1..N workers,
//     against a raw MPI request/reply echo of the same message sizes through the same kind of
//     server thread (the transport floor), and the queue's overhead at 10 ms tasks: wall time over
//     tasks x 10 ms / workers.
//
//   mpirun -np 5 --oversubscribe perf/queue/bench_queue [tasks=20000] [dir=/tmp] [lease_batch=16]
#include <mpi.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/queue/journal.h"
#include "core/queue/mpi_queue.h"
#include "core/runtime/environment.h"
#include "perf/harness.h"

using namespace mobula;
namespace fs = std::filesystem;

namespace {

[[noreturn]] void die(const std::string& msg) {
  perf::die("bench_queue", msg);
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<queue::TaskSpec> make_tasks(int n, const std::string& prefix) {
  std::vector<queue::TaskSpec> t;
  for (int i = 0; i < n; ++i) t.push_back({prefix + std::to_string(i), "x"});
  return t;
}

// In-process: lease + ack of n tasks, batch at a time.
double journal_rate(const std::string& dir, int n, int batch) {
  fs::remove_all(dir);
  auto q = queue::JournalQueue::open(dir);
  if (!q) die(q.status().message());
  if (!(*q)->enqueue(make_tasks(n, "t")).is_ok()) die("enqueue");
  const double t0 = now();
  for (int done = 0; done < n;) {
    auto l = (*q)->lease("w", batch);
    if (!l || l->empty()) die("lease");
    for (const auto& x : *l)
      if (!(*q)->ack(x).is_ok()) die("ack");
    done += int(l->size());
  }
  const double dt = now() - t0;
  q->reset();
  fs::remove_all(dir);
  return n / dt;
}

// The floor: the same transitions on bare containers.
double bare_rate(int n, int batch) {
  std::deque<std::string> pending;
  std::unordered_map<std::string, int> state;
  for (const auto& t : make_tasks(n, "t")) pending.push_back(t.id), state[t.id] = 0;
  const double t0 = now();
  for (int done = 0; done < n;) {
    std::vector<std::string> got;
    for (int b = 0; b < batch && !pending.empty(); ++b) {
      got.push_back(pending.front());
      pending.pop_front();
      state[got.back()] = 1;
    }
    for (const auto& id : got) state[id] = 2;
    done += int(got.size());
  }
  return n / (now() - t0);
}

// A raw echo server thread (the transport floor): answers every request with its bytes.
struct Echo {
  MPI_Comm comm;
  std::atomic<bool> stop{false};
  std::thread t;
  void loop() {
    std::string buf;
    auto last = std::chrono::steady_clock::now();
    while (!stop) {
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, 7101, comm, &flag, &st);
      if (!flag) {
        if (std::chrono::steady_clock::now() - last < std::chrono::milliseconds(2))
          std::this_thread::yield();
        else
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        continue;
      }
      int n = 0;
      MPI_Get_count(&st, MPI_BYTE, &n);
      buf.resize(size_t(n));
      MPI_Recv(buf.data(), n, MPI_BYTE, st.MPI_SOURCE, 7101, comm, MPI_STATUS_IGNORE);
      MPI_Send(buf.data(), n, MPI_BYTE, st.MPI_SOURCE, 7102, comm);
      last = std::chrono::steady_clock::now();
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  auto env = Environment::init(&argc, &argv);
  if (!env) die(env.status().message());
  const int rank = (*env)->rank(), size = (*env)->size();
  const int ntasks = argc > 1 ? std::atoi(argv[1]) : 20000;
  const std::string base =
      (argc > 2 ? std::string(argv[2]) : std::string("/tmp")) + "/bench_queue." + std::to_string(getpid());
  const int batch = argc > 3 ? std::atoi(argv[3]) : 16;
  std::string dir;
  {
    std::vector<char> d(base.begin(), base.end());
    d.push_back(0);
    MPI_Bcast(d.data(), int(d.size()), MPI_CHAR, 0, MPI_COMM_WORLD);
    dir = d.data();
  }
  if (rank == 0) {
    std::vector<double> j, b;
    for (int i = 0; i < 5; ++i) j.push_back(journal_rate(dir + "/inproc", 100000, batch));
    for (int i = 0; i < 5; ++i) b.push_back(bare_rate(100000, batch));
    std::printf("in-process: journal %.0f tasks/s (lease %d + ack each), bare containers %.0f/s, journal/bare %.3f\n",
                perf::median(j), batch, perf::median(b), perf::median(j) / perf::median(b));
  }
  if (size < 2) return 0;

  // Over MPI with 1 .. size-1 workers: empty tasks, then 10 ms tasks.
  for (int workers = 1; workers < size; workers *= 2) {
    const bool working = rank >= 1 && rank <= workers;
    for (const int task_ms : {0, 10}) {
      const int n = task_ms == 0 ? ntasks : std::max(workers * 20, 40);
      std::vector<double> walls;
      for (int it = 0; it < 3; ++it) {
        std::unique_ptr<queue::JournalQueue> journal;
        std::unique_ptr<queue::QueueServer> server;
        std::unique_ptr<queue::MpiQueueClient> client;
        const std::string qdir = dir + "/mpi";
        if (rank == 0) {
          fs::remove_all(qdir);
          auto q = queue::JournalQueue::open(qdir);
          if (!q) die(q.status().message());
          journal = std::move(q).value();
          if (!journal->enqueue(make_tasks(n, "t")).is_ok()) die("enqueue");
          auto s = queue::QueueServer::start(MPI_COMM_WORLD, *journal);
          if (!s) die(s.status().message());
          server = std::move(s).value();
        } else {
          auto c = queue::MpiQueueClient::connect(MPI_COMM_WORLD, 0);
          if (!c) die(c.status().message());
          client = std::move(c).value();
        }
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = now();
        while (working) {
          auto l = client->lease("w" + std::to_string(rank), task_ms == 0 ? batch : 1);
          if (!l) die(l.status().message());
          if (l->empty()) break;
          for (const auto& x : *l) {
            if (task_ms) std::this_thread::sleep_for(std::chrono::milliseconds(task_ms));
            if (!client->ack(x).is_ok()) die("ack");
          }
        }
        double mine = working ? now() - t0 : 0, wall = 0;
        MPI_Allreduce(&mine, &wall, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (rank == 0) {
          auto s = journal->stats();
          if (!s || s->done != n) die("not every task done");
          if (!server->stop().is_ok()) die("server");
        }
        client.reset();
        server.reset();
        walls.push_back(wall);
      }
      const double wall = perf::median(walls);
      if (task_ms == 0) {
        if (rank == 0)
          std::printf("mpi, %d worker(s): %.0f empty tasks/s (median of 3; %d tasks, lease %d + ack each)\n", workers,
                      n / wall, n, batch);
      } else {
        // The baseline: the same tasks, split evenly, with no queue (sleep's own overshoot included).
        std::vector<double> bases;
        for (int it = 0; it < 3; ++it) {
          MPI_Barrier(MPI_COMM_WORLD);
          const double t0 = now();
          for (int i = rank - 1; working && i < n; i += workers)
            std::this_thread::sleep_for(std::chrono::milliseconds(task_ms));
          double mine = working ? now() - t0 : 0, w = 0;
          MPI_Allreduce(&mine, &w, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
          bases.push_back(w);
        }
        const double base_wall = perf::median(bases);
        if (rank == 0)
          std::printf(
              "mpi, %d worker(s): %d tasks of %d ms in %.3f s, without the queue %.3f s: queue overhead "
              "%.2f%%\n",
              workers, n, task_ms, wall, base_wall, 100.0 * (wall - base_wall) / base_wall);
      }
    }
    // The transport floor: the same number of request/reply pairs through a raw echo thread.
    Echo echo;
    MPI_Comm_dup(MPI_COMM_WORLD, &echo.comm);
    if (rank == 0) echo.t = std::thread([&] { echo.loop(); });
    MPI_Barrier(MPI_COMM_WORLD);
    const int pairs = ntasks / workers * (1 + batch) / batch;  // one lease per batch + one ack per task
    const double t0 = now();
    if (working) {
      std::string msg(48, 'x'), back(48, ' ');
      for (int i = 0; i < pairs; ++i) {
        MPI_Send(msg.data(), 48, MPI_BYTE, 0, 7101, echo.comm);
        MPI_Recv(back.data(), 48, MPI_BYTE, 0, 7102, echo.comm, MPI_STATUS_IGNORE);
      }
    }
    double mine = working ? now() - t0 : 0, wall = 0;
    MPI_Allreduce(&mine, &wall, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0) {
      echo.stop = true;
      echo.t.join();
      std::printf("mpi, %d worker(s): raw echo of the same %d request/reply pairs: %.0f tasks/s equivalent\n", workers,
                  pairs * workers, double(pairs * workers) * batch / (1 + batch) / wall);
    }
    MPI_Comm_free(&echo.comm);
  }
  if (rank == 0) fs::remove_all(dir);
  return 0;
}
