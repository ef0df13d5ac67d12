// Worker for transport_fault_test: 4 ranks under mpiexec; one rank SIGKILLs itself in the middle of
// a transfer and the survivors must report the failure (one "SURVIVOR" line each) instead of
// hanging. Usage: fault_worker sync|get mpi|ucx
//   sync: trainers {0,1} -> rollouts {2,3}, 256 MiB in 1 MiB buckets; trainer 1 dies mid-sync.
//   get:  rank 1 pulls 256 MiB objects from rank 0 in a loop; rank 0 dies mid-transfer.
// Survivors print their error and exit 3 without MPI_Finalize (a dead peer can hang it).
#include <mpi.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/objects/object_store.h"
#include "core/runtime/environment.h"
#include "core/transport/weight_sync.h"

using namespace mobula;
using namespace std::chrono_literals;

namespace {

[[noreturn]] void survivor(int rank, const Status& s, double secs) {
  std::printf("SURVIVOR rank %d failed after %.2f s: %s\n", rank, secs, s.message().c_str());
  std::fflush(stdout);
  _exit(3);
}

void kill_me_after(std::chrono::milliseconds delay, int rank) {
  std::thread([delay, rank] {
    std::this_thread::sleep_for(delay);
    std::printf("KILLING rank %d\n", rank);
    std::fflush(stdout);
    raise(SIGKILL);
  }).detach();
}

}  // namespace

int main(int argc, char** argv) {
  auto env = Environment::init(&argc, &argv);
  if (!env) {
    std::fprintf(stderr, "%s\n", env.status().message().c_str());
    return 1;
  }
  const std::string mode = argc > 1 ? argv[1] : "sync", backend = argc > 2 ? argv[2] : "mpi";
  const int rank = (*env)->rank();
  if ((*env)->size() != 4) {
    std::fprintf(stderr, "fault_worker needs 4 ranks\n");
    return 1;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto secs = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  if (mode == "sync") {
    auto t = make_transport(backend, MPI_COMM_WORLD);
    if (!t) survivor(rank, t.status(), secs());
    WeightGroups g{{0, 1}, {2, 3}};
    const size_t n = size_t{64} << 20;  // 256 MiB of float
    std::vector<float> params(rank < 2 ? n : 0, 1.0f);
    WeightStore store(rank < 2 ? 0 : n);
    WeightSyncOptions opt;
    opt.bucket_bytes = size_t{1} << 20;
    opt.timeout = 3s;
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 1) kill_me_after(30ms, rank);
    for (int64_t v = 1;; ++v) {  // until somebody dies
      Status s = sync_weights(**t, g, params, rank < 2 ? nullptr : &store, v, opt);
      if (!s) survivor(rank, s, secs());
      if (secs() > 60) break;
    }
  } else {
    ObjectStoreOptions o;
    o.timeout = 3s;
    auto st = ObjectStore::create(MPI_COMM_WORLD, o);
    if (!st) survivor(rank, st.status(), secs());
    ObjectStore& store = **st;
    std::vector<std::byte> refbytes(256);
    int len = 0;
    if (rank == 0) {
      auto ref = store.put({Tensor::from_vector(std::vector<float>(size_t{64} << 20, 2.0f), {64 << 20})}, 1 << 30);
      if (!ref) survivor(rank, ref.status(), secs());
      auto b = ref->serialize();
      len = static_cast<int>(b.size());
      std::memcpy(refbytes.data(), b.data(), b.size());
    }
    MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Bcast(refbytes.data(), len, MPI_BYTE, 0, MPI_COMM_WORLD);
    auto ref = ObjectRef::parse(std::span<const std::byte>(refbytes.data(), static_cast<size_t>(len)));
    if (!ref) survivor(rank, ref.status(), secs());
    if (rank == 0) kill_me_after(50ms, rank);
    for (;;) {
      if (rank != 0) {
        auto got = store.get(*ref);
        if (!got) survivor(rank, got.status(), secs());
      } else {
        std::this_thread::sleep_for(10ms);
      }
      if (secs() > 60) break;
    }
  }
  std::printf("rank %d: nobody died within 60 s\n", rank);
  return 4;
}
