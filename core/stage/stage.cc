#include "core/stage/stage.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <queue>
#include <string>
#include <thread>

#include "core/runtime/hash.h"
#include "core/runtime/mpi.h"

namespace mobula::stage {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kTagCtrl = 1;
constexpr int kTagData = 100;
constexpr int kTagSpan = 16384;  // data tags kTagData + item % kTagSpan: unique among items in flight

enum Kind : int64_t { kCredit = 1, kReady, kAssign, kDone, kStop, kBye, kAllStopped, kAbort };
using Msg = std::array<int64_t, 3>;

// A failing rank tells the others that the stage is over ({kAbort, origin, sender}), so they return
// an error at once instead of waiting for data or work until a timeout. `origin` is the rank that
// failed first: a consumer that ends because of an abort passes the origin on, so every rank names
// the root cause whichever message reaches it first. Fire and forget: the peers may be dead or gone,
// and the job is failing anyway.
void send_abort(MPI_Comm ctrl, int origin, int me, const std::vector<int>& to) {
  const Msg m{kAbort, origin, me};
  for (int r : to) {
    if (r == me || r == origin) continue;
    MPI_Request req = MPI_REQUEST_NULL;
    if (MPI_Isend(m.data(), 3, MPI_INT64_T, r, kTagCtrl, ctrl, &req) == MPI_SUCCESS) (void)MPI_Request_free(&req);
  }
}

// The error a rank returns when it hears that `origin` failed.
Status aborted_by(int64_t origin, const std::vector<int>& consumers) {
  const bool consumer = std::find(consumers.begin(), consumers.end(), int(origin)) != consumers.end();
  return Status::external("stage: rank " + std::to_string(origin) + (consumer ? " (a consumer)" : " (a producer)") +
                          " failed and ended the stage; its log has the cause");
}

int data_tag(int64_t item) {
  return kTagData + static_cast<int>(item % kTagSpan);
}

size_t item_bytes(int samples, int floats) {
  return 2 * sizeof(int64_t) + size_t(samples) * sizeof(uint64_t) + size_t(samples) * size_t(floats) * sizeof(float);
}

Status validate(MPI_Comm comm, const std::vector<int>& consumers, const std::vector<int>& producers,
                const StageOptions& opt) {
  int size = 0;
  MOBULA_MPI(MPI_Comm_size(comm, &size));
  if (consumers.empty() || producers.empty())
    return Status::invalid_argument("stage: needs at least one consumer and one producer rank");
  std::vector<int> seen(size_t(size), 0);
  for (int r : consumers) {
    if (r < 0 || r >= size) return Status::invalid_argument("stage: consumer rank outside the communicator");
    ++seen[size_t(r)];
  }
  for (int r : producers) {
    if (r < 0 || r >= size) return Status::invalid_argument("stage: producer rank outside the communicator");
    ++seen[size_t(r)];
  }
  for (int s : seen)
    if (s != 1) return Status::invalid_argument("stage: every rank must be exactly one consumer or producer");
  if (opt.dataset_size == 0) return Status::invalid_argument("stage: empty dataset");
  if (opt.global_batch <= 0 || opt.global_batch % int(consumers.size()) != 0)
    return Status::invalid_argument("stage: global_batch (" + std::to_string(opt.global_batch) +
                                    ") must be a positive multiple of the consumer count (" +
                                    std::to_string(consumers.size()) + ")");
  if (opt.sample_floats <= 0) return Status::invalid_argument("stage: sample_floats must be > 0");
  if (opt.prefetch < 1 || opt.prefetch >= kTagSpan / 2)
    return Status::invalid_argument("stage: prefetch must be in [1, " + std::to_string(kTagSpan / 2) + ")");
  if (opt.producer_slots < 1) return Status::invalid_argument("stage: producer_slots must be >= 1");
  return Status::ok();
}

}  // namespace

// ---- order ---------------------------------------------------------------------------------------

uint64_t sample_at(uint64_t position, uint64_t n, uint64_t seed) {
  if (n <= 1) return 0;
  const uint64_t epoch = position / n;
  uint64_t v = position % n;
  int bits = 1;
  while ((uint64_t{1} << bits) < n) ++bits;
  const int half = (bits + 1) / 2;
  const uint64_t mask = (uint64_t{1} << half) - 1;
  const uint64_t key = splitmix64(seed ^ splitmix64(epoch + 0x5851f42d4c957f2dULL));
  // A 4-round Feistel network permutes [0, 4^half); cycle-walking keeps it inside [0, n).
  do {
    uint64_t l = v >> half, r = v & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      const uint64_t f = splitmix64(key ^ (round << 56) ^ r) & mask;
      const uint64_t t = l ^ f;
      l = r;
      r = t;
    }
    v = (l << half) | r;
  } while (v >= n);
  return v;
}

// ---- consumer ------------------------------------------------------------------------------------

struct Consumer::Impl {
  MPI_Comm ctrl = MPI_COMM_NULL, data = MPI_COMM_NULL;
  std::vector<int> consumers, producers;
  StageOptions opt;
  int cidx = 0, per = 0;  // my index among the consumers; samples per item
  size_t bytes = 0;
  int64_t end = 0;
  bool dispatcher = false;

  mutable std::mutex mu;
  std::condition_variable cv;
  struct Slot {
    std::vector<char> buf;
    MPI_Request req = MPI_REQUEST_NULL;
    bool done = false;
    int producer = -1;
  };
  std::map<int64_t, Slot> slots;  // credited, not yet released
  std::vector<std::vector<char>> pool;
  std::deque<int64_t> to_credit;
  int64_t cursor = 0, held = -1;
  bool finishing = false, done_sent = false, stopped = false, abandon = false;
  int abort_origin = -1;  // the failed rank named by the kAbort that arrived
  int me = 0;             // my rank in comm
  Status error;
  Stats stats;
  int arrived = 0;  // received and not yet released

  // Dispatcher (consumer 0).
  std::priority_queue<std::pair<int64_t, int>, std::vector<std::pair<int64_t, int>>, std::greater<>> credits;
  std::deque<int> ready;
  int done_consumers = 0, byes = 0;
  bool stop_sent = false;

  std::thread pump;

  Status send(const Msg& m, int dst) {
    MOBULA_MPI(MPI_Send(m.data(), 3, MPI_INT64_T, dst, kTagCtrl, ctrl));
    return Status::ok();
  }

  // One round of the pump, under mu. Sets *busy when something happened.
  Status round(bool* busy) {
    // Grant credits: post the receive first, so a producer's send always finds it.
    while (!to_credit.empty() && !finishing) {
      const int64_t j = to_credit.front();
      to_credit.pop_front();
      Slot& s = slots[j];
      if (!pool.empty()) {
        s.buf = std::move(pool.back());
        pool.pop_back();
      } else {
        s.buf.resize(bytes);
      }
      MOBULA_MPI(MPI_Irecv(s.buf.data(), static_cast<int>(bytes), MPI_BYTE, MPI_ANY_SOURCE, data_tag(j), data, &s.req));
      stats.max_in_flight = std::max(stats.max_in_flight, static_cast<int>(slots.size()));
      if (dispatcher) {
        credits.push({j, cidx});
      } else {
        MOBULA_RETURN_IF_ERROR(send({kCredit, cidx, j}, consumers[0]));
      }
      *busy = true;
    }
    for (auto& [j, s] : slots) {
      if (s.done || s.req == MPI_REQUEST_NULL) continue;
      int flag = 0;
      MPI_Status st;
      MOBULA_MPI(MPI_Test(&s.req, &flag, &st));
      if (flag) {
        s.done = true;
        s.producer = st.MPI_SOURCE;
        ++arrived;
        stats.max_buffered = std::max(stats.max_buffered, arrived);
        *busy = true;
        cv.notify_all();
      }
    }
    for (;;) {
      int flag = 0;
      MPI_Status st;
      MOBULA_MPI(MPI_Iprobe(MPI_ANY_SOURCE, kTagCtrl, ctrl, &flag, &st));
      if (!flag) break;
      Msg m{};
      MOBULA_MPI(MPI_Recv(m.data(), 3, MPI_INT64_T, st.MPI_SOURCE, kTagCtrl, ctrl, MPI_STATUS_IGNORE));
      *busy = true;
      switch (m[0]) {
        case kCredit:
          credits.push({m[2], static_cast<int>(m[1])});
          break;
        case kReady:
          ready.push_back(st.MPI_SOURCE);
          break;
        case kDone:
          ++done_consumers;
          break;
        case kBye:
          ++byes;
          break;
        case kAllStopped:
          stopped = true;
          break;
        case kAbort:
          abort_origin = static_cast<int>(m[1]);
          return aborted_by(m[1], consumers);
        default:
          return Status::external("stage: unexpected control message " + std::to_string(m[0]) + " from rank " +
                                  std::to_string(st.MPI_SOURCE));
      }
    }
    if (finishing && !done_sent) {
      if (dispatcher) {
        ++done_consumers;
      } else {
        MOBULA_RETURN_IF_ERROR(send({kDone, cidx, 0}, consumers[0]));
      }
      done_sent = true;
      *busy = true;
    }
    if (dispatcher) {
      while (!credits.empty() && !ready.empty() && !stop_sent) {  // pull: lowest item to the first ready
        const auto [j, c] = credits.top();
        credits.pop();
        const int p = ready.front();
        ready.pop_front();
        MOBULA_RETURN_IF_ERROR(send({kAssign, c, j}, p));
        *busy = true;
      }
      if (!stop_sent && done_consumers == static_cast<int>(consumers.size())) {
        while (!credits.empty()) credits.pop();
        for (int p : producers) MOBULA_RETURN_IF_ERROR(send({kStop, 0, 0}, p));
        stop_sent = true;
        *busy = true;
      }
      if (stop_sent && !stopped && byes == static_cast<int>(producers.size())) {
        for (size_t c = 1; c < consumers.size(); ++c) MOBULA_RETURN_IF_ERROR(send({kAllStopped, 0, 0}, consumers[c]));
        stopped = true;
      }
    }
    return Status::ok();
  }

  // Receives still posted when every producer has stopped were never assigned: cancel them.
  void cancel_pending() {
    for (auto& [j, s] : slots) {
      if (s.done || s.req == MPI_REQUEST_NULL) continue;
      (void)MPI_Cancel(&s.req);
      (void)MPI_Wait(&s.req, MPI_STATUS_IGNORE);
    }
  }

  void run_pump() {
    for (;;) {
      bool busy = false;
      {
        std::unique_lock lock(mu);
        if (abandon) {  // destroyed without finish(): a failing job; leave quietly
          cancel_pending();
          return;
        }
        if (Status s = round(&busy); !s.is_ok()) {
          error = s;
          stopped = true;
        }
        if (stopped) {
          cancel_pending();
          cv.notify_all();
          return;
        }
      }
      if (!busy) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
};

Consumer::Consumer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Consumer::~Consumer() {
  int finalized = 0;
  const bool mpi_up = MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized;
  if (impl_->pump.joinable()) {  // destroyed without finish(): this rank is failing; end the stage
    {
      std::lock_guard lock(impl_->mu);
      impl_->abandon = true;
    }
    impl_->pump.join();
    if (mpi_up) {  // everyone else; the origin is this rank unless another rank failed first
      std::vector<int> to = impl_->producers;
      to.insert(to.end(), impl_->consumers.begin(), impl_->consumers.end());
      send_abort(impl_->ctrl, impl_->abort_origin >= 0 ? impl_->abort_origin : impl_->me, impl_->me, to);
    }
  }
  if (mpi_up) {
    if (impl_->ctrl != MPI_COMM_NULL) (void)MPI_Comm_free(&impl_->ctrl);
    if (impl_->data != MPI_COMM_NULL) (void)MPI_Comm_free(&impl_->data);
  }
}

Result<std::unique_ptr<Consumer>> Consumer::create(MPI_Comm comm, std::vector<int> consumers,
                                                   std::vector<int> producers, const StageOptions& opt,
                                                   int64_t start_item, int64_t end_item) {
  MOBULA_RETURN_IF_ERROR(validate(comm, consumers, producers, opt));
  int me = 0;
  MOBULA_MPI(MPI_Comm_rank(comm, &me));
  const auto it = std::find(consumers.begin(), consumers.end(), me);
  if (it == consumers.end()) return Status::invalid_argument("stage: Consumer::create on a rank that is no consumer");
  if (start_item < 0 || end_item < start_item) return Status::invalid_argument("stage: bad item range");
  auto impl = std::make_unique<Impl>();
  MOBULA_MPI(MPI_Comm_dup(comm, &impl->ctrl));
  MOBULA_MPI(MPI_Comm_dup(comm, &impl->data));
  impl->cidx = static_cast<int>(it - consumers.begin());
  impl->me = me;
  impl->dispatcher = impl->cidx == 0;
  impl->consumers = std::move(consumers);
  impl->producers = std::move(producers);
  impl->opt = opt;
  impl->per = opt.global_batch / static_cast<int>(impl->consumers.size());
  impl->bytes = item_bytes(impl->per, opt.sample_floats);
  impl->cursor = start_item;
  impl->end = end_item;
  for (int64_t j = start_item; j < std::min(end_item, start_item + opt.prefetch); ++j) impl->to_credit.push_back(j);
  Impl* raw = impl.get();
  impl->pump = std::thread([raw] { raw->run_pump(); });
  return std::unique_ptr<Consumer>(new Consumer(std::move(impl)));
}

Result<Item> Consumer::next() {
  Impl& m = *impl_;
  std::unique_lock lock(m.mu);
  if (m.held >= 0) {  // release the previous item: its buffer back to the pool, a new credit
    auto node = m.slots.extract(m.held);
    m.pool.push_back(std::move(node.mapped().buf));
    --m.arrived;
    if (m.held + m.opt.prefetch < m.end) m.to_credit.push_back(m.held + m.opt.prefetch);
    m.held = -1;
  }
  if (m.cursor >= m.end) return Status::invalid_argument("stage: next() after the last item");
  if (m.finishing) return Status::invalid_argument("stage: next() after finish()");
  const int64_t j = m.cursor;
  const auto t0 = Clock::now();
  const bool ok = m.cv.wait_until(lock, t0 + m.opt.timeout, [&] {
    const auto s = m.slots.find(j);
    return (s != m.slots.end() && s->second.done) || m.stopped;
  });
  m.stats.wait_s += std::chrono::duration<double>(Clock::now() - t0).count();
  if (!m.error.is_ok()) return m.error;
  if (!ok || m.stopped)
    return Status::timeout("stage: item " + std::to_string(j) + " did not arrive within " +
                           std::to_string(m.opt.timeout.count() / 1000) +
                           " s: the producer ranks are dead, stuck or far too slow; abort the job so it restarts");
  Impl::Slot& s = m.slots.at(j);
  int64_t header[2];
  std::memcpy(header, s.buf.data(), sizeof header);
  if (header[0] != j || header[1] != m.per)
    return Status::external("stage: item " + std::to_string(j) + " arrived as item " + std::to_string(header[0]) +
                            " with " + std::to_string(header[1]) + " samples from rank " + std::to_string(s.producer) +
                            " (a protocol bug)");
  m.held = j;
  ++m.cursor;
  ++m.stats.items;
  Item item;
  item.index = j;
  item.producer = s.producer;
  const char* p = s.buf.data() + sizeof header;
  item.samples = {reinterpret_cast<const uint64_t*>(p), size_t(m.per)};
  item.data = {reinterpret_cast<const float*>(p + size_t(m.per) * sizeof(uint64_t)),
               size_t(m.per) * size_t(m.opt.sample_floats)};
  return item;
}

int64_t Consumer::cursor() const {
  std::lock_guard lock(impl_->mu);
  return impl_->cursor;
}

Status Consumer::finish() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    m.finishing = true;
    m.to_credit.clear();
  }
  if (m.pump.joinable()) m.pump.join();  // returns once every producer has stopped (or on an error)
  std::lock_guard lock(m.mu);
  return m.error;
}

Consumer::Stats Consumer::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

// ---- producer ------------------------------------------------------------------------------------

Producer::~Producer() {
  int finalized = 0;
  if (MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) {
    if (ctrl_ != MPI_COMM_NULL) (void)MPI_Comm_free(&ctrl_);
    if (data_ != MPI_COMM_NULL) (void)MPI_Comm_free(&data_);
  }
}

Result<std::unique_ptr<Producer>> Producer::create(MPI_Comm comm, std::vector<int> consumers,
                                                   std::vector<int> producers, const StageOptions& opt) {
  MOBULA_RETURN_IF_ERROR(validate(comm, consumers, producers, opt));
  int me = 0;
  MOBULA_MPI(MPI_Comm_rank(comm, &me));
  if (std::find(producers.begin(), producers.end(), me) == producers.end())
    return Status::invalid_argument("stage: Producer::create on a rank that is no producer");
  std::unique_ptr<Producer> p(new Producer());
  MOBULA_MPI(MPI_Comm_dup(comm, &p->ctrl_));
  MOBULA_MPI(MPI_Comm_dup(comm, &p->data_));
  p->dispatcher_ = consumers[0];
  p->me_ = me;
  p->consumers_ = std::move(consumers);
  p->opt_ = opt;
  return p;
}

Status Producer::run(const ProduceFn& fn) {
  Status st = run_items(fn);
  // A failure here (not one a consumer told us about) ends the stage on the consumers at once.
  if (!st.is_ok() && !peer_aborted_) send_abort(ctrl_, me_, me_, consumers_);
  return st;
}

Status Producer::run_items(const ProduceFn& fn) {
  const int C = static_cast<int>(consumers_.size());
  const int per = opt_.global_batch / C;
  const size_t bytes = item_bytes(per, opt_.sample_floats);
  const int nslots = opt_.producer_slots;
  std::vector<std::vector<char>> bufs(static_cast<size_t>(nslots), std::vector<char>(bytes));
  std::vector<MPI_Request> reqs(static_cast<size_t>(nslots), MPI_REQUEST_NULL);
  int next_buf = 0;
  const Msg ready{kReady, 0, 0};
  for (int i = 0; i < nslots; ++i) MOBULA_MPI(MPI_Send(ready.data(), 3, MPI_INT64_T, dispatcher_, kTagCtrl, ctrl_));
  // Control messages that arrived while waiting for a send (below), in order.
  std::deque<Msg> early;
  for (;;) {
    Msg m{};
    if (!early.empty()) {
      m = early.front();
      early.pop_front();
    } else {
      MOBULA_MPI(MPI_Recv(m.data(), 3, MPI_INT64_T, MPI_ANY_SOURCE, kTagCtrl, ctrl_, MPI_STATUS_IGNORE));
    }
    if (m[0] == kAbort) {  // items still being sent are left: the job is failing
      peer_aborted_ = true;
      return aborted_by(m[1], consumers_);
    }
    if (m[0] == kStop) {
      MOBULA_MPI(MPI_Waitall(nslots, reqs.data(), MPI_STATUSES_IGNORE));
      const Msg bye{kBye, 0, 0};
      MOBULA_MPI(MPI_Send(bye.data(), 3, MPI_INT64_T, dispatcher_, kTagCtrl, ctrl_));
      return Status::ok();
    }
    if (m[0] != kAssign || m[1] < 0 || m[1] >= C)
      return Status::external("stage: producer got an unexpected control message " + std::to_string(m[0]));
    const int c = static_cast<int>(m[1]);
    const int64_t j = m[2];
    std::vector<char>& buf = bufs[size_t(next_buf)];
    MPI_Request& req = reqs[size_t(next_buf)];
    next_buf = (next_buf + 1) % nslots;
    // That buffer's previous item must have left. A consumer that failed never receives it, so
    // wait by polling, watching for its abort (larger items go by rendezvous and never complete).
    for (int done = 0;;) {
      MOBULA_MPI(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done) break;
      int flag = 0;
      MOBULA_MPI(MPI_Iprobe(MPI_ANY_SOURCE, kTagCtrl, ctrl_, &flag, MPI_STATUS_IGNORE));
      if (flag) {
        Msg x{};
        MOBULA_MPI(MPI_Recv(x.data(), 3, MPI_INT64_T, MPI_ANY_SOURCE, kTagCtrl, ctrl_, MPI_STATUS_IGNORE));
        if (x[0] == kAbort) {
          peer_aborted_ = true;
          return aborted_by(x[1], consumers_);
        }
        early.push_back(x);
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    }
    const int64_t header[2] = {j, per};
    std::memcpy(buf.data(), header, sizeof header);
    auto* samples = reinterpret_cast<uint64_t*>(buf.data() + sizeof header);
    const uint64_t first = uint64_t(j) * uint64_t(opt_.global_batch) + uint64_t(c) * uint64_t(per);
    for (int i = 0; i < per; ++i) samples[i] = sample_at(first + uint64_t(i), opt_.dataset_size, opt_.seed);
    auto* out = reinterpret_cast<float*>(buf.data() + sizeof header + size_t(per) * sizeof(uint64_t));
    const auto t0 = Clock::now();
    MOBULA_RETURN_IF_ERROR(fn(std::span<const uint64_t>(samples, size_t(per)), out));
    stats_.busy_s += std::chrono::duration<double>(Clock::now() - t0).count();
    MOBULA_MPI(
        MPI_Isend(buf.data(), static_cast<int>(bytes), MPI_BYTE, consumers_[size_t(c)], data_tag(j), data_, &req));
    ++stats_.items;
    MOBULA_MPI(MPI_Send(ready.data(), 3, MPI_INT64_T, dispatcher_, kTagCtrl, ctrl_));
  }
}

}  // namespace mobula::stage
