// safetensors files (the Hugging Face format): 8-byte little-endian header length N, N bytes of
// JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {"key": "value"}}, then the raw little-endian tensor bytes.
//
// Contract: local (no MPI). write() is atomic: it writes PATH.tmp, fsyncs it and renames it over
// PATH, so a crash leaves the old file or the new one, never half of one. read() validates the
// header (length, JSON, dtypes, shapes vs byte ranges, ranges inside the file and non-overlapping)
// and returns Status::io "PATH: key: what is wrong" on any violation.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::io {

struct StTensor {
  std::string dtype = "F32";  // "F32" or "I32"
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // little-endian element data
  size_t numel() const;
  // Typed copies; the dtype must match.
  std::vector<float> as_f32() const;
  std::vector<int32_t> as_i32() const;
  static StTensor f32(std::vector<int64_t> shape, const float* data);
  static StTensor i32(std::vector<int64_t> shape, const int32_t* data);
};

struct StFile {
  std::map<std::string, StTensor> tensors;
  std::map<std::string, std::string> metadata;
};

Status write_safetensors(const std::string& path, const StFile& file);
Result<StFile> read_safetensors(const std::string& path);

}  // namespace mobula::io
