// Direct-transport benchmark (nccl-tests style, perf/harness.h): per operation and backend the
// size, time, algbw, busbw and a data check, next to raw MPI of the same bytes measured in the same
// run (MPI_Send/Recv, MPI_Bcast, MPI_Allreduce) and single-core memcpy.
//
//   mpirun -np 4 perf/transport/bench_transport [max-MiB=256] [iters=5] [backends=mpi,ucx] [sections=all]
//                [--sizes KiB,KiB,...] [--csv FILE]
//
// sections: comma-separated subset of memcpy,p2p,get,bcast,allreduce,sync,shardsum (all: every one).
// Sizes: 4, 64, 256, 1024 MiB up to max-MiB (all-reduce up to 256 MiB; weight sync from 64 MiB), or
// with --sizes exactly those (KiB; every section at every size). --csv appends one machine-readable
// line per row (perf/harness.h CsvLog): the scaling study fits its alpha-beta model on them.
//
// shardsum: sum_shards (core/transport/shard_sum.h, the trainers' gradient sum) over all ranks with
// 8 shards, against MPI_Allreduce of the same bytes. The shards' values are precomputed, so a
// value() call is one copy (as a gradient already computed would be).
//
// Weight sync: the first half of the ranks are trainers, the rest rollouts; the baselines are
// MPI_Bcast of the same bytes from rank 0 over all ranks (what a rank-0 broadcast does) and over
// {trainer 0} + rollouts. Object get: rank 1 pulls an object owned by rank 0; the baseline is
// MPI_Send/MPI_Recv of the same bytes between the same ranks.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "core/objects/object_store.h"
#include "core/runtime/environment.h"
#include "core/transport/gradients.h"
#include "core/transport/shard_sum.h"
#include "core/transport/transport.h"
#include "core/transport/weight_sync.h"
#include "perf/harness.h"

using namespace mobula;

namespace {

[[noreturn]] void die(const std::string& msg) {
  perf::die("bench_transport", msg);
}
void check(const Status& s) {
  if (!s) die(s.message());
}

int g_rank = 0, g_size = 1, g_iters = 5;
long long g_wrong_total = 0;
bool g_exact_sizes = false;  // --sizes: every section at every size
perf::CsvLog g_csv("bench_transport", "");

void fill(std::vector<float>& v, int salt) {
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<float>((i * 2654435761u + static_cast<size_t>(salt)) % 8388607);
}
long long count_wrong(const std::vector<float>& v, int salt) {
  long long w = 0;
  for (size_t i = 0; i < v.size(); ++i)
    w += v[i] != static_cast<float>((i * 2654435761u + static_cast<size_t>(salt)) % 8388607);
  return w;
}
long long sum_wrong(long long mine) {
  long long all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  g_wrong_total += all;
  return all;
}

void print(const perf::Row& r, int n, const perf::Row* base) {
  if (g_rank == 0) perf::print_row(r, n, base);
}
// Prints the row and logs it as (backend, op) with every rank taking part.
void report(const perf::Row& r, int n, const perf::Row* base, const std::string& backend, const char* op) {
  print(r, n, base);
  if (g_rank == 0) g_csv.row(backend, op, n, r);
}

std::string mib(size_t bytes) {
  std::ostringstream o;
  if (bytes >= (size_t{1} << 20))
    o << (bytes >> 20) << "MiB";
  else
    o << (bytes >> 10) << "KiB";
  return o.str();
}

void bench_memcpy(size_t bytes) {
  std::vector<char> a(bytes, 1), b(bytes, 0);
  perf::Row r{"memcpy 1 core " + mib(bytes), static_cast<double>(bytes), {}, perf::Pattern::kPointToPoint, 0};
  r.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters, [&] {
    if (g_rank == 0) std::memcpy(b.data(), a.data(), bytes);
  });
  r.wrong = sum_wrong(g_rank == 0 ? std::memcmp(a.data(), b.data(), bytes) != 0 : 0);
  report(r, 1, nullptr, "memcpy", "copy");
}

void bench_p2p(const std::vector<Transport*>& ts, size_t bytes) {
  std::vector<float> buf(bytes / 4);
  perf::Row base{"MPI_Send/Recv " + mib(bytes), static_cast<double>(bytes), {}, perf::Pattern::kPointToPoint, 0};
  base.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters, [&] {
    if (g_rank == 0) fill(buf, 1), MPI_Send(buf.data(), static_cast<int>(bytes), MPI_BYTE, 1, 0, MPI_COMM_WORLD);
    if (g_rank == 1) MPI_Recv(buf.data(), static_cast<int>(bytes), MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  });
  base.wrong = sum_wrong(g_rank == 1 ? count_wrong(buf, 1) : 0);
  report(base, 2, nullptr, "MPI", "p2p");
  for (Transport* t : ts) {
    std::fill(buf.begin(), buf.end(), 0.0f);
    perf::Row r{std::string(t->name()) + " send/recv " + mib(bytes),
                static_cast<double>(bytes),
                {},
                perf::Pattern::kPointToPoint,
                0};
    if (g_rank == 0) fill(buf, 2);
    r.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters, [&] {
      if (g_rank == 0) check(t->send(host_buffer(std::span<float>(buf)), 1));
      if (g_rank == 1) check(t->recv(host_buffer(std::span<float>(buf)), 0));
    });
    r.wrong = sum_wrong(g_rank == 1 ? count_wrong(buf, 2) : 0);
    report(r, 2, &base, t->name(), "p2p");
  }
}

void bench_bcast(const std::vector<Transport*>& ts, size_t bytes) {
  std::vector<float> buf(bytes / 4);
  perf::Row base{"MPI_Bcast " + mib(bytes), static_cast<double>(bytes), {}, perf::Pattern::kBroadcast, 0};
  if (g_rank == 0) fill(buf, 3);
  base.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters,
                                 [&] { MPI_Bcast(buf.data(), static_cast<int>(bytes), MPI_BYTE, 0, MPI_COMM_WORLD); });
  base.wrong = sum_wrong(count_wrong(buf, 3));
  report(base, g_size, nullptr, "MPI", "bcast");
  for (Transport* t : ts) {
    if (g_rank != 0) std::fill(buf.begin(), buf.end(), 0.0f);
    perf::Row r{std::string(t->name()) + " broadcast " + mib(bytes),
                static_cast<double>(bytes),
                {},
                perf::Pattern::kBroadcast,
                0};
    r.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters,
                                [&] { check(t->broadcast(host_buffer(std::span<float>(buf)), 0)); });
    r.wrong = sum_wrong(count_wrong(buf, 3));
    report(r, g_size, &base, t->name(), "bcast");
  }
}

void bench_allreduce(const std::vector<Transport*>& ts, size_t bytes) {
  const size_t n = bytes / 4;
  std::vector<float> in(n), buf(n);
  // Small integers: every summation order gives the same exact result, so the check is exact.
  for (size_t i = 0; i < n; ++i) in[i] = static_cast<float>((i + static_cast<size_t>(g_rank)) % 1024);
  auto wrong = [&] {
    long long w = 0;
    for (size_t i = 0; i < n; ++i) {
      float e = 0;
      for (int r = 0; r < g_size; ++r) e += static_cast<float>((i + static_cast<size_t>(r)) % 1024);
      w += buf[i] != e;
    }
    return w;
  };
  perf::Row base{"MPI_Allreduce " + mib(bytes), static_cast<double>(bytes), {}, perf::Pattern::kAllReduce, 0};
  base.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters, [&] {
    MPI_Allreduce(in.data(), buf.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  });
  base.wrong = sum_wrong(wrong());
  report(base, g_size, nullptr, "MPI", "allreduce");
  for (Transport* t : ts) {
    perf::Row r{std::string(t->name()) + " allreduce " + mib(bytes),
                static_cast<double>(bytes),
                {},
                perf::Pattern::kAllReduce,
                0};
    r.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters, [&] {
      std::memcpy(buf.data(), in.data(), bytes);
      check(t->allreduce(host_buffer(std::span<float>(buf)), ReduceOp::kSum));
    });
    r.wrong = sum_wrong(wrong());
    report(r, g_size, &base, t->name(), "allreduce");
    perf::Row rb{std::string(t->name()) + " allreduce 4MiB-bkt " + mib(bytes),
                 static_cast<double>(bytes),
                 {},
                 perf::Pattern::kAllReduce,
                 0};
    rb.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters, [&] {
      std::memcpy(buf.data(), in.data(), bytes);
      check(allreduce_bucketed(*t, host_buffer(std::span<float>(buf)), ReduceOp::kSum, size_t{4} << 20));
    });
    rb.wrong = sum_wrong(wrong());
    report(rb, g_size, &base, t->name(), "allreduce_bucketed");
  }
}

void bench_weight_sync(const std::vector<Transport*>& ts, size_t bytes) {
  const int trainers = g_size / 2;
  const bool trainer = g_rank < trainers;
  WeightGroups g;
  for (int r = 0; r < g_size; ++r) (r < trainers ? g.trainers : g.rollouts).push_back(r);
  const size_t n = bytes / 4;
  std::vector<float> params(trainer ? n : 0), bc(n);
  if (trainer) fill(params, 4);
  // Baseline 1: rank-0 broadcast over every rank.
  perf::Row base{"MPI_Bcast all " + mib(bytes), static_cast<double>(bytes), {}, perf::Pattern::kBroadcast, 0};
  if (g_rank == 0) fill(bc, 4);
  base.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters,
                                 [&] { MPI_Bcast(bc.data(), static_cast<int>(bytes), MPI_BYTE, 0, MPI_COMM_WORLD); });
  base.wrong = sum_wrong(count_wrong(bc, 4));
  report(base, g_size, nullptr, "MPI", "bcast_all");
  // Baseline 2: trainer 0 + rollouts only.
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, (g_rank == 0 || !trainer) ? 0 : MPI_UNDEFINED, g_rank, &sub);
  perf::Row base2{"MPI_Bcast t0+rollouts " + mib(bytes), static_cast<double>(bytes), {}, perf::Pattern::kBroadcast, 0};
  base2.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters, [&] {
    if (sub != MPI_COMM_NULL) MPI_Bcast(bc.data(), static_cast<int>(bytes), MPI_BYTE, 0, sub);
  });
  base2.wrong = sum_wrong(count_wrong(bc, 4));
  print(base2, g_size, &base);
  if (sub != MPI_COMM_NULL) MPI_Comm_free(&sub);
  std::vector<float>().swap(bc);
  for (Transport* t : ts) {
    WeightStore store(trainer ? 0 : n);
    WeightSyncOptions opt;
    opt.bucket_bytes = size_t{16} << 20;
    int64_t version = 0;
    perf::Row r{std::string(t->name()) + " weight sync " + mib(bytes),
                static_cast<double>(bytes),
                {},
                perf::Pattern::kBroadcast,
                0};
    r.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters, [&] {
      ++version;
      check(sync_weights(*t, g, params, trainer ? nullptr : &store, version, opt));
    });
    long long w = 0;
    if (!trainer) {
      auto cur = store.current();
      w = cur->version == version ? count_wrong(cur->params, 4) : static_cast<long long>(n);
    }
    r.wrong = sum_wrong(w);
    report(r, g_size, &base, t->name(), "sync");
    if (g_rank == 0) {
      const double t_ws = perf::median(r.s), t_b = perf::median(base.s);
      std::printf("%-28s %12s time vs MPI_Bcast all: %.3fx (target <= 1.10x), vs t0+rollouts: %.3fx\n", "", "",
                  t_ws / t_b, t_ws / perf::median(base2.s));
    }
  }
}

// Shard s's value: small integers, so every summation order gives the same exact total.
float shard_value(int s, size_t i) {
  return static_cast<float>((i + static_cast<size_t>(s) * 7) % 64);
}

void bench_shardsum(const std::vector<Transport*>& ts, size_t bytes) {
  constexpr int kShards = 8;
  const size_t n = bytes / 4;
  std::vector<float> in(n), out(n);
  for (size_t i = 0; i < n; ++i) in[i] = shard_value(g_rank, i);
  perf::Row base{"MPI_Allreduce " + mib(bytes), static_cast<double>(bytes), {}, perf::Pattern::kAllReduce, 0};
  base.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters, [&] {
    MPI_Allreduce(in.data(), out.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  });
  print(base, g_size, nullptr);
  const ShardRange mine = shards_of(g_rank, g_size, kShards);
  std::vector<std::vector<float>> values(static_cast<size_t>(mine.size()), std::vector<float>(n));
  for (int s = mine.first; s < mine.end; ++s)
    for (size_t i = 0; i < n; ++i) values[static_cast<size_t>(s - mine.first)][i] = shard_value(s, i);
  const ShardValueFn<float> value = [&](int s, std::span<float> buf) {
    const auto& v = values[static_cast<size_t>(s - mine.first)];
    std::copy(v.begin(), v.end(), buf.begin());
    return Status::ok();
  };
  for (Transport* t : ts) {
    perf::Row r{std::string(t->name()) + " shard sum " + mib(bytes),
                static_cast<double>(bytes),
                {},
                perf::Pattern::kAllReduce,
                0};
    r.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters,
                                [&] { check(sum_shards<float>(*t, kShards, value, std::span<float>(out))); });
    long long w = 0;
    for (size_t i = 0; i < n; ++i) {
      float e = 0;
      for (int s = 0; s < kShards; ++s) e += shard_value(s, i);
      w += out[i] != e;
    }
    r.wrong = sum_wrong(w);
    report(r, g_size, &base, t->name(), "shardsum");
  }
}

void bench_object_get(size_t bytes) {
  auto s = ObjectStore::create(MPI_COMM_WORLD);
  if (!s) die(s.status().message());
  ObjectStore& store = **s;
  std::vector<float> buf(bytes / 4), out(bytes / 4);
  perf::Row base{"MPI_Send/Recv " + mib(bytes), static_cast<double>(bytes), {}, perf::Pattern::kPointToPoint, 0};
  if (g_rank == 0) fill(buf, 5);
  base.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters, [&] {
    if (g_rank == 0) MPI_Send(buf.data(), static_cast<int>(bytes), MPI_BYTE, 1, 0, MPI_COMM_WORLD);
    if (g_rank == 1) MPI_Recv(out.data(), static_cast<int>(bytes), MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  });
  base.wrong = sum_wrong(g_rank == 1 ? count_wrong(out, 5) : 0);
  print(base, 2, nullptr);
  // Rank 0 puts one object (borrowing `buf`); the ref travels to rank 1 as bytes.
  std::vector<std::byte> refbytes;
  if (g_rank == 0) {
    auto ref =
        store.put({Tensor::borrow(host_buffer(std::span<float>(buf)), {static_cast<int64_t>(buf.size())})}, 1 << 30);
    if (!ref) die(ref.status().message());
    refbytes = ref->serialize();
  }
  int len = static_cast<int>(refbytes.size());
  MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD);
  refbytes.resize(static_cast<size_t>(len));
  MPI_Bcast(refbytes.data(), len, MPI_BYTE, 0, MPI_COMM_WORLD);
  auto ref = ObjectRef::parse(refbytes);
  if (!ref) die(ref.status().message());
  std::fill(out.begin(), out.end(), 0.0f);
  perf::Row r{"object get " + mib(bytes), static_cast<double>(bytes), {}, perf::Pattern::kPointToPoint, 0};
  const Buffer dst = host_buffer(std::span<float>(out));
  r.s = perf::time_iterations(MPI_COMM_WORLD, 1, g_iters, [&] {
    if (g_rank == 1) check(store.get_into(*ref, std::span<const Buffer>(&dst, 1)));
  });
  r.wrong = sum_wrong(g_rank == 1 ? count_wrong(out, 5) : 0);
  print(r, 2, &base);
  if (g_rank == 0) {
    check(store.free(*ref));
    std::printf("%-28s %12s bandwidth vs MPI_Send/Recv: %.1f%% (target >= 90%%)\n", "", "",
                100.0 * perf::median(base.s) / perf::median(r.s));
  }
  check(store.shutdown());
}

}  // namespace

int main(int argc, char** argv) {
  auto env = Environment::init(&argc, &argv);
  if (!env) die(env.status().message());
  g_rank = (*env)->rank();
  g_size = (*env)->size();
  const std::string sizes_kib = perf::take_flag(&argc, argv, "--sizes");
  g_csv = perf::CsvLog("bench_transport", perf::take_flag(&argc, argv, "--csv"));
  const size_t max_mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 256;
  g_iters = argc > 2 ? std::atoi(argv[2]) : 5;
  const std::string backends = argc > 3 ? argv[3] : "mpi,ucx";
  const std::string sections = argc > 4 ? argv[4] : "all";
  auto on = [&](const char* s) {
    return sections == "all" || ("," + sections + ",").find(std::string(",") + s + ",") != std::string::npos;
  };
  if (g_size < 2) die("needs at least 2 ranks (4 for the 2 trainers -> 2 rollouts weight sync)");
  std::vector<std::unique_ptr<Transport>> owned;
  std::vector<Transport*> ts;
  std::stringstream ss(backends);
  for (std::string b; std::getline(ss, b, ',');) {
    auto t = make_transport(b, MPI_COMM_WORLD);
    if (!t) die(t.status().message());
    ts.push_back(t->get());
    owned.push_back(std::move(*t));
  }
  std::vector<size_t> sizes;
  for (size_t m : {size_t{4}, size_t{64}, size_t{256}, size_t{1024}})
    if (m <= max_mib) sizes.push_back(m << 20);
  if (!sizes_kib.empty()) {
    sizes.clear();
    g_exact_sizes = true;
    std::stringstream list(sizes_kib);
    for (std::string k; std::getline(list, k, ',');) {
      char* end = nullptr;
      const unsigned long kib = std::strtoul(k.c_str(), &end, 10);
      if (kib == 0 || !end || *end) die("--sizes " + sizes_kib + ": '" + k + "' is not a positive number of KiB");
      sizes.push_back(size_t{kib} << 10);
    }
  }
  if (g_rank == 0) {
    std::printf("# bench_transport: %d ranks, %d iterations (median), backends %s, up to %zu MiB, sections %s\n",
                g_size, g_iters, backends.c_str(), max_mib, sections.c_str());
    perf::print_header();
  }
  for (size_t b : sizes)
    if (on("memcpy")) bench_memcpy(b);
  for (size_t b : sizes)
    if (on("p2p")) bench_p2p(ts, b);
  for (size_t b : sizes)
    if (on("get")) bench_object_get(b);
  for (size_t b : sizes)
    if (on("bcast")) bench_bcast(ts, b);
  for (size_t b : sizes)
    if (on("allreduce") && (g_exact_sizes || b <= (size_t{256} << 20))) bench_allreduce(ts, b);
  for (size_t b : sizes)
    if (on("sync") && (g_exact_sizes || b >= (size_t{64} << 20))) bench_weight_sync(ts, b);
  for (size_t b : sizes)
    if (on("shardsum")) bench_shardsum(ts, b);
  owned.clear();
  return g_wrong_total ? 1 : 0;
}
