// The embedded task queue (core/queue/journal.h): leases, acks, failures, expiry and the poison
// limit; idempotent enqueue; replay after a crash (leases come back, their attempts counted);
// a torn last record dropped with a warning, a corrupt record an error naming it; compaction;
// one owner at a time; drain.
#include "core/queue/journal.h"
#include "tests/support/files.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace mobula::queue {
namespace {

namespace fs = std::filesystem;

class Journal : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("mobula_queue_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::unique_ptr<JournalQueue> open(JournalOptions o = {}) {
    auto q = JournalQueue::open(dir_.string(), o);
    EXPECT_TRUE(q.is_ok()) << q.status().message();
    if (!q.is_ok()) return nullptr;
    (*q)->set_clock([this] { return now_; });
    return std::move(q).value();
  }
  static std::vector<TaskSpec> tasks(int n, int first = 0) {
    std::vector<TaskSpec> t;
    for (int i = first; i < first + n; ++i) t.push_back({"t" + std::to_string(i), "payload-" + std::to_string(i)});
    return t;
  }
  fs::path dir_;
  double now_ = 1000;
};

TEST_F(Journal, LeaseAckFailAndStats) {
  auto q = open();
  ASSERT_TRUE(q);
  ASSERT_EQ(*q->enqueue(tasks(3)), 3);
  auto l = q->lease("w0", 2);
  ASSERT_TRUE(l.is_ok());
  ASSERT_EQ(l->size(), 2u);
  EXPECT_EQ((*l)[0].task_id, "t0");  // first in, first out
  EXPECT_EQ((*l)[0].payload, "payload-0");
  EXPECT_EQ((*l)[0].attempt, 1);
  EXPECT_NE((*l)[0].token, (*l)[1].token);
  ASSERT_TRUE(q->ack((*l)[0]).is_ok());
  ASSERT_TRUE(q->ack((*l)[0]).is_ok());  // an ack of a done task is idempotent
  ASSERT_TRUE(q->fail((*l)[1], "decode error").is_ok());
  auto s = q->stats();
  EXPECT_EQ(s->pending, 2);
  EXPECT_EQ(s->leased, 0);
  EXPECT_EQ(s->done, 1);
  auto again = q->lease("w1", 5);
  ASSERT_EQ(again->size(), 2u);
  EXPECT_EQ((*again)[0].task_id, "t2");
  EXPECT_EQ((*again)[1].task_id, "t1");  // the failed one went to the back
  EXPECT_EQ((*again)[1].attempt, 2);
  EXPECT_TRUE(q->lease("w1", 5)->empty());
}

TEST_F(Journal, EnqueueIsIdempotentAcrossReopens) {
  {
    auto q = open();
    ASSERT_EQ(*q->enqueue(tasks(4)), 4);
    auto l = q->lease("w", 1);
    ASSERT_TRUE(q->ack((*l)[0]).is_ok());
  }
  auto q = open();
  EXPECT_EQ(*q->enqueue(tasks(6)), 2);  // t0 (done), t1..t3 (pending) are known
  EXPECT_EQ(q->stats()->done, 1);
  EXPECT_EQ(q->stats()->pending, 5);
  EXPECT_FALSE(q->enqueue({{"bad id!", "x"}}).is_ok());
}

TEST_F(Journal, ExpiredLeasesComeBackAndAPoisonTaskDies) {
  JournalOptions o;
  o.lease_s = 10;
  o.max_attempts = 2;
  auto q = open(o);
  ASSERT_EQ(*q->enqueue(tasks(2)), 2);
  auto a = q->lease("w0", 2);
  now_ += 5;
  ASSERT_TRUE(q->renew((*a)[0]).is_ok());  // heartbeat: t0's lease runs to 1015
  now_ += 6;                               // 1011: t1's expired, t0's not
  EXPECT_EQ(*q->expire_leases(), 1);
  EXPECT_EQ(q->stats()->pending, 1);
  // The late worker's ack of the expired lease is refused; the task runs again.
  Status late = q->ack((*a)[1]);
  EXPECT_EQ(late.code(), Status::Code::kNotFound) << late.message();
  auto b = q->lease("w1", 1);
  ASSERT_EQ(b->size(), 1u);
  EXPECT_EQ((*b)[0].task_id, "t1");
  EXPECT_EQ((*b)[0].attempt, 2);
  now_ += 11;
  EXPECT_EQ(*q->expire_leases(), 2);  // t0 (renewed once) and t1's second lease
  auto dead = q->dead();
  ASSERT_EQ(dead->size(), 1u);
  EXPECT_EQ((*dead)[0].id, "t1");
  EXPECT_EQ((*dead)[0].attempts, 2);
  EXPECT_NE((*dead)[0].error.find("lease expired"), std::string::npos) << (*dead)[0].error;
  EXPECT_EQ(q->stats()->dead, 1);
  EXPECT_EQ(*q->requeue_dead(), 1);
  EXPECT_EQ(q->stats()->dead, 0);
  EXPECT_EQ(q->stats()->pending, 2);
}

TEST_F(Journal, LeasesHeldAtACrashComeBackWithTheirAttemptsCounted) {
  JournalOptions o;
  o.max_attempts = 2;
  {
    auto q = open(o);
    ASSERT_EQ(*q->enqueue(tasks(3)), 3);
    auto l = q->lease("w", 2);  // t0, t1 in flight when the job dies
    ASSERT_TRUE(q->ack((*l)[0]).is_ok());
  }
  {
    auto q = open(o);
    auto s = q->stats();
    EXPECT_EQ(s->done, 1);
    EXPECT_EQ(s->pending, 2);
    EXPECT_EQ(s->leased, 0);
    auto l = q->lease("w", 2);
    ASSERT_EQ(l->size(), 2u);
    EXPECT_EQ((*l)[0].task_id, "t2");
    EXPECT_EQ((*l)[1].task_id, "t1");  // a lost lease goes to the back, like a failure
    EXPECT_EQ((*l)[1].attempt, 2);     // and its attempt counted
    // t1 takes the job down again: the poison limit parks it.
  }
  auto q = open(o);
  auto dead = q->dead();
  ASSERT_EQ(dead->size(), 1u);
  EXPECT_EQ((*dead)[0].id, "t1");
  EXPECT_NE((*dead)[0].error.find("the queue's owner restarted"), std::string::npos);
  EXPECT_EQ(q->stats()->pending, 1);  // t2 comes back once more
  EXPECT_GT(q->replayed_records(), 0);
  // Requeued (mobula queue requeue-dead) and reopened: the revival replays after the lost lease.
  EXPECT_EQ(*q->requeue_dead(), 1);
  q.reset();
  q = open(o);
  EXPECT_EQ(q->stats()->dead, 0);
  EXPECT_EQ(q->stats()->pending, 2);
}

using test::slurp;

TEST_F(Journal, ATornLastRecordIsDroppedWithAWarning) {
  {
    auto q = open();
    ASSERT_EQ(*q->enqueue(tasks(2)), 2);
  }
  const fs::path path = dir_ / "queue.journal";
  const std::string good = slurp(path);
  {  // a crash in the middle of an append: the first 7 bytes of a record
    std::ofstream out(path, std::ios::binary | std::ios::app);
    out << std::string("\x30\x00\x00\x00\x01\x02\x03", 7);
  }
  {
    auto q = open();
    ASSERT_TRUE(q);
    EXPECT_NE(q->torn_tail().find("record 2 at byte " + std::to_string(good.size())), std::string::npos)
        << q->torn_tail();
    EXPECT_EQ(q->stats()->pending, 2);
    ASSERT_EQ(*q->enqueue(tasks(1, 2)), 1);  // appended after the last good record
  }
  auto q = open();
  EXPECT_TRUE(q->torn_tail().empty());
  EXPECT_EQ(q->stats()->pending, 3);
}

TEST_F(Journal, ACorruptRecordIsAnErrorNamingItAndNothingIsWritten) {
  {
    auto q = open();
    ASSERT_EQ(*q->enqueue(tasks(3)), 3);
  }
  const fs::path path = dir_ / "queue.journal";
  std::string bytes = slurp(path);
  // The header is 12 bytes; record 0 is t0's enqueue (13 + 4 + 2 + 4 + 9 bytes): flip a payload
  // byte of record 1.
  const size_t rec1 = 12 + 32;
  bytes[rec1 + 20] ^= 0x5a;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  auto q = JournalQueue::open(dir_.string());
  ASSERT_FALSE(q.is_ok());
  EXPECT_NE(
      q.status().message().find("queue.journal: record 1 at byte " + std::to_string(rec1) + ": checksum mismatch"),
      std::string::npos)
      << q.status().message();
  EXPECT_EQ(slurp(path), bytes);  // left as it was
}

TEST_F(Journal, CompactionKeepsTheStateAndTheQueueOrder) {
  JournalOptions o;
  o.compact_bytes = 4096;
  o.max_attempts = 1000000;
  uint64_t held_token = 0;
  {
    auto q = open(o);
    ASSERT_EQ(*q->enqueue(tasks(50)), 50);
    auto keep = q->lease("w", 1);  // t0, held across the compactions
    held_token = (*keep)[0].token;
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(q->ack((*q->lease("w", 1))[0]).is_ok());  // t1..t10 done
    // 2000 failed attempts: ~120 KB of journal for a state of a few KB.
    for (int i = 0; i < 2000; ++i) ASSERT_TRUE(q->fail((*q->lease("w", 1))[0], "flaky").is_ok());
    EXPECT_LT(q->journal_bytes(), 20000) << "never compacted";
    ASSERT_TRUE(q->ack((*keep)[0]).is_ok());  // its token survived the snapshots
  }
  auto q = open(o);
  auto s = q->stats();
  EXPECT_EQ(s->done, 11);
  EXPECT_EQ(s->pending, 39);
  // 2000 failures rotated the 39 tasks t11..t49 through the queue: 2000 % 39 = 11 of them went
  // to the back once more, so t22 is first.
  auto l = q->lease("w", 1);
  EXPECT_EQ((*l)[0].task_id, "t22");
  EXPECT_GT((*l)[0].token, held_token);
}

TEST_F(Journal, OneOwnerAtATimeAndReadOnlyReaders) {
  auto q = open();
  ASSERT_EQ(*q->enqueue(tasks(2)), 2);
  auto second = JournalQueue::open(dir_.string());
  ASSERT_FALSE(second.is_ok());
  EXPECT_NE(second.status().message().find("owned by another process"), std::string::npos);
  JournalOptions ro;
  ro.read_only = true;
  auto reader = JournalQueue::open(dir_.string(), ro);
  ASSERT_TRUE(reader.is_ok()) << reader.status().message();
  EXPECT_EQ((*reader)->stats()->pending, 2);
  EXPECT_FALSE((*reader)->lease("w", 1).is_ok());
}

TEST_F(Journal, DrainStopsNewLeasesAndPersists) {
  {
    auto q = open();
    ASSERT_EQ(*q->enqueue(tasks(3)), 3);
    auto l = q->lease("w", 1);
    ASSERT_TRUE(q->drain().is_ok());
    EXPECT_TRUE(q->lease("w", 1)->empty());
    EXPECT_TRUE(q->ack((*l)[0]).is_ok());  // in flight: may still finish
    EXPECT_TRUE(q->stats()->draining);
  }
  auto q = open();
  EXPECT_TRUE(q->stats()->draining);
  EXPECT_TRUE(q->lease("w", 1)->empty());
}

}  // namespace
}  // namespace mobula::queue
