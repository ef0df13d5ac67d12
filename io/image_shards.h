// Image shards on disk: HDF5 files of encoded images plus labels (format in
// docs/formats/images.md), and a dataset of shards.
//
// Contract
//  * Local, no MPI: shards are opened with HDF5's default (serial, sec2) file access, read-only, so
//    any number of ranks can read the same shards independently.
//  * Errors are returned as one-line Status "PATH: what is wrong; what to do".
//  * ShardReader/ImageDataset are not thread-safe: HDF5 is built without thread safety on Debian,
//    so use one object per thread and not concurrently.
//  * write_shard is atomic: DIR/.NAME.tmp is written, fsynced and renamed over PATH (then the
//    directory is fsynced), so readers see the old shard or the new one, never half of one.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/runtime/status.h"
#include "io/hdf5.h"
#include "io/image_codecs.h"

namespace mobula::io {

inline constexpr const char* kShardFormat = "mobula-image-shard";
inline constexpr int64_t kShardVersion = 1;

// Writes one shard: sample j is encoded[j] with labels[j], global index first_index + j.
// `encoding` ("png" or "jpeg") must match every sample (checked from its header, which also gives
// the /width and /height datasets); `generator` is free text recorded as an attribute. The
// directory of `path` must exist. Refuses an empty shard.
Status write_shard(const std::string& path, uint64_t first_index, const std::vector<std::vector<uint8_t>>& encoded,
                   const std::vector<int32_t>& labels, const std::string& encoding, const std::string& generator);

class ShardReader {
 public:
  // Opens read-only and validates the whole index (attributes, dataset shapes and types, offsets);
  // /offsets, /labels and the optional /width, /height are loaded into memory, /data stays on disk.
  static Result<ShardReader> open(const std::string& path);

  const std::string& path() const { return path_; }
  uint64_t count() const { return labels_.size(); }
  uint64_t first_index() const { return first_index_; }
  const std::string& encoding() const { return encoding_; }
  const std::string& generator() const { return generator_; }
  // Encoded bytes of local sample i (0 <= i < count()): one hyperslab read of /data.
  Result<std::vector<uint8_t>> read(uint64_t i);
  // Label of local sample i; -1 when i >= count().
  int32_t label(uint64_t i) const { return i < labels_.size() ? labels_[i] : -1; }
  // From /width, /height; -1 when the shard has no such datasets or i >= count().
  int32_t width(uint64_t i) const { return i < widths_.size() ? widths_[i] : -1; }
  int32_t height(uint64_t i) const { return i < heights_.size() ? heights_[i] : -1; }

 private:
  std::string path_, encoding_, generator_;
  uint64_t first_index_ = 0;
  std::vector<uint64_t> offsets_;
  std::vector<int32_t> labels_, widths_, heights_;
  Handle file_;  // declared before data_: data_ is closed first
  Handle data_;
};

// The shards DIR/shard-NNNNN.h5 (5 or more digits) of one dataset; they must tile [0, size())
// without gaps or overlaps (checked by first_index/count, whatever the file numbers). Every shard
// stays open (one file descriptor each). Hidden files (.shard-*.tmp of a writer) are ignored.
class ImageDataset {
 public:
  static Result<ImageDataset> open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  uint64_t size() const { return size_; }
  size_t shard_count() const { return shards_.size(); }
  Result<std::vector<uint8_t>> read(uint64_t global_index);
  int32_t label(uint64_t global_index) const;  // -1 when out of range

 private:
  // Shard holding global_index, or -1.
  long find(uint64_t global_index) const;
  std::string dir_;
  uint64_t size_ = 0;
  std::vector<ShardReader> shards_;  // sorted by first_index
};

// Shard file name for shard number k: "shard-00000.h5"; and back (false for any other name).
std::string shard_file_name(uint64_t k);
bool parse_shard_file_name(const std::string& name, uint64_t* k);

}  // namespace mobula::io
