// One benchmark harness for every perf/ binary (nccl-tests style).
//
//  * time: the slowest rank's wall time of one iteration (a barrier starts each iteration; the
//    per-rank times are max-reduced), median over the timed iterations after warm-up.
//  * algbw = bytes / time, in GB/s (1e9), bytes being the payload of one iteration as the user
//    sees it (for I/O: all ranks' bytes together).
//  * busbw = algbw * factor, the factor per pattern:  p2p, broadcast, io: 1;
//    all-reduce: 2(n-1)/n;  all-gather, reduce-scatter: (n-1)/n.
//  * every benchmark checks its data and reports the number of wrong elements ("wrong" column);
//    a benchmark with wrong > 0 exits 1.
//  * every benchmark prints its result next to a baseline measured in the same run, with the ratio
//    (value / baseline) of the medians.
// Collective over `comm`; rank 0 prints.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace mobula::perf {

enum class Pattern { kPointToPoint, kBroadcast, kIo, kAllReduce, kAllGather };

// Fatal benchmark error: "BENCH: msg" on stderr, then the whole job ends.
[[noreturn]] inline void die(const char* bench, const std::string& msg) {
  std::fprintf(stderr, "%s: %s\n", bench, msg.c_str());
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::exit(1);
}

inline double bus_factor(Pattern p, int n) {
  switch (p) {
    case Pattern::kAllReduce:
      return n > 1 ? 2.0 * (n - 1) / n : 1.0;
    case Pattern::kAllGather:
      return n > 1 ? static_cast<double>(n - 1) / n : 1.0;
    default:
      return 1.0;
  }
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// Runs f() warmup + iters times; returns the per-iteration max-over-ranks seconds of the timed ones.
template <class F>
std::vector<double> time_iterations(MPI_Comm comm, int warmup, int iters, F&& f) {
  std::vector<double> out;
  for (int i = 0; i < warmup + iters; ++i) {
    MPI_Barrier(comm);
    const double t0 = MPI_Wtime();
    f();
    double dt = MPI_Wtime() - t0, worst = 0;
    MPI_Allreduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, comm);
    if (i >= warmup) out.push_back(worst);
  }
  return out;
}

struct Row {
  std::string name;
  double bytes = 0;       // payload of one iteration
  std::vector<double> s;  // timed iterations
  Pattern pattern = Pattern::kIo;
  long long wrong = 0;
};

inline void print_header() {
  std::printf("%-28s %12s %11s %9s %9s %7s %8s\n", "benchmark", "bytes", "median_ms", "algbw", "busbw", "wrong",
              "ratio");
  std::printf("%-28s %12s %11s %9s %9s %7s %8s\n", "", "", "", "GB/s", "GB/s", "", "vs base");
}

// Prints `r`; ratio is r's algbw over baseline's (time ratio inverted), "-" for the baseline itself.
inline void print_row(const Row& r, int nranks, const Row* baseline) {
  const double t = median(r.s);
  const double alg = t > 0 ? r.bytes / t / 1e9 : 0;
  char ratio[32] = "-";
  if (baseline) {
    const double tb = median(baseline->s);
    if (t > 0) std::snprintf(ratio, sizeof ratio, "%.2f", tb / t);
  }
  std::printf("%-28s %12.0f %11.3f %9.3f %9.3f %7lld %8s\n", r.name.c_str(), r.bytes, t * 1e3, alg,
              alg * bus_factor(r.pattern, nranks), r.wrong, ratio);
}

// `--NAME VALUE` anywhere in argv: removed from argv (the positional arguments keep their places),
// its value returned; `fallback` when absent.
inline std::string take_flag(int* argc, char** argv, const char* name, std::string fallback = "") {
  for (int i = 1; i + 1 < *argc; ++i) {
    if (std::strcmp(argv[i], name) != 0) continue;
    std::string v = argv[i + 1];
    for (int j = i; j + 2 <= *argc; ++j) argv[j] = argv[j + 2];
    *argc -= 2;
    return v;
  }
  return fallback;
}

// Machine-readable results for the scaling study's cost model (perf/scaling/cost_model.h): with a
// path, one "bench,backend,op,ranks,bytes,median_s,wrong" line per row is appended (the header when
// the file is new). Rank 0 only; a file that cannot be written ends the benchmark.
class CsvLog {
 public:
  CsvLog(const char* bench, std::string path) : bench_(bench), path_(std::move(path)) {}
  bool on() const { return !path_.empty(); }
  void row(const std::string& backend, const std::string& op, int ranks, const Row& r) const {
    if (path_.empty()) return;
    FILE* f = std::fopen(path_.c_str(), "a");
    if (!f) die(bench_, path_ + ": " + std::strerror(errno));
    if (std::ftell(f) == 0) std::fputs("bench,backend,op,ranks,bytes,median_s,wrong\n", f);
    std::fprintf(f, "%s,%s,%s,%d,%.0f,%.9g,%lld\n", bench_, backend.c_str(), op.c_str(), ranks, r.bytes, median(r.s),
                 r.wrong);
    if (std::fclose(f) != 0) die(bench_, path_ + ": " + std::strerror(errno));
  }

 private:
  const char* bench_;
  std::string path_;
};

}  // namespace mobula::perf
