// Observability end to end with `mobula run` (docs/observability.md): a short GRPO job that is
// killed once and restarted, with its Prometheus endpoint on; while it runs, the endpoint serves every
// rank's series (checked by prometheus_client); afterwards `mobula history`, `show` and `report` see
// the job and its two attempts, the report passes the headless-Chromium check, and `mobula history
// serve` answers on loopback, serves the report and refuses what is not a registered job's file.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <regex>
#include <sstream>
#include <thread>

#include "core/runtime/process.h"
#include "tests/support/files.h"

namespace mobula {
namespace {

namespace fs = std::filesystem;
const std::string kExe = MOBULA_EXE;
const std::string kSrc = MOBULA_TEST_SOURCE_DIR;

using test::slurp;

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

class History : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("mobula_history_test_" + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    setenv("MOBULA_HOME", (root_ / "home").c_str(), 1);  // this test's own registry
  }
  static void TearDownTestSuite() {
    if (!::testing::UnitTest::GetInstance()->Failed()) fs::remove_all(root_);
  }
  // The job every test below looks at: run once (the first test), 80 steps, rank 0 SIGKILLed after
  // step 12 of the first attempt, checkpoints every 5 steps, 40 ms per step so a scrape finds it
  // running.
  static void run_job_once() {
    if (ran_) return;
    ran_ = true;
    const std::string work = (root_ / "job").string();
    setenv("MOBULA_FAULT_KILL_AFTER_STEP", "12", 1);  // inherited by the job's ranks (first attempt only)
    setenv("MOBULA_FAULT_STEP_DELAY_MS", "40", 1);
    auto job = std::async(std::launch::async, [work] {
      return run_capture({kExe, "run", kSrc + "/examples/grpo-addition.toml", "--set", "job.workdir=" + work, "--set",
                          "job.name=history-demo", "--set", "job.steps=80", "--set", "checkpoint.every=5", "--set",
                          "fault.restart_delay_s=0", "--set", "metrics.port=-1", "--set", "metrics.interval_s=0.1",
                          "--set", "rl.warm_start_steps=100"},
                         280);
    });
    // Scrape while the second attempt trains: its endpoint is the last metrics_endpoint event.
    std::string url;
    for (int i = 0; i < 2400 && job.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready; ++i) {
      const std::string ev = slurp(fs::path(work) / "events.jsonl");
      const std::string m = slurp(fs::path(work) / "metrics.jsonl");
      if (count(ev, "\"metrics_endpoint\"") < 2 || count(m, "\"attempt\": 1") < 5) continue;
      std::smatch sm;
      std::string last = ev.substr(ev.rfind("\"metrics_endpoint\""));
      if (std::regex_search(last, sm, std::regex("\"url\": \"([^\"]+)\""))) url = sm[1];
      const std::string l0 = "rank=\\\"0\\\",role=\\\"trainer\\\"", l2 = "rank=\\\"2\\\",role=\\\"rollout\\\"";
      const std::string cmd = std::string(MOBULA_PYTHON) + " " + kSrc + "/tests/support/check_prometheus.py " + url +
                              " \"mobula_steps_total{" + l0 + "}>=1\"" + " \"mobula_attempt{" + l0 + "}=1\"" +
                              " \"mobula_attempt{" + l2 + "}=1\"" +
                              " \"mobula_transport_bytes_total{flow=\\\"weights\\\"," + l2 + "}>=1\"" +
                              " \"mobula_transport_bytes_total{flow=\\\"gradients\\\"," + l0 + "}>=1\"" +
                              " \"mobula_heartbeat_age_seconds{" + l2 + "}>=0\"" +
                              " \"mobula_step_phase_seconds_total{phase=\\\"train\\\"," + l0 + "}>=0\"";
      scrape_rc_ = std::system(cmd.c_str());
      scrape_cmd_ = cmd;
      break;
    }
    auto r = job.get();
    unsetenv("MOBULA_FAULT_KILL_AFTER_STEP");
    unsetenv("MOBULA_FAULT_STEP_DELAY_MS");
    ASSERT_TRUE(r.is_ok()) << r.status().message();
    job_out_ = r->out + r->err;
    job_rc_ = r->exit_code;
  }
  static fs::path root_;
  static bool ran_;
  static int job_rc_, scrape_rc_;
  static std::string job_out_, scrape_cmd_;
};
fs::path History::root_;
bool History::ran_ = false;
int History::job_rc_ = -1, History::scrape_rc_ = -1;
std::string History::job_out_, History::scrape_cmd_;

TEST_F(History, PrometheusEndpointServesEveryRankWhileTheJobRuns) {
  run_job_once();
  ASSERT_EQ(job_rc_, 0) << job_out_;
  ASSERT_FALSE(scrape_cmd_.empty()) << "never found the second attempt's endpoint running:\n" << job_out_;
  EXPECT_EQ(scrape_rc_, 0) << scrape_cmd_;
}

TEST_F(History, HistoryShowAndReportSeeBothAttempts) {
  run_job_once();
  ASSERT_EQ(job_rc_, 0) << job_out_;
  auto h = run_capture({kExe, "history", "--no-slurm"}, 60);
  ASSERT_TRUE(h.is_ok() && h->exit_code == 0) << (h ? h->err : h.status().message());
  std::smatch m;
  ASSERT_TRUE(std::regex_search(h->out, m, std::regex(R"(history-demo\s+(local-\S+)\s+COMPLETED\s+2\s)"))) << h->out;
  const std::string id = m[1];
  EXPECT_TRUE(std::regex_search(h->out, std::regex(R"(\s79\s+held-out acc)"))) << h->out;

  auto s = run_capture({kExe, "show", id, "--events", "3"}, 60);
  ASSERT_TRUE(s.is_ok() && s->exit_code == 0) << (s ? s->err : s.status().message());
  EXPECT_NE(s->out.find("attempt 0 ended"), std::string::npos) << s->out;
  EXPECT_NE(s->out.find(": failed (exit 137)"), std::string::npos) << s->out;
  EXPECT_NE(s->out.find("attempt 1 ended"), std::string::npos) << s->out;
  EXPECT_NE(s->out.find("rank 2    rollout"), std::string::npos) << s->out;
  EXPECT_NE(s->out.find("\"event\":\"job_end\""), std::string::npos) << s->out;

  auto bad = run_capture({kExe, "show", "no-such-job"}, 60);
  ASSERT_TRUE(bad.is_ok());
  EXPECT_EQ(bad->exit_code, 2);
  EXPECT_NE(bad->err.find("no job 'no-such-job' in the registry"), std::string::npos) << bad->err;

  const std::string html = (root_ / "report.html").string();
  auto r = run_capture({kExe, "report", "history-demo", "-o", html}, 60);
  ASSERT_TRUE(r.is_ok() && r->exit_code == 0) << (r ? r->out + r->err : r.status().message());
  const std::string page = slurp(html);
  EXPECT_NE(page.find("history-demo"), std::string::npos);
  // Self-contained: nothing is loaded from elsewhere (URLs may appear as text, e.g. the metrics
  // endpoint in the event list).
  for (const char* external : {"src=\"http", "href=\"http", "url(http", "@import", "<link "})
    EXPECT_EQ(page.find(external), std::string::npos) << external;
  // Opened in headless Chromium: screenshot, no console errors, the plots with their points.
  auto c = run_capture({"bash", kSrc + "/tests/report/check_report.sh", html, (root_ / "chromium").string()}, 280);
  ASSERT_TRUE(c.is_ok()) << c.status().message();
  EXPECT_EQ(c->exit_code, 0) << c->out << c->err;
  EXPECT_TRUE(fs::exists(root_ / "chromium" / "report.png"));
}

// On a terminal (script(1) provides one) `mobula run` draws a progress line; the ranks' per-step
// lines then go to their log files only.
TEST_F(History, ProgressLineOnATerminalReplacesStepLines) {
  const std::string work = (root_ / "tty").string(), typescript = (root_ / "tty.typescript").string();
  auto r = run_capture({"script", "-qec",
                        kExe + " run " + kSrc + "/examples/grpo-addition.toml --set job.workdir=" + work +
                            " --set job.steps=20 --set rl.warm_start_steps=50",
                        typescript},
                       240);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  ASSERT_EQ(r->exit_code, 0) << r->out << r->err;
  const std::string tty = slurp(typescript);
  EXPECT_NE(tty.find("[mobula] step 20/20 (100%)"), std::string::npos) << tty;
  EXPECT_EQ(tty.find("info: step "), std::string::npos) << tty;
  EXPECT_NE(tty.find("held-out accuracy, after GRPO"), std::string::npos) << tty;  // other lines still show
  EXPECT_EQ(count(slurp(fs::path(work) / "logs" / "attempt-0" / "rank-0.log"), "info: step "), 20u);
}

// A port that was free a moment ago (bound to port 0, then closed): a small race with other
// processes, fine for a test.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

TEST_F(History, ServeAnswersOnLoopbackAndRefusesPathTraversal) {
  run_job_once();
  ASSERT_EQ(job_rc_, 0) << job_out_;
  const int port = free_port();
  ASSERT_GT(port, 0);
  const std::string log = (root_ / "serve.log").string();
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (!std::freopen(log.c_str(), "w", stdout) || !std::freopen(log.c_str(), "a", stderr)) _exit(126);
    execl(kExe.c_str(), kExe.c_str(), "history", "serve", "--port", std::to_string(port).c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  struct Reaper {  // the server goes whatever happens below
    pid_t pid;
    ~Reaper() {
      if (pid > 0 && kill(pid, SIGKILL) == 0) waitpid(pid, nullptr, 0);
    }
  } reaper{pid};
  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(2);
  cli.set_read_timeout(30);
  auto index = cli.Get("/");
  for (int i = 0; i < 100 && !index; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    index = cli.Get("/");
  }
  ASSERT_TRUE(index) << "history serve did not answer on port " << port << ": " << slurp(log);
  EXPECT_EQ(index->status, 200);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(index->body, m, std::regex(R"(<td>history-demo</td><td>(local-[^<]+)</td>)")))
      << index->body;
  EXPECT_NE(index->body.find("href=\"/jobs/" + std::string(m[1]) + "/report\""), std::string::npos) << index->body;
  const std::string id = m[1];
  auto report = cli.Get("/jobs/" + id + "/report");
  ASSERT_TRUE(report) << httplib::to_string(report.error());
  EXPECT_EQ(report->status, 200);
  EXPECT_GE(count(report->body, "class=\"plot\""), 6u);
  auto events = cli.Get("/jobs/" + id + "/events.jsonl");
  ASSERT_TRUE(events) << httplib::to_string(events.error()) << " " << slurp(log);
  EXPECT_EQ(events->status, 200);
  EXPECT_EQ(events->body, slurp(root_ / "job" / "events.jsonl"));
  // Nothing but registered jobs' own files; no way out of them.
  for (const std::string& path :
       std::vector<std::string>{"/jobs/../../../../etc/passwd", "/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd/report",
                                "/jobs/..%2f..%2f..%2fetc%2fpasswd/events.jsonl", "/jobs/" + id + "/../../spec.toml",
                                "/jobs/" + id + "/checkpoints/latest", "/etc/passwd", "/jobs/nope/report"}) {
    auto r = cli.Get(path);
    ASSERT_TRUE(r) << path << ": " << httplib::to_string(r.error());
    EXPECT_EQ(r->status, 404) << path;
    EXPECT_EQ(r->body.find("root:"), std::string::npos) << path;
  }
  auto post = cli.Post("/jobs/" + id + "/report", "x", "text/plain");
  ASSERT_TRUE(post);
  EXPECT_NE(post->status, 200) << "read-only";
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  reaper.pid = 0;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slurp(log);
  EXPECT_NE(slurp(log).find("http://127.0.0.1:" + std::to_string(port) + "/"), std::string::npos);
}

}  // namespace
}  // namespace mobula
