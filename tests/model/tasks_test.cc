#include "rl/tasks/task.h"

#include <gtest/gtest.h>

#include <set>

#include "rl/model/tokenizer.h"

namespace mobula::rl {
namespace {

TEST(Tasks, AdditionIsDeterministicAndCorrect) {
  auto t = make_task("addition", 2);
  ASSERT_TRUE(t.is_ok());
  const auto a = (*t)->example(7, 123), b = (*t)->example(7, 123), c = (*t)->example(8, 123);
  EXPECT_EQ(a.prompt, b.prompt);
  EXPECT_NE(a.prompt + a.answer, c.prompt + c.answer);  // other seed, other stream (w.h.p.)
  const auto plus = a.prompt.find('+');
  const int x = std::stoi(a.prompt.substr(0, plus)), y = std::stoi(a.prompt.substr(plus + 1));
  EXPECT_EQ(a.answer, std::to_string(x + y));
  EXPECT_EQ((*t)->reward(a, a.answer), 1.0f);
  EXPECT_EQ((*t)->reward(a, a.answer + "0"), 0.0f);
  // Everything the task writes is in its alphabet.
  CharTokenizer tok((*t)->alphabet());
  EXPECT_TRUE(tok.encode(a.prompt + a.answer).is_ok());
}

TEST(Tasks, HeldOutIsDisjointFromTraining) {
  for (const char* name : {"addition", "reverse"}) {
    auto t = make_task(name, 2);
    ASSERT_TRUE(t.is_ok());
    std::set<std::string> eval;
    for (uint64_t i = 0; i < 8; ++i) eval.insert((*t)->eval_example(i).prompt);
    EXPECT_EQ(eval.size(), 8u) << name;
    for (uint64_t s = 0; s < 3; ++s)
      for (uint64_t i = 0; i < 500; ++i) EXPECT_EQ(eval.count((*t)->example(s, i).prompt), 0u) << name;
  }
}

TEST(Tasks, NoisyWarmStartData) {
  for (const char* name : {"addition", "reverse"}) {
    auto t = make_task(name, 2);
    ASSERT_TRUE(t.is_ok());
    int wrong = 0;
    for (uint64_t i = 0; i < 1000; ++i) {
      const auto clean = (*t)->example(4, i), noisy = (*t)->warm_start_example(4, i, 30);
      EXPECT_EQ(clean.prompt, noisy.prompt);
      if (noisy.answer != clean.answer) {
        ++wrong;
        EXPECT_EQ((*t)->reward(clean, noisy.answer), 0.0f);
      }
      EXPECT_EQ((*t)->warm_start_example(4, i, 0).answer, clean.answer);
    }
    EXPECT_NEAR(wrong, 300, 60) << name;
  }
}

TEST(Tasks, ReverseAndErrors) {
  auto t = make_task("reverse", 4);
  ASSERT_TRUE(t.is_ok());
  const auto e = (*t)->example(1, 2);
  ASSERT_EQ(e.prompt.size(), 5u);
  EXPECT_EQ(e.answer, std::string(e.prompt.rbegin() + 1, e.prompt.rend()));
  EXPECT_FALSE(make_task("sorting", 2).is_ok());
  EXPECT_FALSE(make_task("addition", 0).is_ok());
}

}  // namespace
}  // namespace mobula::rl
