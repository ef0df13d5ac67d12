#include "rl/tasks/task.h"

#include <algorithm>

#include "core/runtime/hash.h"

namespace mobula::rl {

namespace {

uint64_t pow10(int d) {
  uint64_t p = 1;
  while (d-- > 0) p *= 10;
  return p;
}

// Problems are numbered; problem p is held out iff splitmix64(p) % 8 == 0. Training streams draw problem
// numbers from (seed, index) and skip held-out ones; eval enumerates held-out ones.
class NumberedTask : public Task {
 public:
  NumberedTask(int digits, uint64_t problems) : digits_(digits), problems_(problems) {}
  TaskExample example(uint64_t seed, uint64_t index) const override {
    for (uint64_t k = 0;; ++k) {
      const uint64_t p = splitmix64(splitmix64(seed) ^ splitmix64(index * 1315423911ull + k)) % problems_;
      if (!held_out(p)) return make(p);
    }
  }
  TaskExample eval_example(uint64_t index) const override {
    // The index-th held-out problem along a fixed permutation of problem numbers (7919 is coprime
    // to every power of 10); when there are fewer held-out problems than `index`, it wraps around.
    uint64_t found = 0;
    for (uint64_t k = 0; k < problems_; ++k) {
      const uint64_t p = (k * 7919 + 13) % problems_;
      if (held_out(p) && found++ == index) return make(p);
    }
    return found ? eval_example(index % found) : make(0);
  }

 protected:
  static bool held_out(uint64_t p) { return splitmix64(p ^ 0x5bd1e995ull) % 8 == 0; }
  virtual TaskExample make(uint64_t p) const = 0;
  int digits_;
  uint64_t problems_;
};

}  // namespace

TaskExample Task::warm_start_example(uint64_t seed, uint64_t index, int noise_percent) const {
  TaskExample ex = example(seed, index);
  if (static_cast<int>(splitmix64(splitmix64(seed ^ 0x77) + index) % 100) < noise_percent) ex.answer = wrong_answer(ex);
  return ex;
}

namespace {

class Addition final : public NumberedTask {
 public:
  explicit Addition(int digits) : NumberedTask(digits, pow10(digits) * pow10(digits)) {}
  std::string name() const override { return "addition"; }
  std::string alphabet() const override { return "0123456789+="; }
  std::string wrong_answer(const TaskExample& ex) const override { return std::to_string(std::stoull(ex.answer) + 1); }

 private:
  TaskExample make(uint64_t p) const override {
    const uint64_t a = p / pow10(digits_), b = p % pow10(digits_);
    return {std::to_string(a) + "+" + std::to_string(b) + "=", std::to_string(a + b)};
  }
};

class Reverse final : public NumberedTask {
 public:
  explicit Reverse(int digits) : NumberedTask(digits, pow10(digits)) {}
  std::string name() const override { return "reverse"; }
  std::string alphabet() const override { return "0123456789>"; }
  std::string wrong_answer(const TaskExample& ex) const override {
    std::string w = ex.answer;
    if (w.size() >= 2) std::swap(w[0], w[1]);
    if (w == ex.answer) w[0] = w[0] == '9' ? '0' : static_cast<char>(w[0] + 1);  // equal digits: change one
    return w;
  }

 private:
  TaskExample make(uint64_t p) const override {
    std::string s = std::to_string(p);
    s.insert(0, static_cast<size_t>(digits_) - s.size(), '0');
    std::string r(s.rbegin(), s.rend());
    return {s + ">", r};
  }
};

}  // namespace

Result<std::unique_ptr<Task>> make_task(std::string_view name, int digits) {
  if (digits < 1 || digits > 6)
    return Status::invalid_argument("task digits must be 1..6, got " + std::to_string(digits));
  if (name == "addition") return std::unique_ptr<Task>(new Addition(digits));
  if (name == "reverse") return std::unique_ptr<Task>(new Reverse(digits));
  return Status::invalid_argument("unknown task '" + std::string(name) + "'; known: addition, reverse");
}

}  // namespace mobula::rl
