// Checkpoint save and restore (io/checkpoint.h: collective HDF5, checksums, vote, fsync, rename,
// `latest`) against the same bytes written sequentially by one process with write + fsync (what
// `dd conv=fsync` does) and read back with read, in the same run and directory. The state is three
// flat buffers (params, adam_m, adam_v) replicated on every rank, like the data-parallel trainers.
// Restore reads come from the page cache in both rows (no cache drop without root rights).
// Asynchronous saves: the stall (the staging copy) against the synchronous save time.
//
//   mpirun -np 2 perf/bench_checkpoint [MiB-per-buffer=64] [iters=5] [dir=.] [--kib KiB-per-buffer] [--csv FILE]
//
// --kib: the buffer size in KiB instead (small checkpoints: the scaling study's latency term);
// --csv: one machine-readable line per row (perf/harness.h CsvLog) for the scaling study's model.
#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/runtime/environment.h"
#include "io/checkpoint.h"
#include "perf/harness.h"

using namespace mobula;

namespace {

[[noreturn]] void die(const std::string& msg) {
  perf::die("bench_checkpoint", msg);
}

}  // namespace

int main(int argc, char** argv) {
  auto env = Environment::init(&argc, &argv);
  if (!env) die(env.status().message());
  const int rank = (*env)->rank(), size = (*env)->size();
  const std::string kib = perf::take_flag(&argc, argv, "--kib");
  const perf::CsvLog csv("bench_checkpoint", perf::take_flag(&argc, argv, "--csv"));
  const size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 64;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 5;
  const std::string dir = (argc > 3 ? std::string(argv[3]) : std::string(".")) + "/bench_checkpoint.d";
  const size_t n = (kib.empty() ? mib * (1 << 20) : std::strtoul(kib.c_str(), nullptr, 10) * 1024) / sizeof(float);
  if (n == 0) die("the buffer size must be at least 4 bytes (MiB-per-buffer or --kib)");
  std::vector<std::vector<float>> state(3, std::vector<float>(n)), back(3, std::vector<float>(n));
  for (size_t b = 0; b < 3; ++b)
    for (size_t i = 0; i < n; ++i) state[b][i] = static_cast<float>((b * 7919 + i) % 16777216) * 0.5f;
  const char* names[3] = {"params", "adam_m", "adam_v"};
  const double bytes = 3.0 * static_cast<double>(n * sizeof(float));
  if (rank == 0) std::filesystem::create_directories(dir);
  MPI_Barrier(MPI_COMM_WORLD);

  int64_t step = 0;
  perf::Row save{"checkpoint save", bytes, {}, perf::Pattern::kIo, 0};
  save.s = perf::time_iterations(MPI_COMM_WORLD, 1, iters, [&] {
    io::CheckpointState c;
    c.step = ++step;
    for (size_t b = 0; b < 3; ++b) c.buffers.push_back({names[b], state[b]});
    if (Status s = io::save_checkpoint(dir, c, 1, MPI_COMM_WORLD); !s) die(s.message());
  });
  perf::Row load{"checkpoint restore", bytes, {}, perf::Pattern::kIo, 0};
  load.s = perf::time_iterations(MPI_COMM_WORLD, 1, iters, [&] {
    io::CheckpointState c;
    for (size_t b = 0; b < 3; ++b) c.buffers.push_back({names[b], back[b]});
    auto found = io::load_latest_checkpoint(dir, &c, MPI_COMM_WORLD, nullptr);
    if (!found || !*found) die("restore found nothing: " + (found ? std::string() : found.status().message()));
  });
  long long wrong = 0;
  for (size_t b = 0; b < 3; ++b)
    for (size_t i = 0; i < n; ++i) wrong += back[b][i] != state[b][i];
  MPI_Allreduce(&wrong, &load.wrong, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);

  // Asynchronous saves (checkpoint.async): rank 0 stages (stage() returns at once, a background
  // thread copies, then writes and publishes). Training is blocked from stage() until the copy is
  // done if it updates the weights at once (worst case: wait_staged() right after stage()), or only
  // for what is left of the copy after a forward/backward pass (here: 50 ms of sleep). Each
  // iteration waits for the durable save outside the timed part, as a step longer than the save.
  std::vector<double> stall, stall_fb, durable;
  {
    io::AsyncCheckpointer ck(dir, 1);
    for (int it = 0; it < 2 * iters + 1; ++it) {
      MPI_Barrier(MPI_COMM_WORLD);
      if (rank != 0) continue;
      io::CheckpointState c;
      c.step = ++step;
      for (size_t b = 0; b < 3; ++b) c.buffers.push_back({names[b], state[b]});
      const bool with_fb = it > iters;
      const double t0 = MPI_Wtime();
      if (Status s = ck.stage(c); !s) die(s.message());
      double blocked = MPI_Wtime() - t0;
      if (with_fb) usleep(50 * 1000);
      blocked += ck.wait_staged();
      if (Status s = ck.wait(); !s) die(s.message());
      if (it == 0) continue;  // warm-up: faults the staging pages in
      (with_fb ? stall_fb : stall).push_back(blocked);
      if (!with_fb) durable.push_back(MPI_Wtime() - t0);
    }
  }
  const std::string raw = dir + "/raw.bin";
  perf::Row wrow{"write+fsync 1 proc (dd)", bytes, {}, perf::Pattern::kIo, 0};
  wrow.s = perf::time_iterations(MPI_COMM_WORLD, 1, iters, [&] {
    if (rank != 0) return;
    const int fd = ::open(raw.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open " + raw);
    for (size_t b = 0; b < 3; ++b) {
      const char* p = reinterpret_cast<const char*>(state[b].data());
      for (size_t left = n * sizeof(float); left > 0;) {
        const ssize_t w = ::write(fd, p, left);
        if (w <= 0) die("write " + raw);
        p += w, left -= static_cast<size_t>(w);
      }
    }
    if (::fsync(fd) != 0) die("fsync " + raw);
    ::close(fd);
  });
  perf::Row rrow{"read 1 proc (baseline)", bytes, {}, perf::Pattern::kIo, 0};
  rrow.s = perf::time_iterations(MPI_COMM_WORLD, 1, iters, [&] {
    if (rank != 0) return;
    const int fd = ::open(raw.c_str(), O_RDONLY);
    if (fd < 0) die("open " + raw);
    for (size_t b = 0; b < 3; ++b) {
      char* p = reinterpret_cast<char*>(back[b].data());
      for (size_t left = n * sizeof(float); left > 0;) {
        const ssize_t r = ::read(fd, p, left);
        if (r <= 0) die("read " + raw);
        p += r, left -= static_cast<size_t>(r);
      }
    }
    ::close(fd);
  });
  if (rank == 0) {
    std::printf("# bench_checkpoint: %d ranks, 3 buffers x %zu KiB (replicated), %d iterations (median), dir %s\n",
                size, n * sizeof(float) / 1024, iters, dir.c_str());
    perf::print_header();
    perf::print_row(wrow, size, nullptr);
    perf::print_row(save, size, &wrow);
    perf::print_row(rrow, size, nullptr);
    perf::print_row(load, size, &rrow);
    csv.row("dd", "write_fsync", size, wrow);
    csv.row("hdf5", "checkpoint_save", size, save);
    const double st = perf::median(stall), sf = perf::median(stall_fb), du = perf::median(durable),
                 sync = perf::median(save.s);
    std::printf("async save: durable after %.1f ms; sync save %.1f ms\n", du * 1e3, sync * 1e3);
    std::printf("async stall, update right after the save  %8.2f ms = %.3f of the sync save (target <= 0.10)\n",
                st * 1e3, st / sync);
    std::printf("async stall, update after a 50 ms fwd/bwd %8.2f ms = %.3f of the sync save\n", sf * 1e3, sf / sync);
    std::filesystem::remove_all(dir);
  }
  return load.wrong ? 1 : 0;
}
