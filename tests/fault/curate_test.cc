// The curation pipeline on the embedded queue (rl/roles/curate.cc, docs/queue.md) under faults:
// a worker SIGKILLed in the middle of a task, the coordinator (the queue's owner) SIGKILLed, a
// poison task that kills its worker every time (parked as dead, the job stops with exit 2 naming
// it; requeued and run again it completes), a corrupt journal (a clear error naming the record).
// Every completed run's curated dataset is byte-identical to an uninterrupted run's, and every task
// is done exactly once in the manifest.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/runtime/process.h"
#include "tests/support/files.h"
#include "tests/support/redis_server.h"

namespace mobula {
namespace {

namespace fs = std::filesystem;
const std::string kExe = MOBULA_EXE;
const std::string kSrc = MOBULA_TEST_SOURCE_DIR;

using test::slurp;

// Every file of DIR/curated, name and bytes: equal strings, byte-identical outputs.
std::string curated(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir / "curated")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  std::string all;
  for (const auto& n : names) all += n + "\n" + slurp(dir / "curated" / n) + "\n";
  return all;
}

class Curate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("mobula_curate_test_" + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  static void TearDownTestSuite() {
    if (!::testing::UnitTest::GetInstance()->Failed()) fs::remove_all(root_);
  }
  // 256 images (20% near-duplicates) in 8 tasks of 32, 2 workers; one shared input dataset.
  static ProcessResult run(const std::string& name, std::vector<std::string> sets = {},
                           const std::vector<std::pair<std::string, std::string>>& env = {}) {
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<std::string> argv = {kExe,
                                     "run",
                                     kSrc + "/examples/curate.toml",
                                     "--set",
                                     "job.workdir=" + (root_ / name).string(),
                                     "--set",
                                     "data.dir=" + (root_ / "data").string(),
                                     "--set",
                                     "data.images=256",
                                     "--set",
                                     "curate.task_images=32",
                                     "--set",
                                     "curate.per_shard=100",
                                     "--set",
                                     "roles.embed.ranks=2",
                                     "--set",
                                     "fault.restart_delay_s=0"};
    for (auto& s : sets) argv.insert(argv.end(), {"--set", s});
    auto r = run_capture(argv, 240);
    for (const auto& [k, v] : env) unsetenv(k.c_str());
    EXPECT_TRUE(r.is_ok()) << r.status().message();
    return r.is_ok() ? *r : ProcessResult{-1, "", ""};
  }
  static const std::string& clean() {
    static std::string c;
    if (c.empty()) {
      const auto r = run("clean");
      EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
      c = curated(root_ / "clean");
    }
    return c;
  }
  static fs::path root_;
};
fs::path Curate::root_;

TEST_F(Curate, CleanRunDropsTheInjectedDuplicatesAndDoesEveryTaskOnce) {
  ASSERT_FALSE(clean().empty());
  const auto data = nlohmann::json::parse(slurp(root_ / "data" / "dataset.json"));
  const auto m = nlohmann::json::parse(slurp(root_ / "clean" / "curated" / "manifest.json"));
  std::set<uint64_t> truth, got;
  for (const auto& d : data["near_duplicates"]) truth.insert(d[0].get<uint64_t>());
  for (const auto& d : m["dropped"]) got.insert(d["image"].get<uint64_t>());
  EXPECT_FALSE(truth.empty());
  EXPECT_EQ(got, truth);  // every injected near-duplicate, nothing else
  EXPECT_EQ(m["kept"].get<uint64_t>() + got.size(), 256u);
  auto st = run_capture({kExe, "queue", "status", (root_ / "clean").string()}, 30);
  ASSERT_TRUE(st.is_ok());
  EXPECT_NE(st->out.find("pending 0  leased 0  done 8  dead 0  total 8"), std::string::npos) << st->out;
}

TEST_F(Curate, AWorkerKilledMidTaskIsRelaunchedAndTheOutputIsTheSame) {
  ASSERT_FALSE(clean().empty());
  const auto r = run("killed-worker", {"fault.max_restarts=2"},
                     {{"MOBULA_FAULT_KILL_RANK", "2"}, {"MOBULA_FAULT_KILL_AFTER_TASKS", "1"}});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("fault injection: SIGKILL in the middle of task"), std::string::npos) << r.out;
  EXPECT_NE((r.out + r.err).find("relaunching"), std::string::npos) << r.out << r.err;
  EXPECT_EQ(curated(root_ / "killed-worker"), clean());
}

TEST_F(Curate, TheCoordinatorKilledIsRelaunchedFromItsJournal) {
  ASSERT_FALSE(clean().empty());
  const auto r = run(
      "killed-coordinator", {"fault.max_restarts=2"},
      {{"MOBULA_FAULT_KILL_RANK", "0"}, {"MOBULA_FAULT_KILL_AFTER_TASKS", "3"}, {"MOBULA_FAULT_EMBED_DELAY_MS", "20"}});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("the coordinator SIGKILLs itself"), std::string::npos) << r.out;
  EXPECT_EQ(curated(root_ / "killed-coordinator"), clean());
  // The relaunch enqueued nothing new (the journal had every task) and redid only what was not done.
  EXPECT_EQ(r.out.find("enqueued 8 task(s)"), r.out.rfind("enqueued 8 task(s)")) << r.out;
}

TEST_F(Curate, APoisonTaskIsParkedDeadAndTheRestIsDone) {
  ASSERT_FALSE(clean().empty());
  const auto r =
      run("poison", {"fault.max_restarts=4", "curate.max_attempts=2"}, {{"MOBULA_FAULT_POISON_TASK", "part-000005"}});
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;  // needs a human: never relaunched forever
  EXPECT_NE((r.out + r.err).find("1 task(s) are dead (poison): part-000005 (2 attempts"), std::string::npos)
      << r.out << r.err;
  auto st = run_capture({kExe, "queue", "status", (root_ / "poison").string()}, 30);
  ASSERT_TRUE(st.is_ok());
  EXPECT_NE(st->out.find("done 7  dead 1"), std::string::npos) << st->out;
  EXPECT_NE(st->out.find("dead part-000005 after 2 attempt(s)"), std::string::npos) << st->out;
  // Fixed (no more poison): requeue it and run again; the output is the clean run's.
  auto rq = run_capture({kExe, "queue", "requeue-dead", (root_ / "poison").string()}, 30);
  ASSERT_TRUE(rq.is_ok());
  EXPECT_EQ(rq->exit_code, 0) << rq->out << rq->err;
  const auto again = run("poison");
  ASSERT_EQ(again.exit_code, 0) << again.out << again.err;
  EXPECT_EQ(curated(root_ / "poison"), clean());
}

TEST_F(Curate, ACorruptJournalIsAClearErrorNamingTheRecord) {
  const auto r0 = run("corrupt", {"curate.task_images=64"});
  ASSERT_EQ(r0.exit_code, 0) << r0.out << r0.err;
  const fs::path journal = root_ / "corrupt" / "queue" / "queue.journal";
  std::string bytes = slurp(journal);
  ASSERT_GT(bytes.size(), 100u);
  bytes[60] ^= 0x11;  // inside record 1
  std::ofstream(journal, std::ios::binary | std::ios::trunc) << bytes;
  const auto r = run("corrupt", {"curate.task_images=64"});
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE((r.out + r.err).find("queue.journal: record 1 at byte"), std::string::npos) << r.out << r.err;
  EXPECT_EQ(slurp(journal), bytes);  // nothing written over it
}

// A private redis-server for the Redis-backend tests (skips without one, fails under ./dev.sh test).
std::unique_ptr<testing::RedisServer> redis_or_skip(const fs::path& dir, std::string* why) {
  if (testing::RedisServer::binary().empty()) {
    *why = "redis-server is not installed";
    return nullptr;
  }
  auto r = std::make_unique<testing::RedisServer>(dir);
  if (!r->start()) {
    *why = "redis-server did not start (" + dir.string() + "/redis.log)";
    return nullptr;
  }
  return r;
}

TEST_F(Curate, TheRedisBackendWritesTheSameDataset) {
  ASSERT_FALSE(clean().empty());
  std::string why;
  auto redis = redis_or_skip(root_ / "redis-a", &why);
  if (!redis) {
    if (testing::RedisServer::required()) FAIL() << why;
    GTEST_SKIP() << why;
  }
  const auto r = run("redis", {"curate.backend=\"redis\"", "curate.redis=" + redis->address()});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(curated(root_ / "redis"), clean());
  auto st = run_capture({kExe, "queue", "status", "curate", "--redis", redis->address()}, 30);
  ASSERT_TRUE(st.is_ok());
  EXPECT_NE(st->out.find("pending 0  leased 0  done 8  dead 0  total 8"), std::string::npos) << st->out;
}

TEST_F(Curate, ARedisServerRestartedMidRunLosesNothing) {
  ASSERT_FALSE(clean().empty());
  std::string why;
  auto redis = redis_or_skip(root_ / "redis-b", &why);
  if (!redis) {
    if (testing::RedisServer::required()) FAIL() << why;
    GTEST_SKIP() << why;
  }
  const std::string name = "redis-restart";
  auto job = std::async(std::launch::async, [&] {
    return run(name, {"curate.backend=\"redis\"", "curate.redis=" + redis->address(), "curate.queue=restart"},
               {{"MOBULA_FAULT_EMBED_DELAY_MS", "100"}});
  });
  // Once two parts are written: the server dies (SIGKILL) and comes back half a second later.
  bool killed = false;
  for (int i = 0; i < 600 && job.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready; ++i) {
    size_t parts = 0;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root_ / name / "curate" / "parts", ec))
      parts += e.path().extension() == ".part";
    if (parts < 2) continue;
    redis->stop(SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    ASSERT_TRUE(redis->start());
    killed = true;
    break;
  }
  const auto r = job.get();
  ASSERT_TRUE(killed) << "the job ended before the restart:\n" << r.out << r.err;
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("reconnected to redis"), std::string::npos) << r.out;
  EXPECT_EQ(curated(root_ / name), clean());
}

}  // namespace
}  // namespace mobula
