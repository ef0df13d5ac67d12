#include "core/queue/redis.h"

#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

namespace mobula::queue {

namespace {

// KEYS: 1 pending, 2 processing, 3 lease, 4 payload, 5 attempts, 6 state, 7 error, 8 dead,
// 9 counts, 10 token, 11 draining.
const char* const kKeyNames[] = {"pending", "processing", "lease",  "payload", "attempts", "state",
                                 "error",   "dead",       "counts", "token",   "draining"};

// Shared by the scripts: the server's clock in ms, a lease held with a token, releasing a lease.
const char* const kPrelude = R"lua(
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function held(id, token)
  local l = redis.call('HGET', KEYS[3], id)
  if not l then return nil end
  local tk, dl, w = string.match(l, '^(%d+) (%d+) (.*)$')
  if tk ~= token then return nil end
  return tk, dl, w
end
local function release(id, err, max)
  redis.call('LREM', KEYS[2], 1, id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HSET', KEYS[7], id, err)
  redis.call('HINCRBY', KEYS[9], 'leased', -1)
  if tonumber(redis.call('HGET', KEYS[5], id) or '0') >= tonumber(max) then
    redis.call('HSET', KEYS[6], id, 'x')
    redis.call('SADD', KEYS[8], id)
    redis.call('HINCRBY', KEYS[9], 'dead', 1)
  else
    redis.call('HSET', KEYS[6], id, 'p')
    redis.call('RPUSH', KEYS[1], id)
    redis.call('HINCRBY', KEYS[9], 'pending', 1)
  end
end
local function lost(what, id)
  return redis.error_reply('LOST queue: ' .. what .. ' of task \'' .. id .. '\': the lease is no longer held (it expired)')
end
)lua";

enum Script {
  kEnqueue = 0,
  kLease,
  kRenew,
  kAck,
  kFail,
  kExpire,
  kStats,
  kDead,
  kRevive,
  kDrain,
  kResume,
  kDestroy,
  kCount
};

const char* const kScripts[kCount] = {
    // enqueue: ARGV id1 payload1 id2 payload2 ...
    R"lua(
local added = 0
for i = 1, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[6], ARGV[i], 'p') == 1 then
    redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
    redis.call('RPUSH', KEYS[1], ARGV[i])
    added = added + 1
  end
end
redis.call('HINCRBY', KEYS[9], 'pending', added)
return added
)lua",
    // lease: ARGV worker max lease_ms
    R"lua(
if redis.call('EXISTS', KEYS[11]) == 1 then return {} end
local now = now_ms()
local out = {}
for k = 1, tonumber(ARGV[2]) do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not id then break end
  local token = redis.call('INCR', KEYS[10])
  local att = redis.call('HINCRBY', KEYS[5], id, 1)
  redis.call('HSET', KEYS[3], id, string.format('%d %.0f %s', token, now + tonumber(ARGV[3]), ARGV[1]))
  redis.call('HSET', KEYS[6], id, 'l')
  redis.call('HINCRBY', KEYS[9], 'pending', -1)
  redis.call('HINCRBY', KEYS[9], 'leased', 1)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[4], id) or ''
  out[#out + 1] = att
  out[#out + 1] = token
end
return out
)lua",
    // renew: ARGV id token lease_ms
    R"lua(
local tk, dl, w = held(ARGV[1], ARGV[2])
if not tk then return lost('renewal', ARGV[1]) end
redis.call('HSET', KEYS[3], ARGV[1], string.format('%s %.0f %s', tk, now_ms() + tonumber(ARGV[3]), w))
return 1
)lua",
    // ack: ARGV id token
    R"lua(
if redis.call('HGET', KEYS[6], ARGV[1]) == 'd' then return 1 end
if not held(ARGV[1], ARGV[2]) then return lost('ack', ARGV[1]) end
redis.call('LREM', KEYS[2], 1, ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[6], ARGV[1], 'd')
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[9], 'leased', -1)
redis.call('HINCRBY', KEYS[9], 'done', 1)
return 1
)lua",
    // fail: ARGV id token error max
    R"lua(
if not held(ARGV[1], ARGV[2]) then return lost('failure report', ARGV[1]) end
release(ARGV[1], ARGV[3], ARGV[4])
return 1
)lua",
    // expire: ARGV max lease_s
    R"lua(
local now = now_ms()
local n = 0
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local l = redis.call('HGET', KEYS[3], id)
  local tk, dl, w = string.match(l or '', '^(%d+) (%d+) (.*)$')
  if tk and tonumber(dl) <= now then
    release(id, 'lease expired after ' .. ARGV[2] .. ' s without renewal (worker ' .. w .. ' died or hangs)', ARGV[1])
    n = n + 1
  end
end
return n
)lua",
    // stats
    R"lua(
local c = redis.call('HMGET', KEYS[9], 'pending', 'leased', 'done', 'dead')
for i = 1, 4 do c[i] = tonumber(c[i] or '0') end
c[5] = redis.call('EXISTS', KEYS[11])
return c
)lua",
    // dead
    R"lua(
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[8])) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[4], id) or ''
  out[#out + 1] = redis.call('HGET', KEYS[7], id) or ''
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[5], id) or '0')
end
return out
)lua",
    // revive
    R"lua(
local ids = redis.call('SMEMBERS', KEYS[8])
table.sort(ids)
for _, id in ipairs(ids) do
  redis.call('SREM', KEYS[8], id)
  redis.call('HSET', KEYS[6], id, 'p')
  redis.call('HSET', KEYS[5], id, 0)
  redis.call('HDEL', KEYS[7], id)
  redis.call('RPUSH', KEYS[1], id)
end
redis.call('HINCRBY', KEYS[9], 'dead', -#ids)
redis.call('HINCRBY', KEYS[9], 'pending', #ids)
return #ids
)lua",
    // drain
    "redis.call('SET', KEYS[11], '1') return 1",
    // resume
    "redis.call('DEL', KEYS[11]) return 1",
    // destroy
    "for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end return 1",
};

struct ReplyFree {
  void operator()(redisReply* r) const {
    if (r) freeReplyObject(r);
  }
};

std::string reply_str(const redisReply* r) {
  return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR)
             ? std::string(r->str, r->len)
             : std::string();
}

long long reply_int(const redisReply* r) {
  if (!r) return 0;
  if (r->type == REDIS_REPLY_INTEGER) return r->integer;
  if (r->type == REDIS_REPLY_STRING) return std::atoll(std::string(r->str, r->len).c_str());
  return 0;
}

}  // namespace

RedisQueue::RedisQueue(std::string host, int port, std::string name, const RedisOptions& o)
    : host_(std::move(host)), port_(port), name_(std::move(name)), o_(o) {
  for (const char* k : kKeyNames) keys_.push_back("mobula:q:{" + name_ + "}:" + k);
}

RedisQueue::~RedisQueue() {
  if (c_) redisFree(c_);
}

Result<std::unique_ptr<RedisQueue>> RedisQueue::connect(const std::string& address, const std::string& name,
                                                        const RedisOptions& o) {
  const auto colon = address.rfind(':');
  int port = 0;
  try {
    port = colon == std::string::npos ? 0 : std::stoi(address.substr(colon + 1));
  } catch (const std::exception&) {
  }
  if (colon == std::string::npos || port <= 0 || port > 65535)
    return Status::invalid_argument("queue: redis address '" + address + "' is not HOST:PORT");
  if (!valid_task_id(name) || name.find_first_of("{}") != std::string::npos)
    return Status::invalid_argument("queue: redis queue name '" + name + "' must be 1..200 of [A-Za-z0-9._:/-]");
  if (o.max_attempts < 1 || !(o.lease_s > 0))
    return Status::invalid_argument("queue: max_attempts >= 1 and lease_s > 0 are required");
  std::unique_ptr<RedisQueue> q(new RedisQueue(address.substr(0, colon), port, name, o));
  std::lock_guard<std::mutex> lk(q->mu_);
  MOBULA_RETURN_IF_ERROR(q->reconnect_locked());
  return q;
}

Status RedisQueue::reconnect_locked() {
  if (c_) redisFree(c_);
  timeval tv{};
  tv.tv_sec = static_cast<long>(o_.connect_timeout_s);
  tv.tv_usec = static_cast<long>((o_.connect_timeout_s - double(tv.tv_sec)) * 1e6);
  c_ = redisConnectWithTimeout(host_.c_str(), port_, tv);
  if (!c_ || c_->err) {
    const std::string why = c_ ? c_->errstr : "out of memory";
    if (c_) redisFree(c_);
    c_ = nullptr;
    return Status::external("queue: cannot connect to redis at " + host_ + ":" + std::to_string(port_) + ": " + why +
                            " (is redis-server running? curate.redis)");
  }
  timeval cmd{};
  cmd.tv_sec = 30;
  if (redisSetTimeout(c_, cmd) != REDIS_OK) return Status::external("queue: redis: cannot set the command timeout");
  return Status::ok();
}

Result<std::shared_ptr<redisReply>> RedisQueue::run(int s, const std::vector<std::string>& args) {
  std::lock_guard<std::mutex> lk(mu_);
  // EVALSHA of the script's SHA-1 (the server's SCRIPT LOAD answer); a server that does not know
  // it (restarted: its script cache is empty) gets the whole body once (EVAL, which caches it).
  const std::string body = std::string(kPrelude) + kScripts[s];
  if (shas_.empty()) shas_.resize(kCount);
  const bool by_sha = !shas_[size_t(s)].empty();
  std::vector<std::string> argv = {by_sha ? "EVALSHA" : "EVAL", by_sha ? shas_[size_t(s)] : body,
                                   std::to_string(keys_.size())};
  argv.insert(argv.end(), keys_.begin(), keys_.end());
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<const char*> ptrs;
  std::vector<size_t> lens;
  for (const auto& a : argv) ptrs.push_back(a.data()), lens.push_back(a.size());
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::duration<double>(o_.reconnect_s);
  for (;;) {
    redisReply* raw = nullptr;
    if (c_) raw = static_cast<redisReply*>(redisCommandArgv(c_, int(argv.size()), ptrs.data(), lens.data()));
    if (raw) {
      std::shared_ptr<redisReply> r(raw, ReplyFree());
      if (r->type == REDIS_REPLY_ERROR) {
        const std::string e = reply_str(r.get());
        if (e.rfind("LOST ", 0) == 0) return Status::not_found(e.substr(5));
        if (e.rfind("NOSCRIPT", 0) == 0) {  // resend with the body (it caches it again)
          shas_[size_t(s)].clear();
          argv[0] = "EVAL", argv[1] = body;
          ptrs[0] = argv[0].data(), ptrs[1] = argv[1].data();
          lens[0] = argv[0].size(), lens[1] = argv[1].size();
          continue;
        }
        // A server that is still loading its data after a restart: retry like a lost connection.
        if (e.rfind("LOADING", 0) != 0) return Status::external("queue: redis: " + e);
      } else {
        if (!by_sha && shas_[size_t(s)].empty()) {  // learn its SHA-1 for the next calls
          std::unique_ptr<redisReply, ReplyFree> sha(
              static_cast<redisReply*>(redisCommand(c_, "SCRIPT LOAD %b", body.data(), body.size())));
          if (sha && sha->type == REDIS_REPLY_STRING) shas_[size_t(s)] = reply_str(sha.get());
        }
        return r;
      }
    }
    const std::string why = c_ && c_->err ? c_->errstr : raw ? "the server is loading" : "not connected";
    if (std::chrono::steady_clock::now() >= give_up)
      return Status::external("queue: redis at " + host_ + ":" + std::to_string(port_) + " gone for " +
                              std::to_string(int(o_.reconnect_s)) + " s (" + why + ")");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!raw) {
      if (reconnect_locked().is_ok()) {
        ++reconnects_;
        spdlog::warn("queue: reconnected to redis at {}:{} ({})", host_, port_, why);
      }
    }
  }
}

Result<int64_t> RedisQueue::enqueue(const std::vector<TaskSpec>& tasks) {
  int64_t added = 0;
  constexpr size_t kChunk = 512;  // one script call per chunk: bounded server-side work per call
  for (size_t i = 0; i < tasks.size(); i += kChunk) {
    std::vector<std::string> args;
    for (size_t k = i; k < std::min(tasks.size(), i + kChunk); ++k) {
      if (!valid_task_id(tasks[k].id))
        return Status::invalid_argument("queue: task id '" + tasks[k].id.substr(0, 60) +
                                        "' is not 1..200 characters of [A-Za-z0-9._:/-]");
      args.push_back(tasks[k].id);
      args.push_back(tasks[k].payload);
    }
    auto r = run(kEnqueue, args);
    if (!r) return r.status();
    added += reply_int(r->get());
  }
  return added;
}

Result<std::vector<Lease>> RedisQueue::lease(const std::string& worker, int max) {
  auto r = run(kLease, {worker, std::to_string(std::max(0, max)), std::to_string(int64_t(o_.lease_s * 1000))});
  if (!r) return r.status();
  std::vector<Lease> out;
  const redisReply* a = r->get();
  for (size_t i = 0; a->type == REDIS_REPLY_ARRAY && i + 3 < a->elements; i += 4)
    out.push_back({reply_str(a->element[i]), reply_str(a->element[i + 1]), int(reply_int(a->element[i + 2])),
                   uint64_t(reply_int(a->element[i + 3]))});
  return out;
}

Status RedisQueue::renew(const Lease& l) {
  auto r = run(kRenew, {l.task_id, std::to_string(l.token), std::to_string(int64_t(o_.lease_s * 1000))});
  return r ? Status::ok() : r.status();
}

Status RedisQueue::ack(const Lease& l) {
  auto r = run(kAck, {l.task_id, std::to_string(l.token)});
  return r ? Status::ok() : r.status();
}

Status RedisQueue::fail(const Lease& l, const std::string& error) {
  auto r = run(kFail, {l.task_id, std::to_string(l.token), error, std::to_string(o_.max_attempts)});
  return r ? Status::ok() : r.status();
}

Result<int64_t> RedisQueue::expire_leases() {
  auto r = run(kExpire, {std::to_string(o_.max_attempts), std::to_string(o_.lease_s)});
  if (!r) return r.status();
  return reply_int(r->get());
}

Result<QueueStats> RedisQueue::stats() {
  auto r = run(kStats, {});
  if (!r) return r.status();
  const redisReply* a = r->get();
  if (a->type != REDIS_REPLY_ARRAY || a->elements != 5) return Status::external("queue: redis: malformed stats reply");
  QueueStats s;
  s.pending = reply_int(a->element[0]), s.leased = reply_int(a->element[1]);
  s.done = reply_int(a->element[2]), s.dead = reply_int(a->element[3]);
  s.draining = reply_int(a->element[4]) != 0;
  return s;
}

Result<std::vector<DeadTask>> RedisQueue::dead() {
  auto r = run(kDead, {});
  if (!r) return r.status();
  std::vector<DeadTask> out;
  const redisReply* a = r->get();
  for (size_t i = 0; a->type == REDIS_REPLY_ARRAY && i + 3 < a->elements; i += 4)
    out.push_back({reply_str(a->element[i]), reply_str(a->element[i + 1]), reply_str(a->element[i + 2]),
                   int(reply_int(a->element[i + 3]))});
  std::sort(out.begin(), out.end(), [](const DeadTask& x, const DeadTask& y) { return x.id < y.id; });
  return out;
}

Result<int64_t> RedisQueue::requeue_dead() {
  auto r = run(kRevive, {});
  if (!r) return r.status();
  return reply_int(r->get());
}

Status RedisQueue::drain() {
  auto r = run(kDrain, {});
  return r ? Status::ok() : r.status();
}

Status RedisQueue::resume() {
  auto r = run(kResume, {});
  return r ? Status::ok() : r.status();
}

Status RedisQueue::destroy() {
  auto r = run(kDestroy, {});
  return r ? Status::ok() : r.status();
}

}  // namespace mobula::queue
