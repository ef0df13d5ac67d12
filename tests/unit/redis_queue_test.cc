// The Redis backend of the task queue (core/queue/redis.h) against a private redis-server: leases,
// acks, failures, expiry by the server's clock and the poison limit; idempotent enqueue; two
// clients (two jobs) sharing one queue; a server SIGKILLed and restarted mid-way (the client
// reconnects, nothing acknowledged is lost).
#include "core/queue/redis.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <set>
#include <thread>

#include "tests/support/redis_server.h"

namespace mobula::queue {
namespace {

namespace fs = std::filesystem;

class Redis : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::RedisServer::binary().empty()) {
      if (testing::RedisServer::required()) FAIL() << "redis-server is not installed (./dev.sh deps)";
      GTEST_SKIP() << "redis-server is not installed";
    }
    dir_ = fs::temp_directory_path() /
           ("mobula_redis_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(getpid()));
    fs::remove_all(dir_);
    server_ = std::make_unique<testing::RedisServer>(dir_);
    ASSERT_TRUE(server_->start()) << "redis-server did not start (" << dir_ << "/redis.log)";
  }
  void TearDown() override {
    server_.reset();
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::unique_ptr<RedisQueue> connect(RedisOptions o = {}) {
    auto q = RedisQueue::connect(server_->address(), "test", o);
    EXPECT_TRUE(q.is_ok()) << q.status().message();
    return q.is_ok() ? std::move(q).value() : nullptr;
  }
  static std::vector<TaskSpec> tasks(int n) {
    std::vector<TaskSpec> t;
    for (int i = 0; i < n; ++i) t.push_back({"t" + std::to_string(i), "payload-" + std::to_string(i)});
    return t;
  }
  fs::path dir_;
  std::unique_ptr<testing::RedisServer> server_;
};

TEST_F(Redis, LeaseAckFailAndStats) {
  auto q = connect();
  ASSERT_TRUE(q);
  ASSERT_EQ(*q->enqueue(tasks(3)), 3);
  EXPECT_EQ(*q->enqueue(tasks(3)), 0);  // idempotent
  auto l = q->lease("w0", 2);
  ASSERT_TRUE(l.is_ok()) << l.status().message();
  ASSERT_EQ(l->size(), 2u);
  EXPECT_EQ((*l)[0].task_id, "t0");
  EXPECT_EQ((*l)[0].payload, "payload-0");
  EXPECT_EQ((*l)[0].attempt, 1);
  ASSERT_TRUE(q->renew((*l)[0]).is_ok());
  ASSERT_TRUE(q->ack((*l)[0]).is_ok());
  ASSERT_TRUE(q->ack((*l)[0]).is_ok());  // idempotent for a done task
  ASSERT_TRUE(q->fail((*l)[1], "decode error").is_ok());
  EXPECT_EQ(q->ack((*l)[1]).code(), Status::Code::kNotFound);  // that lease is gone
  auto s = q->stats();
  ASSERT_TRUE(s.is_ok());
  EXPECT_EQ(s->pending, 2);
  EXPECT_EQ(s->leased, 0);
  EXPECT_EQ(s->done, 1);
  auto again = q->lease("w1", 5);
  ASSERT_EQ(again->size(), 2u);
  EXPECT_EQ((*again)[0].task_id, "t2");
  EXPECT_EQ((*again)[1].task_id, "t1");
  EXPECT_EQ((*again)[1].attempt, 2);
  ASSERT_TRUE(q->drain().is_ok());
  EXPECT_TRUE(q->stats()->draining);
  ASSERT_TRUE(q->resume().is_ok());
  EXPECT_FALSE(q->stats()->draining);
}

TEST_F(Redis, ExpiredLeasesComeBackAndAPoisonTaskDies) {
  RedisOptions o;
  o.lease_s = 0.3;
  o.max_attempts = 2;
  auto q = connect(o);
  ASSERT_EQ(*q->enqueue(tasks(1)), 1);
  for (int attempt = 1; attempt <= 2; ++attempt) {
    auto l = q->lease("w", 1);
    ASSERT_EQ(l->size(), 1u) << attempt;
    EXPECT_EQ((*l)[0].attempt, attempt);
    EXPECT_EQ(*q->expire_leases(), 0);  // not yet
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    EXPECT_EQ(*q->expire_leases(), 1);
  }
  auto dead = q->dead();
  ASSERT_EQ(dead->size(), 1u);
  EXPECT_EQ((*dead)[0].id, "t0");
  EXPECT_EQ((*dead)[0].attempts, 2);
  EXPECT_NE((*dead)[0].error.find("lease expired"), std::string::npos) << (*dead)[0].error;
  EXPECT_EQ(*q->requeue_dead(), 1);
  EXPECT_EQ(q->stats()->pending, 1);
  EXPECT_EQ(q->stats()->dead, 0);
}

TEST_F(Redis, TwoJobsShareOneQueueAndEachTaskIsDoneOnce) {
  auto a = connect(), b = connect();
  ASSERT_EQ(*a->enqueue(tasks(200)), 200);
  std::set<std::string> done_a, done_b;
  auto work = [](RedisQueue& q, std::set<std::string>* done) {
    for (;;) {
      auto l = q.lease("w", 3);
      if (!l.is_ok() || l->empty()) return;
      for (const auto& x : *l)
        if (q.ack(x).is_ok()) done->insert(x.task_id);
    }
  };
  std::thread ta(work, std::ref(*a), &done_a), tb(work, std::ref(*b), &done_b);
  ta.join();
  tb.join();
  EXPECT_EQ(done_a.size() + done_b.size(), 200u);
  for (const auto& id : done_a) EXPECT_EQ(done_b.count(id), 0u) << id;
  EXPECT_FALSE(done_a.empty());
  EXPECT_FALSE(done_b.empty());
  EXPECT_EQ(a->stats()->done, 200);
}

TEST_F(Redis, AServerKilledAndRestartedLosesNothingAcknowledged) {
  auto q = connect();
  ASSERT_EQ(*q->enqueue(tasks(10)), 10);
  auto l = q->lease("w", 4);
  ASSERT_EQ(l->size(), 4u);
  ASSERT_TRUE(q->ack((*l)[0]).is_ok());
  server_->stop(SIGKILL);  // appendfsync always: every acknowledged write is on disk
  std::thread restart([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    ASSERT_TRUE(server_->start());
  });
  // This call waits for the server to come back (RedisOptions::reconnect_s) and goes through.
  ASSERT_TRUE(q->ack((*l)[1]).is_ok());
  restart.join();
  EXPECT_GE(q->reconnects(), 1);
  auto s = q->stats();
  ASSERT_TRUE(s.is_ok()) << s.status().message();
  EXPECT_EQ(s->done, 2);
  EXPECT_EQ(s->leased, 2);  // t2, t3: still leased, they expire or are acked
  EXPECT_EQ(s->pending, 6);
  EXPECT_TRUE(q->ack((*l)[2]).is_ok());
}

TEST_F(Redis, BadAddressesAreClearErrors) {
  auto q = RedisQueue::connect("localhost", "x");
  ASSERT_FALSE(q.is_ok());
  EXPECT_NE(q.status().message().find("is not HOST:PORT"), std::string::npos);
  RedisOptions o;
  o.connect_timeout_s = 1;
  auto none = RedisQueue::connect("127.0.0.1:1", "x", o);
  ASSERT_FALSE(none.is_ok());
  EXPECT_NE(none.status().message().find("cannot connect to redis at 127.0.0.1:1"), std::string::npos)
      << none.status().message();
}

}  // namespace
}  // namespace mobula::queue
