// The per-rank exit records behind `mobula step` (launch/step.h).
#include "launch/step.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace mobula::launch {
namespace {

namespace fs = std::filesystem;

class StepRecords : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mobula-step-test-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(StepRecords, AllRanksGiveTheLargestExitCode) {
  ASSERT_TRUE(write_step_record(dir_, {0, 3, 0}).is_ok());
  ASSERT_TRUE(write_step_record(dir_, {2, 3, 3}).is_ok());
  ASSERT_TRUE(write_step_record(dir_, {1, 3, 0}).is_ok());
  auto recs = read_step_records(dir_);
  ASSERT_TRUE(recs.is_ok()) << recs.status().message();
  EXPECT_EQ(recs->size(), 3u);
  auto code = combine_step_records(*recs);
  ASSERT_TRUE(code.is_ok()) << code.status().message();
  EXPECT_EQ(*code, 3);
}

TEST_F(StepRecords, MissingRanksAreNamed) {
  ASSERT_TRUE(write_step_record(dir_, {0, 4, 0}).is_ok());
  ASSERT_TRUE(write_step_record(dir_, {2, 4, 0}).is_ok());
  auto recs = read_step_records(dir_);
  ASSERT_TRUE(recs.is_ok());
  auto code = combine_step_records(*recs);
  ASSERT_FALSE(code.is_ok());
  EXPECT_NE(code.status().message().find("2 of 4 ranks recorded no exit code (ranks 1,3)"), std::string::npos)
      << code.status().message();
  EXPECT_FALSE(combine_step_records({}).is_ok());
}

TEST_F(StepRecords, DisagreeingSizesAndMalformedFilesAreErrors) {
  EXPECT_FALSE(combine_step_records({{0, 2, 0}, {1, 3, 0}}).is_ok());
  std::ofstream(dir_ / "rank-0.rc") << "0 two 0\n";
  auto recs = read_step_records(dir_);
  ASSERT_FALSE(recs.is_ok());
  EXPECT_NE(recs.status().message().find("rank-0.rc: malformed step record"), std::string::npos);
  std::ofstream(dir_ / "rank-0.rc") << "5 2 0\n";  // rank outside the world
  EXPECT_FALSE(read_step_records(dir_).is_ok());
}

TEST_F(StepRecords, OtherFilesAreIgnored) {
  std::ofstream(dir_ / ".rank-0.rc.tmp") << "garbage";
  std::ofstream(dir_ / "notes.txt") << "garbage";
  ASSERT_TRUE(write_step_record(dir_, {0, 1, 0}).is_ok());
  auto recs = read_step_records(dir_);
  ASSERT_TRUE(recs.is_ok()) << recs.status().message();
  EXPECT_EQ(recs->size(), 1u);
}

}  // namespace
}  // namespace mobula::launch
