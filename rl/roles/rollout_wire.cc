#include "rl/roles/rollout_wire.h"

#include <cstring>
#include <string>

namespace mobula::rl {

namespace {

class Writer {
 public:
  template <class T>
  void put(const T& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  template <class T>
  void put_vec(const std::vector<T>& v) {
    put<uint64_t>(v.size());
    const auto* p = reinterpret_cast<const uint8_t*>(v.data());
    bytes.insert(bytes.end(), p, p + v.size() * sizeof(T));
  }
  std::vector<uint8_t> bytes;
};

class Reader {
 public:
  explicit Reader(const std::vector<uint8_t>& b) : b_(b) {}
  template <class T>
  bool get(T* v) {
    if (pos_ + sizeof(T) > b_.size()) return false;
    std::memcpy(v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  template <class T>
  bool get_vec(std::vector<T>* v) {
    uint64_t n = 0;
    if (!get(&n) || n > (b_.size() - pos_) / sizeof(T)) return false;
    v->resize(n);
    std::memcpy(v->data(), b_.data() + pos_, n * sizeof(T));
    pos_ += n * sizeof(T);
    return true;
  }
  bool done() const { return pos_ == b_.size(); }

 private:
  const std::vector<uint8_t>& b_;
  size_t pos_ = 0;
};

}  // namespace

std::vector<uint8_t> encode_rollouts(const RolloutStats& stats, const std::vector<const RolloutRecord*>& records) {
  Writer w;
  w.put(stats);
  w.put<uint64_t>(records.size());
  for (const RolloutRecord* r : records) {
    w.put(r->prompt);
    w.put(r->sample);
    w.put_vec(r->seq);
    w.put(r->first);
    w.put(r->advantage);
    w.put_vec(r->logp_old);
  }
  return w.bytes;
}

Status decode_rollouts(const std::vector<uint8_t>& bytes, RolloutStats* stats, std::vector<RolloutRecord>* out) {
  Reader rd(bytes);
  uint64_t n = 0;
  if (!rd.get(stats) || !rd.get(&n)) return Status::external("grpo: truncated rollout message");
  for (uint64_t i = 0; i < n; ++i) {
    RolloutRecord r;
    if (!rd.get(&r.prompt) || !rd.get(&r.sample) || !rd.get_vec(&r.seq) || !rd.get(&r.first) || !rd.get(&r.advantage) ||
        !rd.get_vec(&r.logp_old))
      return Status::external("grpo: malformed rollout record " + std::to_string(i));
    if (r.first < 1 || static_cast<size_t>(r.first) + r.logp_old.size() != r.seq.size())
      return Status::external("grpo: inconsistent rollout record " + std::to_string(i));
    out->push_back(std::move(r));
  }
  if (!rd.done()) return Status::external("grpo: trailing bytes in rollout message");
  return Status::ok();
}

}  // namespace mobula::rl
