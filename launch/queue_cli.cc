// `mobula queue status|requeue-dead|drain|resume DIR`: the embedded task queue of a job's work dir
// (DIR/queue/queue.journal; docs/queue.md). status reads the journal (also while the job runs);
// requeue-dead and resume need the queue's owner stopped; drain works either way (a running coordinator
// sees DIR/queue/drain within a second).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/queue/journal.h"
#include "core/queue/redis.h"
#include "launch/commands.h"

namespace mobula::launch {

namespace fs = std::filesystem;

namespace {

std::string queue_dir(const std::string& dir) {
  return fs::exists(fs::path(dir) / "queue.journal") ? dir : (fs::path(dir) / "queue").string();
}

int fail(const char* what, const Status& st) {
  std::fprintf(stderr, "mobula queue %s: %s\n", what, st.message().c_str());
  return st.code() == Status::Code::kInvalidArgument || st.code() == Status::Code::kNotFound ? 2 : 1;
}

// One action on a queue of either backend; `label` names it in the status header.
int run_action(const std::string& action, queue::TaskQueue& q, const std::string& label) {
  if (action == "status") {
    auto s = q.stats();
    auto dead = q.dead();
    if (!s || !dead) return fail("status", s ? dead.status() : s.status());
    std::printf("queue %s\n", label.c_str());
    std::printf("  pending %lld  leased %lld  done %lld  dead %lld  total %lld%s\n", static_cast<long long>(s->pending),
                static_cast<long long>(s->leased), static_cast<long long>(s->done), static_cast<long long>(s->dead),
                static_cast<long long>(s->total()), s->draining ? "  (draining)" : "");
    for (const auto& d : *dead)
      std::printf("  dead %s after %d attempt(s): %s\n", d.id.c_str(), d.attempts, d.error.c_str());
    return 0;
  }
  if (action == "requeue-dead") {
    auto n = q.requeue_dead();
    if (!n) return fail("requeue-dead", n.status());
    std::printf("%lld dead task(s) back to pending, their attempts reset\n", static_cast<long long>(*n));
    return 0;
  }
  if (action == "drain" || action == "resume") {
    if (Status st = action == "drain" ? q.drain() : q.resume(); !st.is_ok()) return fail(action.c_str(), st);
    std::printf("%s: queue %s\n", action == "drain" ? "drained (no task is handed out until resumed)" : "resumed",
                label.c_str());
    return 0;
  }
  std::fprintf(stderr, "mobula queue: unknown action '%s'; use status, requeue-dead, drain or resume\n",
               action.c_str());
  return 2;
}

}  // namespace

int cmd_queue(const std::string& action, const std::string& dir, const std::string& redis, const std::string& name) {
  if (!redis.empty()) {  // a Redis backend (curate.backend = redis): the same actions on the server's keys
    const std::string qname = name.empty() ? dir : name;
    auto q = queue::RedisQueue::connect(redis, qname);
    if (!q) return fail(action.c_str(), q.status());
    return run_action(action, **q, qname + " on redis " + redis);
  }
  const std::string qdir = queue_dir(dir);
  queue::JournalOptions ro = queue::owner_options(qdir);  // the job's poison limit
  ro.read_only = action == "status";
  auto q = queue::JournalQueue::open(qdir, ro);
  if (!q && action == "drain" && fs::exists(fs::path(qdir) / "queue.journal")) {
    // Owned by a running job: ask its coordinator (it polls for this file).
    std::ofstream(fs::path(qdir) / "drain") << "drain requested by mobula queue drain\n";
    std::printf("drain requested: the running coordinator stops handing out tasks within a second\n");
    return 0;
  }
  if (!q) return fail(action.c_str(), q.status());
  if (action == "resume") {
    std::error_code ec;
    fs::remove(fs::path(qdir) / "drain", ec);
  }
  return run_action(action, **q,
                    qdir + "/queue.journal (" + std::to_string((*q)->replayed_records()) + " records" +
                        ((*q)->torn_tail().empty() ? "" : ", a torn last record ignored") + ")");
}

}  // namespace mobula::launch
