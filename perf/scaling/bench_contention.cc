// Time-sharing of cores by ranks (the scaling study's machine model, docs/scaling.md): how much a
// fixed unit of compute slows down when k of P ranks compute and the other P-k wait for them in a
// transport receive, as the roles of a synchronous GRPO step do; and how long a message takes to
// reach a waiting rank while the cores are busy (the hand-off between roles).
//
//   mpirun -np P perf/scaling/bench_contention [unit-ms=4] [iters=9] [backend=mpi] [--csv FILE]
//
// Rows (perf/harness.h CsvLog, bench "bench_contention"):
//  * backend "cpu", op "compute_alone", ranks P: the unit on rank 0 while every other rank sleeps
//    (the baseline, measured in the same run);
//  * backend "cpu", op "compute_active", ranks P, bytes = k: the unit's time, slowest of the k active
//    ranks, while P-k ranks wait in BACKEND's recv for a token from each active rank;
//  * backend BACKEND, op "handoff", ranks P (P >= 3): one-way time of a 1-byte message between ranks
//    0 and 1 while ranks 2..P-1 compute (half a ping-pong), against the same with every other rank
//    asleep (op "handoff_idle").
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/runtime/environment.h"
#include "core/transport/transport.h"
#include "perf/harness.h"

using namespace mobula;

namespace {

[[noreturn]] void die(const std::string& msg) {
  perf::die("bench_contention", msg);
}
void check(const Status& s) {
  if (!s) die(s.message());
}

int g_rank = 0, g_size = 1;

// A dependent chain of multiply-adds over a small array: n passes of pure core time, no memory
// traffic to speak of.
float work(long passes) {
  static float a[256];
  float acc = 1.0f;
  for (long p = 0; p < passes; ++p)
    for (int i = 0; i < 256; ++i) acc = acc * 0.999999f + (a[i] += 1e-7f);
  return acc;
}

// Waits for every rank without using a core: Ibarrier polled every 200 us.
void idle_barrier() {
  MPI_Request req;
  MPI_Ibarrier(MPI_COMM_WORLD, &req);
  for (int done = 0; !done; usleep(200)) MPI_Test(&req, &done, MPI_STATUS_IGNORE);
}

// Passes for about unit_ms on rank 0 alone, agreed by every rank.
long calibrate(double unit_ms) {
  long passes = 64;
  if (g_rank == 0) {
    for (;;) {
      const double t0 = MPI_Wtime();
      volatile float sink = work(passes);
      (void)sink;
      const double ms = (MPI_Wtime() - t0) * 1e3;
      if (ms > unit_ms / 4) {
        passes = static_cast<long>(static_cast<double>(passes) * unit_ms / ms);
        break;
      }
      passes *= 2;
    }
  }
  MPI_Bcast(&passes, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  return passes;
}

// Median over iterations of the slowest participating rank's seconds (others pass 0).
double slowest_median(std::vector<double> mine) {
  std::vector<double> all(mine.size());
  MPI_Allreduce(mine.data(), all.data(), static_cast<int>(mine.size()), MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return perf::median(all);
}

perf::Row row(const std::string& name, double bytes, double seconds) {
  return perf::Row{name, bytes, {seconds}, perf::Pattern::kPointToPoint, 0};
}

}  // namespace

int main(int argc, char** argv) {
  auto env = Environment::init(&argc, &argv);
  if (!env) die(env.status().message());
  g_rank = (*env)->rank();
  g_size = (*env)->size();
  const perf::CsvLog csv("bench_contention", perf::take_flag(&argc, argv, "--csv"));
  const double unit_ms = argc > 1 ? std::atof(argv[1]) : 4.0;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 9;
  const std::string backend = argc > 3 ? argv[3] : "mpi";
  if (!(unit_ms > 0) || iters < 1) die("usage: bench_contention [unit-ms > 0] [iters >= 1] [backend]");
  auto t = make_transport(backend, MPI_COMM_WORLD);
  if (!t) die(t.status().message());
  Transport& tr = **t;
  const long passes = calibrate(unit_ms);
  std::vector<char> token(1);
  const Buffer tok = host_buffer(std::span<char>(token));
  if (g_rank == 0) {
    std::printf("# bench_contention: %d ranks, unit %.1f ms, %d iterations (median), backend %s\n", g_size, unit_ms,
                iters, backend.c_str());
    std::printf("%-34s %12s %9s\n", "benchmark", "median_ms", "vs alone");
  }

  // The unit alone: everyone else asleep.
  std::vector<double> mine;
  for (int i = 0; i <= iters; ++i) {
    idle_barrier();
    const double t0 = MPI_Wtime();
    if (g_rank == 0) {
      volatile float sink = work(passes);
      (void)sink;
    }
    if (i > 0) mine.push_back(g_rank == 0 ? MPI_Wtime() - t0 : 0.0);
  }
  const double alone = slowest_median(mine);
  if (g_rank == 0) {
    std::printf("%-34s %12.3f %9s\n", "compute alone", alone * 1e3, "-");
    csv.row("cpu", "compute_alone", g_size, row("compute alone", 0, alone));
  }

  // k active ranks compute while the others wait in a transport receive for their tokens.
  for (int k = 1; k <= g_size; ++k) {
    mine.clear();
    for (int i = 0; i <= iters; ++i) {
      idle_barrier();
      double dt = 0;
      if (g_rank < k) {
        const double t0 = MPI_Wtime();
        volatile float sink = work(passes);
        (void)sink;
        dt = MPI_Wtime() - t0;
        for (int w = k; w < g_size; ++w) check(tr.send(tok, w));
      } else {
        for (int a = 0; a < k; ++a) check(tr.recv(tok, a));
      }
      if (i > 0) mine.push_back(dt);
    }
    const double s = slowest_median(mine);
    if (g_rank == 0) {
      const std::string name = std::to_string(k) + " active, " + std::to_string(g_size - k) + " waiting";
      std::printf("%-34s %12.3f %9.2f\n", name.c_str(), s * 1e3, s / alone);
      csv.row("cpu", "compute_active", g_size, row(name, k, s));
    }
  }

  // Hand-off: a ping-pong between ranks 0 and 1 while the rest compute (or sleep).
  if (g_size >= 3) {
    constexpr int kPings = 20;
    for (bool busy : {false, true}) {
      mine.clear();
      for (int i = 0; i <= iters; ++i) {
        idle_barrier();
        double dt = 0;
        if (g_rank <= 1) {
          const double t0 = MPI_Wtime();
          for (int p = 0; p < kPings; ++p) {
            if (g_rank == 0) check(tr.send(tok, 1)), check(tr.recv(tok, 1));
            if (g_rank == 1) check(tr.recv(tok, 0)), check(tr.send(tok, 0));
          }
          dt = (MPI_Wtime() - t0) / (2 * kPings);
          for (int w = 2; w < g_size; ++w) check(tr.send(tok, w));  // the busy ranks may stop
        } else {
          if (busy) {
            // Compute until rank 0's token arrives (the cores stay taken for the whole ping-pong).
            auto req = tr.irecv(tok, 0);
            if (!req) die(req.status().message());
            for (;;) {
              volatile float sink = work(passes / 16 + 1);
              (void)sink;
              auto done = (*req)->test();
              if (!done) die(done.status().message());
              if (*done) break;
            }
            check(tr.recv(tok, 1));
          } else {
            check(tr.recv(tok, 0));
            check(tr.recv(tok, 1));
          }
        }
        if (i > 0) mine.push_back(dt);
      }
      const double s = slowest_median(mine);
      if (g_rank == 0) {
        const char* name = busy ? "hand-off, others computing" : "hand-off, others asleep";
        std::printf("%-34s %12.3f %9s\n", name, s * 1e3, "-");
        csv.row(backend, busy ? "handoff" : "handoff_idle", g_size, row(name, 1, s));
      }
    }
  }
  t->reset();
  return 0;
}
