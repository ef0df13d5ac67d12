// core/metrics at np = 1, 3: the aggregation of every rank's registry at rank 0, served over HTTP
// and read back by an independent parser (prometheus_client, tests/support/check_prometheus.py).
// The registry itself: tests/unit/metrics_registry_test.cc.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>
#include <string>

#include "core/metrics/aggregate.h"
#include "core/metrics/registry.h"
#include "tests/support/mpi_world.h"

namespace mobula::metrics {
namespace {

using test::world_rank;
using test::world_size;

// Every rank records values it can predict for every other rank; rank 0 gathers them at "step
// boundaries", serves them on a free loopback port, and the reference parser checks each rank's
// series, the role label and the histograms.
TEST(Aggregation, EveryRanksSeriesReachesTheCoordinatorAndItsEndpoint) {
  const int rank = world_rank(), size = world_size();
  const std::string role = rank == 0 ? "trainer" : "rollout";
  auto agg = Aggregator::create(MPI_COMM_WORLD, role, 0.0);
  ASSERT_TRUE(agg.is_ok()) << agg.status().message();
  auto& c = registry().counter("t_agg_events_total", "Events", {{"kind", "a"}});
  auto& g = registry().gauge("t_agg_rank", "Rank times ten");
  auto& h = registry().histogram("t_agg_seconds", "Seconds", {0.5, 1.5});
  for (int step = 0; step < 5; ++step) {
    c.inc(rank + 1);
    g.set(10.0 * rank);
    h.observe(rank * 1.0);
    (*agg)->tick();
  }
  ASSERT_TRUE((*agg)->finish(std::chrono::seconds(60)).is_ok());
  if (rank == 0) {
    const auto snaps = (*agg)->snapshots();
    ASSERT_EQ(static_cast<int>(snaps.size()), size);
    auto server = MetricsServer::start("127.0.0.1", -1, **agg);
    ASSERT_TRUE(server.is_ok()) << server.status().message();
    std::string cmd = std::string(MOBULA_PYTHON) + " " + MOBULA_TEST_SOURCE_DIR +
                      "/tests/support/check_prometheus.py " + (*server)->url();
    for (int r = 0; r < size; ++r) {
      const std::string l =
          "rank=\\\"" + std::to_string(r) + "\\\",role=\\\"" + (r == 0 ? "trainer" : "rollout") + "\\\"";
      cmd += " \"t_agg_events_total{kind=\\\"a\\\"," + l + "}=" + std::to_string(5 * (r + 1)) + "\"";
      cmd += " \"t_agg_rank{" + l + "}=" + std::to_string(10 * r) + "\"";
      cmd += " \"t_agg_seconds_count{" + l + "}=5\"";
      cmd += " \"t_agg_seconds_sum{" + l + "}=" + std::to_string(5 * r) + "\"";
      // rank r observed r five times: buckets le=0.5 and le=1.5 hold it from rank 0 / rank 1 on.
      cmd += " \"t_agg_seconds_bucket{le=\\\"0.5\\\"," + l + "}=" + (r == 0 ? "5" : "0") + "\"";
      cmd += " \"t_agg_seconds_bucket{le=\\\"1.5\\\"," + l + "}=" + (r <= 1 ? "5" : "0") + "\"";
    }
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

}  // namespace
}  // namespace mobula::metrics
