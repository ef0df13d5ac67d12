// The embedded queue served over MPI (core/queue/mpi_queue.h), np 2 and 4: rank 0 serves a
// JournalQueue, the other ranks lease, fail and ack tasks concurrently; every task ends done exactly
// once, a failed task is retried by someone, and the ranks' counts add up.
#include "core/queue/mpi_queue.h"

#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <filesystem>
#include <set>

namespace mobula::queue {
namespace {

namespace fs = std::filesystem;

TEST(MpiQueue, WorkersShareTheTasksAndEachIsDoneOnce) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size < 2) GTEST_SKIP() << "needs a server and a worker";
  // The server rank's pid names the directory on every rank.
  int pid = int(getpid());
  MPI_Bcast(&pid, 1, MPI_INT, 0, MPI_COMM_WORLD);
  const fs::path dir = fs::temp_directory_path() / ("mobula_mpi_queue_" + std::to_string(pid));
  constexpr int kTasks = 300;
  std::unique_ptr<JournalQueue> journal;
  std::unique_ptr<QueueServer> server;
  std::unique_ptr<MpiQueueClient> client;
  if (rank == 0) {
    fs::remove_all(dir);
    auto j = JournalQueue::open(dir.string());
    ASSERT_TRUE(j.is_ok()) << j.status().message();
    journal = std::move(j).value();
    auto s = QueueServer::start(MPI_COMM_WORLD, *journal);
    ASSERT_TRUE(s.is_ok());
    server = std::move(s).value();
  } else {
    auto c = MpiQueueClient::connect(MPI_COMM_WORLD, 0);
    ASSERT_TRUE(c.is_ok());
    client = std::move(c).value();
  }
  if (rank == 1) {  // a producer among the workers: enqueue goes through the server too
    std::vector<TaskSpec> t;
    for (int i = 0; i < kTasks; ++i) t.push_back({"task-" + std::to_string(i), std::to_string(i)});
    auto n = client->enqueue(t);
    ASSERT_TRUE(n.is_ok()) << n.status().message();
    EXPECT_EQ(*n, kTasks);
    EXPECT_EQ(*client->enqueue(t), 0);  // idempotent
  }
  MPI_Barrier(MPI_COMM_WORLD);
  int64_t done = 0, payload_sum = 0;
  if (rank > 0) {
    const std::string me = "rank-" + std::to_string(rank);
    for (;;) {
      auto l = client->lease(me, 4);
      ASSERT_TRUE(l.is_ok()) << l.status().message();
      if (l->empty()) {
        auto s = client->stats();
        ASSERT_TRUE(s.is_ok());
        if (s->pending == 0 && s->leased == 0) break;
        usleep(1000);
        continue;
      }
      for (const auto& x : *l) {
        if (x.task_id == "task-7" && x.attempt == 1) {  // whoever gets it first fails it once
          ASSERT_TRUE(client->fail(x, "injected").is_ok());
          EXPECT_EQ(client->ack(x).code(), Status::Code::kNotFound);  // that lease is gone
          continue;
        }
        ASSERT_TRUE(client->renew(x).is_ok());
        ASSERT_TRUE(client->ack(x).is_ok());
        ++done;
        payload_sum += std::stoll(x.payload);
      }
    }
  }
  int64_t total[2] = {0, 0}, mine[2] = {done, payload_sum};
  MPI_Allreduce(mine, total, 2, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_EQ(total[0], kTasks);
  EXPECT_EQ(total[1], int64_t(kTasks) * (kTasks - 1) / 2);
  MPI_Barrier(MPI_COMM_WORLD);  // every client is done
  if (rank == 0) {
    EXPECT_TRUE(server->stop().is_ok());
    EXPECT_GT(server->requests(), kTasks);
    auto s = journal->stats();
    EXPECT_EQ(s->done, kTasks);
    EXPECT_EQ(s->dead, 0);
    journal.reset();
    fs::remove_all(dir);
  }
  client.reset();
  server.reset();
}

}  // namespace
}  // namespace mobula::queue
