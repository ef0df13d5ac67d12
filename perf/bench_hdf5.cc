// Collective parallel-HDF5 shard write + fsync (what a checkpoint does, through io/hdf5.h) against
// the same bytes written with plain pwrite at each rank's offset into one file + fsync, in the same
// run. Then both files are read back and checked element by element.
//
//   mpirun -np 2 perf/bench_hdf5 [MiB-per-rank=64] [iters=5] [dir=.]
#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/runtime/environment.h"
#include "io/hdf5.h"
#include "perf/harness.h"

using namespace mobula;

namespace {

[[noreturn]] void die(const std::string& msg) {
  perf::die("bench_hdf5", msg);
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0 || ::fsync(fd) != 0) die("fsync " + path + " failed");
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  auto env = Environment::init(&argc, &argv);
  if (!env) die(env.status().message());
  const int rank = (*env)->rank(), size = (*env)->size();
  const size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 64;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 5;
  const std::string dir = argc > 3 ? argv[3] : ".";
  const size_t n = mib * (1 << 20) / sizeof(float);
  std::vector<float> mine(n), back(n);
  for (size_t i = 0; i < n; ++i) mine[i] = static_cast<float>((static_cast<size_t>(rank) * n + i) % 16777216);
  const double bytes = static_cast<double>(n * sizeof(float)) * size;
  const std::string h5 = dir + "/bench_hdf5.h5", raw = dir + "/bench_hdf5.raw";

  perf::Row h5row{"hdf5 collective write+fsync", bytes, {}, perf::Pattern::kIo, 0};
  h5row.s = perf::time_iterations(MPI_COMM_WORLD, 1, iters, [&] {
    auto f = io::H5File::create(h5, MPI_COMM_WORLD);
    if (!f) die(f.status().message());
    if (Status s = f->write_slices("params", mine, MPI_COMM_WORLD); !s) die(s.message());
    if (Status s = f->close(); !s) die(s.message());
    if (rank == 0) fsync_path(h5);
  });

  perf::Row rawrow{"pwrite+fsync (baseline)", bytes, {}, perf::Pattern::kIo, 0};
  rawrow.s = perf::time_iterations(MPI_COMM_WORLD, 1, iters, [&] {
    const int fd = ::open(raw.c_str(), O_WRONLY | O_CREAT, 0644);
    if (fd < 0) die("open " + raw);
    const char* p = reinterpret_cast<const char*>(mine.data());
    size_t left = n * sizeof(float);
    off_t off = static_cast<off_t>(static_cast<size_t>(rank) * n * sizeof(float));
    while (left > 0) {
      const ssize_t w = ::pwrite(fd, p, left, off);
      if (w <= 0) die("pwrite " + raw);
      p += w, left -= static_cast<size_t>(w), off += w;
    }
    if (::fsync(fd) != 0) die("fsync " + raw);
    ::close(fd);
  });

  // Data checks.
  {
    auto f = io::H5File::open(h5, MPI_COMM_WORLD);
    if (!f) die(f.status().message());
    if (Status s = f->read_slices("params", back, MPI_COMM_WORLD); !s) die(s.message());
    long long wrong = 0;
    for (size_t i = 0; i < n; ++i) wrong += back[i] != mine[i];
    MPI_Allreduce(&wrong, &h5row.wrong, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  }
  {
    const int fd = ::open(raw.c_str(), O_RDONLY);
    if (fd < 0) die("open " + raw);
    const ssize_t got =
        ::pread(fd, back.data(), n * sizeof(float), static_cast<off_t>(static_cast<size_t>(rank) * n * sizeof(float)));
    ::close(fd);
    long long wrong = got == static_cast<ssize_t>(n * sizeof(float)) ? 0 : static_cast<long long>(n);
    for (size_t i = 0; i < n && !wrong; ++i) wrong += back[i] != mine[i];
    MPI_Allreduce(&wrong, &rawrow.wrong, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  }
  if (rank == 0) {
    std::printf("# bench_hdf5: %d ranks x %zu MiB, %d iterations (median), dir %s\n", size, mib, iters, dir.c_str());
    perf::print_header();
    perf::print_row(rawrow, size, nullptr);
    perf::print_row(h5row, size, &rawrow);
    std::remove(h5.c_str());
    std::remove(raw.c_str());
  }
  return (h5row.wrong || rawrow.wrong) ? 1 : 0;
}
