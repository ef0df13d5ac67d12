// `mobula serve` as users meet it: the real service (mobula run of a serve spec, one rank) on a free
// loopback port, tokens from `mobula serve token create`, requests over HTTP (cpp-httplib client).
// Security: missing/invalid/revoked tokens, another tenant's adapters and futures, oversized and
// malformed bodies (4xx, and the service keeps serving). Crash: kill -9 of the service after
// acknowledged work; the launcher restarts it, retried request ids get the same futures and results,
// and the adapter ends bitwise where an uninterrupted twin ends. The stdlib Python RL example
// raises its reward.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/runtime/process.h"
#include "tests/support/files.h"

namespace mobula {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::slurp;

const std::string kExe = MOBULA_EXE;
const std::string kSrc = MOBULA_TEST_SOURCE_DIR;

fs::path root() {
  static const fs::path r = [] {
    fs::path p = fs::temp_directory_path() / ("mobula_serve_test_" + std::to_string(getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
    return p;
  }();
  return r;
}

// One `mobula serve` of examples/serve.toml in its own work dir.
class Service {
 public:
  Service(const std::string& name, std::vector<std::string> sets) : work_((root() / name).string()) {
    sets_ = {"--set", "job.workdir=" + work_, "--set", "serve.port=0", "--set", "fault.restart_delay_s=0"};
    for (auto& s : sets) sets_.insert(sets_.end(), {"--set", s});
  }
  ~Service() { stop(); }
  std::string token(const std::string& action, const std::string& name) {
    std::vector<std::string> argv = {kExe, "serve", "token", action, kSrc + "/examples/serve.toml", "--name", name};
    argv.insert(argv.end(), sets_.begin(), sets_.end());
    auto r = run_capture(argv, 60);
    EXPECT_TRUE(r.is_ok() && r->exit_code == 0) << (r ? r->err : r.status().message());
    return r ? r->out.substr(0, r->out.find('\n')) : "";
  }
  void start() {
    std::vector<std::string> argv = {kExe, "serve", kSrc + "/examples/serve.toml"};
    argv.insert(argv.end(), sets_.begin(), sets_.end());
    job_ = std::async(std::launch::async, [argv] { return run_capture(argv, 240); });
    wait_endpoint(-1);
  }
  // Waits for serve.json of a process other than `old_pid`, answering healthz.
  void wait_endpoint(int64_t old_pid) {
    for (int i = 0; i < 600; ++i) {
      const json j = json::parse(slurp(work_ + "/serve.json"), nullptr, false);
      if (j.is_object() && j["pid"] != old_pid) {
        httplib::Client c("127.0.0.1", j["port"].get<int>());
        if (auto r = c.Get("/v1/healthz"); r && r->status == 200) {
          port_ = j["port"];
          pid_ = j["pid"];
          return;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "the service did not come up; log:\n" << slurp(work_ + "/logs/attempt-0/rank-0.log");
  }
  // The launcher (`mobula serve`, whose argv names this work dir): a stop signal to it is forwarded
  // to the service and ends the job; one to the service alone is a preemption it is relaunched from.
  pid_t launcher() const {
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string cmd = slurp(e.path() / "cmdline");
      if (cmd.rfind(kExe + '\0' + "serve" + '\0', 0) == 0 &&
          cmd.find("job.workdir=" + work_ + '\0') != std::string::npos)
        return pid_t(std::stol(e.path().filename().string()));
    }
    return -1;
  }
  void stop() {
    if (!job_.valid()) return;
    if (const pid_t l = launcher(); l > 0) ::kill(l, SIGTERM);
    auto r = job_.get();
    ASSERT_TRUE(r.is_ok()) << r.status().message();
    // mpiexec, signalled, may report 1 rather than the service's 3; either way nothing relaunched.
    EXPECT_TRUE(r->exit_code == 3 || r->exit_code == 1) << r->exit_code << r->err;
    EXPECT_NE(r->err.find("not relaunching"), std::string::npos) << r->err;
  }
  void kill9() { ASSERT_EQ(::kill(pid_t(pid_), SIGKILL), 0); }
  int64_t pid() const { return pid_; }
  int port() const { return port_; }
  const std::string& work() const { return work_; }

 private:
  std::string work_;
  std::vector<std::string> sets_;
  std::future<Result<ProcessResult>> job_;
  int64_t pid_ = -1;
  int port_ = 0;
};

struct Caller {
  int port;
  std::string token;
  httplib::Result call(const std::string& method, const std::string& path, const std::string& body,
                       const std::string& rid = "") {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    httplib::Headers h;
    if (!token.empty()) h.emplace("Authorization", "Bearer " + token);
    if (!rid.empty()) h.emplace("Idempotency-Key", rid);
    if (method == "GET") return c.Get(path.c_str(), h);
    if (method == "DELETE") return c.Delete(path.c_str(), h, body, "application/json");
    return c.Post(path.c_str(), h, body, "application/json");
  }
  // Submits, returns the future id (or -status).
  int64_t submit(const std::string& path, const json& body, const std::string& rid = "") {
    auto r = call("POST", path, body.dump(), rid);
    if (!r) return -1;
    if (r->status != 202) return -r->status;
    return json::parse(r->body)["future_id"];
  }
  json result(int64_t fid) {
    for (int i = 0; i < 100; ++i) {
      auto r = call("POST", "/v1/retrieve_future", json{{"future_id", fid}, {"timeout_s", 5}}.dump());
      if (!r) continue;
      const json j = json::parse(r->body, nullptr, false);
      if (r->status != 200 || j["state"] != "pending") return j;
    }
    return {};
  }
};

json batch(int offset) {
  json data = json::array();
  for (int i = 0; i < 6; ++i) {
    json tok = json::array(), tgt = json::array(), w = json::array();
    for (int t = 0; t < 7; ++t) {
      tok.push_back(3 + (i + t + offset) % 12);
      tgt.push_back(3 + (i + 2 * t + offset) % 12);
      w.push_back(t >= 2 ? 1.0 : 0.0);
    }
    data.push_back({{"tokens", tok}, {"target_tokens", tgt}, {"weights", w}});
  }
  return {{"data", data}};
}

TEST(Serve, RefusesWhatItShouldAndKeepsServing) {
  Service svc("security", {"serve.max_body_kib=64"});
  const std::string alice = svc.token("create", "alice"), bob = svc.token("create", "bob"),
                    carol = svc.token("create", "carol");
  ASSERT_EQ(alice.rfind("mbl_", 0), 0u) << alice;
  EXPECT_EQ(svc.token("revoke", "carol"), "");
  // The token itself is not in the database, only its hash.
  EXPECT_EQ(slurp(svc.work() + "/serve/serve.db").find(alice), std::string::npos);
  svc.start();
  Caller a{svc.port(), alice}, b{svc.port(), bob}, none{svc.port(), ""}, bad{svc.port(), "mbl_nottoken"},
      revoked{svc.port(), carol};
  EXPECT_EQ(none.call("GET", "/v1/healthz", "")->status, 200);
  for (Caller* c : {&none, &bad, &revoked}) {
    auto r = c->call("GET", "/v1/info", "");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401) << r->body;
    EXPECT_EQ(c->submit("/v1/adapters", json::object()), -401);
  }
  const int64_t created = a.submit("/v1/adapters", {{"rank", 4}});
  ASSERT_GT(created, 0);
  const int64_t ad = a.result(created)["result"]["adapter_id"];
  const std::string base = "/v1/adapters/" + std::to_string(ad);
  const int64_t fb = a.submit(base + "/forward_backward", batch(0));
  ASSERT_GT(fb, 0);
  ASSERT_EQ(a.result(fb)["state"], "done");
  // Bob reaches none of it: not the adapter, not the future, not by deleting it.
  EXPECT_EQ(b.submit(base + "/sample", {{"prompts", {{3, 4}}}, {"max_tokens", 2}}), -404);
  EXPECT_EQ(b.submit(base + "/save_weights_for_sampler", {{"name", "x"}}), -404);
  EXPECT_EQ(b.call("DELETE", base, "")->status, 404);
  EXPECT_EQ(b.call("POST", "/v1/retrieve_future", json{{"future_id", fb}}.dump())->status, 404);
  EXPECT_EQ(json::parse(b.call("GET", "/v1/adapters", "")->body)["adapters"].size(), 0u);
  // Oversized and malformed bodies: clear 4xx with a JSON error.
  auto big = a.call("POST", base + "/forward_backward", std::string(100 * 1024, ' '));
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  for (const std::string& body :
       {std::string("{\"data\": [1, 2"), std::string("[1,2,3]"), std::string("{\"data\": 5}")}) {
    auto r = a.call("POST", base + "/forward_backward", body);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << body << " -> " << r->body;
    EXPECT_TRUE(json::parse(r->body, nullptr, false).contains("error")) << r->body;
  }
  EXPECT_EQ(a.call("POST", "/v1/nowhere", "{}")->status, 404);
  EXPECT_EQ(a.call("POST", "/v1/retrieve_future", "{\"future_id\": \"x\"}")->status, 400);
  // Still serving alice.
  const int64_t s = a.submit(base + "/sample", {{"prompts", {{3, 4, 5}}}, {"num_samples", 2}, {"max_tokens", 3}});
  ASSERT_GT(s, 0);
  EXPECT_EQ(a.result(s)["result"]["samples"].size(), 2u);
  svc.stop();
}

TEST(Serve, KillNineLosesNoAcknowledgedWork) {
  Service svc("crash", {});
  const std::string alice = svc.token("create", "alice");
  svc.start();
  Caller a{svc.port(), alice};
  auto adapter = [&](const std::string& rid) {
    const int64_t f = a.submit("/v1/adapters", {{"rank", 4}, {"seed", 11}}, rid);
    return a.result(f)["result"]["adapter_id"].get<int64_t>();
  };
  const int64_t ad = adapter("create-1");
  const std::string base = "/v1/adapters/" + std::to_string(ad);
  const std::vector<std::pair<std::string, json>> calls = {
      {"forward_backward", batch(0)},
      {"optim_step", {{"lr", 0.01}}},
      {"forward_backward", batch(1)},
      {"optim_step", {{"lr", 0.01}}},
      {"sample", {{"prompts", {{3, 4, 5}}}, {"num_samples", 4}, {"max_tokens", 4}, {"seed", 9}}}};
  std::vector<int64_t> fids;
  std::vector<json> before;
  for (size_t i = 0; i < 3; ++i) {  // acknowledged and done: fb, step, fb (its gradient in memory only)
    fids.push_back(a.submit(base + "/" + calls[i].first, calls[i].second, "k" + std::to_string(i)));
    ASSERT_GT(fids.back(), 0);
    before.push_back(a.result(fids.back()));
    ASSERT_EQ(before.back()["state"], "done") << before.back().dump();
  }
  const int64_t old_pid = svc.pid();
  svc.kill9();
  svc.wait_endpoint(old_pid);  // the launcher restarted it; it re-ran the journal
  a.port = svc.port();
  std::vector<json> after;
  for (size_t i = 0; i < calls.size(); ++i) {  // the client retries everything with the same ids
    const int64_t f = a.submit(base + "/" + calls[i].first, calls[i].second, "k" + std::to_string(i));
    if (i < fids.size()) {
      EXPECT_EQ(f, fids[i]) << "retry " << i;
    }
    after.push_back(a.result(f));
    ASSERT_EQ(after.back()["state"], "done") << after.back().dump();
    if (i < before.size()) {
      EXPECT_EQ(after.back()["result"], before[i]["result"]) << "call " << i;
    }
  }
  // An uninterrupted twin (same seed, same calls) ends with the same bits.
  const int64_t twin = adapter("create-2");
  for (size_t i = 0; i < calls.size(); ++i) {
    const int64_t f = a.submit("/v1/adapters/" + std::to_string(twin) + "/" + calls[i].first, calls[i].second);
    EXPECT_EQ(a.result(f)["result"], after[i]["result"]) << "twin call " << i;
  }
  svc.stop();
  EXPECT_NE(slurp(svc.work() + "/logs/attempt-1/rank-0.log").find("re-running"), std::string::npos);
}

TEST(Serve, PythonRlExampleRaisesTheReward) {
  const std::string base = (root() / "base").string();
  auto warm = run_capture(
      {kExe, "run", kSrc + "/examples/grpo-addition.toml", "--set", "job.steps=0", "--set", "job.workdir=" + base},
      240);
  ASSERT_TRUE(warm.is_ok() && warm->exit_code == 0) << (warm ? warm->err : warm.status().message());
  Service svc("rl", {"serve.base=" + base + "/policy.safetensors"});
  const std::string token = svc.token("create", "alice");
  svc.start();
  auto r = run_capture({MOBULA_PYTHON, kSrc + "/examples/serve/rl_addition.py", "--url",
                        "http://127.0.0.1:" + std::to_string(svc.port()), "--token", token, "--steps", "30"},
                       240);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  ASSERT_EQ(r->exit_code, 0) << r->out << r->err;
  const std::string last = r->out.substr(r->out.rfind('{'));
  const json s = json::parse(last, nullptr, false);
  ASSERT_TRUE(s.is_object()) << r->out;
  EXPECT_GT(s["reward_last"].get<double>(), s["reward_first"].get<double>() + 0.05) << r->out;
  EXPECT_GT(s["accuracy_after"].get<double>(), s["accuracy_before"].get<double>() + 0.15) << r->out;
  svc.stop();
}

}  // namespace
}  // namespace mobula
