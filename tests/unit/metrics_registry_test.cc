// core/metrics/registry.h: counters, gauges and histograms per label set, the Prometheus text format
// (escaping, histogram layout, heartbeat ages) and misuse (bad names, a name with two kinds).
#include "core/metrics/registry.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mobula::metrics {
namespace {

TEST(Registry, CountersGaugesHistogramsKeepTheirValuesPerLabelSet) {
  Registry r;
  r.counter("t_requests_total", "Requests", {{"code", "200"}}).inc(3);
  r.counter("t_requests_total", "Requests", {{"code", "200"}}).inc();  // the same series
  r.counter("t_requests_total", "Requests", {{"code", "500"}}).inc(2);
  r.gauge("t_temperature", "Temp").set(21.5);
  r.gauge("t_temperature", "Temp").add(-1.5);
  auto& h = r.histogram("t_latency_seconds", "Latency", {0.1, 1.0});
  for (double v : {0.05, 0.1, 0.5, 2.0}) h.observe(v);
  EXPECT_EQ(h.counts(), (std::vector<uint64_t>{2, 1, 1}));  // le=0.1 includes 0.1 itself
  EXPECT_EQ(h.count(), 4u);
  EXPECT_DOUBLE_EQ(h.sum(), 2.65);
  const auto snap = r.snapshot();
  ASSERT_EQ(snap.size(), 3u);  // families sorted by name
  EXPECT_EQ(snap[0]["name"], "t_latency_seconds");
  EXPECT_EQ(snap[1]["name"], "t_requests_total");
  EXPECT_EQ(snap[1]["series"].size(), 2u);
  EXPECT_EQ(snap[1]["series"][0]["value"], 4.0);
  EXPECT_EQ(snap[2]["series"][0]["value"], 20.0);
}

TEST(Registry, ExpositionEscapesAndLaysOutHistograms) {
  Registry r;
  r.counter("t_odd_total", "Help with \\ and\nnewline", {{"path", "a\"b\\c\nd"}}).inc(7);
  r.histogram("t_size_bytes", "Sizes", {1024}).observe(10);
  const std::string text = exposition({RankSnapshot{2, "trainer", 0.5, r.snapshot()}});
  EXPECT_NE(text.find("# HELP t_odd_total Help with \\\\ and\\nnewline\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE t_odd_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("t_odd_total{path=\"a\\\"b\\\\c\\nd\",rank=\"2\",role=\"trainer\"} 7\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("t_size_bytes_bucket{rank=\"2\",role=\"trainer\",le=\"1024\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("t_size_bytes_bucket{rank=\"2\",role=\"trainer\",le=\"+Inf\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("t_size_bytes_count{rank=\"2\",role=\"trainer\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("mobula_heartbeat_age_seconds{rank=\"2\",role=\"trainer\"} 0.5\n"), std::string::npos) << text;
}

TEST(Registry, MisuseAborts) {
  EXPECT_DEATH(Registry().counter("bad name", "x"), "bad metric name");
  EXPECT_DEATH(
      {
        Registry r;
        r.counter("t_x", "x");
        r.gauge("t_x", "x");
      },
      "registered as a counter");
}

}  // namespace
}  // namespace mobula::metrics
