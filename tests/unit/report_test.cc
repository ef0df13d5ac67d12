// The job report page (launch/report.h): reading a work dir and the HTML it renders.
#include "launch/report.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace mobula::launch {
namespace {

namespace fs = std::filesystem;

const char* kEvil = "<script>alert(1)</script>";
const char* kEvilEscaped = "&lt;script&gt;alert(1)&lt;/script&gt;";

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + needle.size())) ++n;
  return n;
}

// The <svg ...>...</svg> of one plot, or "" when the page has none.
std::string plot(const std::string& html, const std::string& name) {
  const size_t at = html.find("data-plot=\"" + name + "\"");
  if (at == std::string::npos) return "";
  const size_t begin = html.rfind("<svg", at), end = html.find("</svg>", at);
  return html.substr(begin, end + 6 - begin);
}

std::string metric(int attempt, int step, double reward) {
  return "{\"time\": \"2026-11-26T04:00:1" + std::to_string(step) + ".000Z\", \"attempt\": " + std::to_string(attempt) +
         ", \"step\": " + std::to_string(step) + ", \"reward\": " + std::to_string(reward) +
         ", \"accuracy\": 0.5, \"loss\": 0.01, \"kl\": 0.001, \"tokens_per_s\": 1000, \"sync_ms\": 2.5, \"sample_s\": "
         "0.01, \"transfer_s\": 0.001, \"train_s\": 0.02, \"checkpoint_s\": 0}\n";
}

class Report : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mobula-report-test-" + std::to_string(getpid())) / "myjob";
    fs::remove_all(dir_.parent_path());
    fs::create_directories(dir_);
    const std::string start = std::string("\"event\": \"job_start\", \"host\": \"n1\", \"rank\": 0, \"name\": \"") +
                              kEvil +
                              "\", \"spec\": \"job.toml\", \"spec_hash\": \"abc123\", \"workload\": \"grpo\", "
                              "\"ranks\": 3, \"hosts\": [\"n1\", \"n1\", \"n2\"], "
                              "\"roles\": [\"trainer\", \"trainer\", \"rollout\"], \"mobula_version\": \"0.1.0\"}\n";
    std::ofstream(dir_ / "events.jsonl")
        << "{\"time\": \"2026-11-26T04:00:00.000Z\", \"event\": \"attempt_start\", \"attempt\": 0, \"host\": \"n1\", "
           "\"launcher\": \"mobula run\"}\n"
        << "{\"time\": \"2026-11-26T04:00:01.000Z\", \"attempt\": 0, " << start
        << "{\"time\": \"2026-11-26T04:00:12.000Z\", \"event\": \"checkpoint_staged\", \"attempt\": 0, \"host\": "
           "\"n1\", \"rank\": 0, \"step\": 2, \"mode\": \"async\", \"seconds\": 0.01}\n"
        << "{\"time\": \"2026-11-26T04:00:12.500Z\", \"event\": \"checkpoint_durable\", \"attempt\": 0, \"host\": "
           "\"n1\", \"rank\": 0, \"step\": 2, \"mode\": \"async\", \"seconds\": 0.05}\n"
        << "{\"time\": \"2026-11-26T04:00:13.000Z\", \"event\": \"fault_injected\", \"attempt\": 0, \"host\": \"n1\", "
           "\"rank\": 1, \"kind\": \"SIGKILL\", \"step\": 3, \"note\": \""
        << kEvil << "\"}\n"
        << "{\"time\": \"2026-11-26T04:00:15.000Z\", \"event\": \"attempt_end\", \"attempt\": 0, \"host\": \"n1\", "
           "\"exit_code\": 137, \"outcome\": \"failed\"}\n"
        << "{\"time\": \"2026-11-26T04:00:15.000Z\", \"event\": \"attempt_start\", \"attempt\": 1, \"host\": \"n1\", "
           "\"launcher\": \"mobula run\"}\n"
        << "{\"time\": \"2026-11-26T04:00:16.000Z\", \"attempt\": 1, " << start
        << "{\"time\": \"2026-11-26T04:00:16.100Z\", \"event\": \"checkpoint_loaded\", \"attempt\": 1, \"host\": "
           "\"n1\", \"rank\": 0, \"path\": \"ckpt-00000002.h5\", \"step\": 2}\n"
        << "{\"time\": \"2026-11-26T04:00:18.000Z\", \"event\": \"checkpoint_durable\", \"attempt\": 1, \"host\": "
           "\"n1\", \"rank\": 0, \"step\": 4, \"mode\": \"async\", \"seconds\": 0.04}\n"
        << "{\"time\": \"2026-11-26T04:00:19.000Z\", \"event\": \"attempt_end\", \"attempt\": 1, \"host\": \"n1\", "
           "\"exit_code\": 0, \"outcome\": \"completed\"}\n"
        << "{\"time\": \"2026-11-26T04:00:19.000Z\", \"event\": \"job_end\", \"attempt\": 1, \"host\": \"n1\", "
           "\"exit_code\": 0, \"outcome\": \"completed\"}\n";
    // Steps 0-3 in attempt 0, 3-5 again in attempt 1 (step 3 twice), then a line torn by a crash.
    std::ofstream(dir_ / "metrics.jsonl")
        << metric(0, 0, 0.1) << metric(0, 1, 0.2) << metric(0, 2, 0.3) << metric(0, 3, 0.111) << metric(1, 3, 0.999)
        << metric(1, 4, 0.4) << metric(1, 5, 0.5) << "{\"time\": \"2026-11-26T04:00:2";
    std::ofstream(dir_ / "summary.json") << "{\"job\": \"x\", \"base_accuracy\": 0.25, \"final_accuracy\": 0.75}\n";
  }
  void TearDown() override { fs::remove_all(dir_.parent_path()); }

  JobView load() {
    auto v = load_job_view(dir_.string());
    EXPECT_TRUE(v.is_ok()) << v.status().message();
    return v.is_ok() ? std::move(v).value() : JobView{};
  }
  fs::path dir_;
};

TEST_F(Report, LoadsFilesCountsTornLinesAndFindsTheName) {
  const JobView v = load();
  EXPECT_EQ(v.name, kEvil);  // from the last job_start
  EXPECT_EQ(v.workdir, dir_.string());
  EXPECT_EQ(v.events.size(), 12u);
  EXPECT_EQ(v.metrics.size(), 7u);
  EXPECT_EQ(v.skipped_lines, 1);
  ASSERT_TRUE(v.summary.is_object());
  EXPECT_EQ(v.summary["final_accuracy"], 0.75);
}

TEST_F(Report, NameFallsBackToTheDirectoryAndMissingFilesAreEmpty) {
  fs::remove(dir_ / "events.jsonl");
  fs::remove(dir_ / "summary.json");
  auto v = load_job_view(dir_.string() + "/");
  ASSERT_TRUE(v.is_ok()) << v.status().message();
  EXPECT_EQ(v->name, "myjob");
  EXPECT_TRUE(v->events.empty());
  EXPECT_TRUE(v->summary.is_null());
}

TEST_F(Report, NotADirectoryIsNotFound) {
  auto v = load_job_view((dir_ / "nope").string());
  ASSERT_FALSE(v.is_ok());
  EXPECT_EQ(v.status().code(), Status::Code::kNotFound);
  EXPECT_NE(v.status().message().find("nope"), std::string::npos);
  EXPECT_EQ(v.status().message().find('\n'), std::string::npos) << "message must be one line";
  EXPECT_FALSE(load_job_view((dir_ / "summary.json").string()).is_ok());  // a file, not a directory
}

TEST_F(Report, RendersEveryPlot) {
  const std::string html = render_report(load());
  EXPECT_TRUE(html.starts_with("<!DOCTYPE html>"));
  for (const char* name : {"reward", "loss", "tokens", "breakdown", "sync", "checkpoint", "timeline"}) {
    const std::string svg = plot(html, name);
    EXPECT_FALSE(svg.empty()) << name;
    EXPECT_NE(svg.find("class=\"plot\""), std::string::npos) << name;
  }
  EXPECT_EQ(count(html, "class=\"plot\""), 7u);
  EXPECT_EQ(html.find("no data"), std::string::npos);
  EXPECT_NE(html.find("0.7500"), std::string::npos);  // final accuracy from summary.json
}

TEST_F(Report, StepPlotsUseTheLatestAttemptOfEachStep) {
  const std::string reward = plot(render_report(load()), "reward");
  EXPECT_EQ(count(reward, "class=\"pt\""), 6u * 2u);  // steps 0-5 × (reward, accuracy)
  EXPECT_NE(reward.find("step 3 · reward 0.999"), std::string::npos);
  EXPECT_EQ(reward.find("reward 0.111"), std::string::npos);
  EXPECT_NE(reward.find("attempt 1"), std::string::npos);  // the restart mark
}

TEST_F(Report, BreakdownIsStackedAndCheckpointsComeFromEvents) {
  const std::string html = render_report(load());
  const std::string breakdown = plot(html, "breakdown");
  EXPECT_EQ(count(breakdown, "class=\"area\""), 5u);  // sample, transfer, train, sync, checkpoint
  const std::string ckpt = plot(html, "checkpoint");
  EXPECT_EQ(count(ckpt, "class=\"pt\""), 3u);  // staged at 2, durable at 2 and 4
}

TEST_F(Report, TimelineHasOneBarPerAttempt) {
  const std::string timeline = plot(render_report(load()), "timeline");
  EXPECT_EQ(count(timeline, "class=\"bar\""), 2u);
  EXPECT_NE(timeline.find("attempt 0: failed, exit 137"), std::string::npos);
  EXPECT_NE(timeline.find("attempt 1: completed"), std::string::npos);
  EXPECT_EQ(count(timeline, "class=\"mk\""), 3u);  // fault_injected, 2 × checkpoint_durable
}

TEST_F(Report, EscapesEverythingFromTheFiles) {
  JobView v = load();
  v.id = "<b>42</b>";
  const std::string html = render_report(v);
  EXPECT_EQ(html.find(kEvil), std::string::npos);
  EXPECT_EQ(html.find("<b>42"), std::string::npos);
  EXPECT_NE(html.find(kEvilEscaped), std::string::npos);
  EXPECT_NE(html.find("note=&lt;script&gt;"), std::string::npos);  // the event field too
  EXPECT_EQ(count(html, "<script"), 1u);                           // only the page's own
}

TEST_F(Report, IsSelfContainedAndDeterministic) {
  const JobView v = load();
  const std::string html = render_report(v);
  EXPECT_EQ(html.find("http://"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_EQ(html.find("<img"), std::string::npos);
  EXPECT_EQ(html, render_report(v));
}

TEST_F(Report, NoMetricsRendersNoDataNotes) {
  JobView v = load();
  v.metrics.clear();
  const std::string html = render_report(v);
  for (const char* name : {"reward", "loss", "tokens", "breakdown", "sync"})
    EXPECT_TRUE(plot(html, name).empty()) << name;
  EXPECT_GE(count(html, "no data"), 5u);
  EXPECT_FALSE(plot(html, "checkpoint").empty());  // from events
  EXPECT_FALSE(plot(html, "timeline").empty());

  const std::string empty = render_report(JobView{});
  EXPECT_EQ(count(empty, "class=\"plot\""), 0u);
  EXPECT_EQ(count(empty, "no data"), 7u);
  EXPECT_NE(empty.find("</html>"), std::string::npos);
}

TEST_F(Report, ToleratesOddValuesAndCapsTheEventList) {
  JobView v;
  v.name = "odd";
  v.metrics.push_back(nlohmann::json::parse(R"({"step": "three", "reward": 1})"));
  v.metrics.push_back(nlohmann::json::parse(R"({"step": 1, "reward": "high", "attempt": [1]})"));
  v.metrics.push_back(nlohmann::json::parse(R"({"step": 2, "reward": 0.5})"));
  for (int i = 0; i < 600; ++i)
    v.events.push_back({{"time", "2026-13-45T99:00:00Z"},
                        {"event", i % 2 ? "x" : "checkpoint_durable"},
                        {"attempt", "zero"},
                        {"step", i},
                        {"seconds", nullptr},
                        {"extra", {{"a", 1}}}});
  const std::string html = render_report(v);
  EXPECT_NE(html.find("Showing the last 500 of 600 events"), std::string::npos);
  EXPECT_EQ(count(html, "<tr") - 1, 500u);  // + the header row
  EXPECT_EQ(count(plot(html, "reward"), "class=\"pt\""), 1u);
  EXPECT_TRUE(plot(html, "timeline").empty());  // no parseable times
}

TEST_F(Report, SurvivesExtremeNumbers) {
  JobView v;
  for (const char* line : {R"({"step": 1e16, "reward": 1e300, "attempt": 1e300, "sync_ms": -1e300})",
                           R"({"step": 10000000000000002, "reward": 1e-300, "attempt": -1e300, "sync_ms": 0})",
                           R"({"step": 3, "reward": 0.5, "loss": 0.5, "kl": 0.5, "tokens_per_s": 0})"})
    v.metrics.push_back(nlohmann::json::parse(line));
  v.events.push_back({{"time", "2026-11-26T04:00:00.000Z"}, {"event", "attempt_start"}, {"attempt", 2}});
  const std::string html = render_report(v);
  EXPECT_EQ(count(plot(html, "reward"), "class=\"pt\""), 3u);
  EXPECT_EQ(count(plot(html, "timeline"), "class=\"bar\""), 1u);  // a running attempt, zero length
  EXPECT_LT(html.size(), 200000u);
}

// A curation job's queue lines (tasks by state, tasks/s) make a "Task queue" section instead of
// the empty training plots.
TEST_F(Report, ACurationJobShowsItsQueue) {
  std::ofstream(dir_ / "metrics.jsonl", std::ios::trunc)
      << "{\"time\": \"2026-11-26T04:00:10.000Z\", \"attempt\": 0, \"step\": 1, \"tasks_done\": 2, "
         "\"tasks_total\": 8, \"tasks_pending\": 4, \"tasks_leased\": 2, \"tasks_dead\": 0, \"tasks_per_s\": 2.0}\n"
      << "{\"time\": \"2026-11-26T04:00:12.000Z\", \"attempt\": 0, \"step\": 7, \"tasks_done\": 8, "
         "\"tasks_total\": 8, \"tasks_pending\": 0, \"tasks_leased\": 0, \"tasks_dead\": 0, \"tasks_per_s\": 3.5}\n";
  const std::string html = render_report(load());
  EXPECT_NE(html.find("<h2>Task queue</h2>"), std::string::npos);
  EXPECT_NE(html.find("Tasks by state (stacked)"), std::string::npos);
  EXPECT_EQ(html.find("Reward and accuracy"), std::string::npos);  // no training plots to show
  // The GRPO fixture's page has no queue section.
  SetUp();
  EXPECT_EQ(render_report(load()).find("Task queue"), std::string::npos);
}

}  // namespace
}  // namespace mobula::launch
