// safetensors reader/writer: round trip, atomic replace, and every header corruption is a
// one-line Status naming the file and the key.
#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

namespace mobula::io {
namespace {

std::string tmp(const std::string& name) {
  return testing::TempDir() + "/" + name;
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const std::string& p, const std::string& s) {
  std::ofstream(p, std::ios::binary) << s;
}

StFile sample() {
  StFile f;
  const float a[6] = {1, 2, 3, 4, 5, 6};
  const int32_t b[3] = {-1, 0, 7};
  f.tensors["a"] = StTensor::f32({2, 3}, a);
  f.tensors["b"] = StTensor::i32({3}, b);
  f.tensors["empty"] = StTensor::f32({0, 4}, nullptr);
  f.metadata["format"] = "test";
  return f;
}

TEST(Safetensors, RoundTrip) {
  const auto p = tmp("rt.safetensors");
  ASSERT_TRUE(write_safetensors(p, sample()).is_ok());
  auto r = read_safetensors(p);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->tensors.at("a").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(r->tensors.at("a").as_f32(), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(r->tensors.at("b").as_i32(), (std::vector<int32_t>{-1, 0, 7}));
  EXPECT_EQ(r->tensors.at("empty").numel(), 0u);
  EXPECT_EQ(r->metadata.at("format"), "test");
  // Header is 8-byte aligned and the file has no leftover .tmp.
  const std::string bytes = slurp(p);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(uint8_t(bytes[size_t(i)])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_FALSE(std::ifstream(p + ".tmp").good());
}

TEST(Safetensors, CorruptionIsReported) {
  const auto p = tmp("bad.safetensors");
  ASSERT_TRUE(write_safetensors(p, sample()).is_ok());
  const std::string good = slurp(p);
  auto expect_err = [&](const std::string& content, const std::string& needle) {
    spit(p, content);
    auto r = read_safetensors(p);
    ASSERT_FALSE(r.is_ok()) << needle;
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
    EXPECT_EQ(r.status().message().find('\n'), std::string::npos);
  };
  expect_err(good.substr(0, 5), "shorter than 8 bytes");
  expect_err(good.substr(0, good.size() - 4), "outside the data section");
  std::string huge = good;
  huge[7] = '\x7f';
  expect_err(huge, "exceeds the file");
  std::string notjson = good;
  notjson[8] = '!';
  expect_err(notjson, "not valid JSON");
  std::string dtype = good;
  dtype.replace(dtype.find("\"F32\""), 5, "\"F16\"");
  expect_err(dtype, "unsupported dtype F16");
  std::string shape = good;
  shape.replace(shape.find("[2,3]"), 5, "[3,3]");
  expect_err(shape, "a: byte range does not match shape");
}

TEST(Safetensors, FailedWriteKeepsTheOldFile) {
  const auto p = tmp("keep.safetensors");
  ASSERT_TRUE(write_safetensors(p, sample()).is_ok());
  const std::string before = slurp(p);
  StFile bad = sample();
  bad.tensors["a"].bytes.pop_back();  // inconsistent: refused before anything is written
  EXPECT_FALSE(write_safetensors(p, bad).is_ok());
  EXPECT_EQ(slurp(p), before);
  EXPECT_FALSE(write_safetensors("/nonexistent/dir/x.safetensors", sample()).is_ok());
}

}  // namespace
}  // namespace mobula::io
