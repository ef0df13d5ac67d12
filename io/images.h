// Images for the embedding stages: PNG/JPEG encode/decode (libpng, libjpeg-turbo), a procedural
// dataset generator (no download needed for demos and tests), and image shards on disk (HDF5 files
// of encoded images plus labels; format in docs/formats/images.md).
//
// Contract
//  * Local, no MPI: shards are opened with HDF5's default (serial, sec2) file access, read-only, so
//    any number of ranks can read the same shards independently.
//  * Errors are returned as one-line Status "PATH: what is wrong; what to do" (decoders: "png: ...",
//    "jpeg: ..."); nothing throws, and libpng/libjpeg errors never exit() or print.
//  * Decoders are reentrant (no shared state). ShardReader/ImageDataset are not thread-safe: HDF5 is
//    built without thread safety on Debian, so use one object per thread and not concurrently.
//  * write_shard is atomic: DIR/.NAME.tmp is written, fsynced and renamed over PATH (then the
//    directory is fsynced), so readers see the old shard or the new one, never half of one.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/runtime/status.h"
#include "io/hdf5.h"

namespace mobula::io {

// 8-bit pixels, row-major HWC (channels 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA).
struct Image {
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;
};

// Decoded images above this many bytes (width * height * channels) are refused before allocating
// (a small corrupt or hostile header must not allocate gigabytes).
inline constexpr uint64_t kMaxImageBytes = uint64_t{1} << 28;

// PNG through the libpng "simplified" API. Decode keeps the file's channel layout (gray, gray+alpha,
// RGB, RGBA; palettes expanded), converts 16-bit to 8-bit and applies the file's gamma (none for the
// sRGB files encode_png writes, so encode -> decode is exact).
Result<std::vector<uint8_t>> encode_png(const Image& image);
Result<Image> decode_png(std::span<const uint8_t> bytes);

// Baseline JPEG, channels 1 (gray) or 3 (RGB); quality 1..100. Decode gives 1 channel for gray
// files, 3 (RGB) otherwise; CMYK files are refused. Corrupt data is an error, including what
// libjpeg only warns about (a truncated file would otherwise decode with a gray bottom).
Result<std::vector<uint8_t>> encode_jpeg(const Image& image, int quality);
Result<Image> decode_jpeg(std::span<const uint8_t> bytes);

// Sniffs the magic bytes: PNG (89 50 4E 47 0D 0A 1A 0A) or JPEG (FF D8 FF); anything else fails.
Result<Image> decode_image(std::span<const uint8_t> bytes);

// Width/height/channels from the header only (cheap); `encoding` is "png" or "jpeg".
struct ImageInfo {
  int width = 0, height = 0, channels = 0;
  std::string encoding;
};
Result<ImageInfo> probe_image(std::span<const uint8_t> bytes);

// Procedural images. Classes (the label): 0 disc, 1 square, 2 triangle, 3 ring.
inline constexpr int kSynthClasses = 4;
inline constexpr int kSynthMinSize = 8, kSynthMaxSize = 4096;
const char* synth_class_name(int label);  // "disc", "square", "triangle", "ring"; "?" otherwise

// A size x size RGB image: a two-colour gradient background in a random direction plus one shape
// of class `*label` (random centre, size and colour, kept distinct from the background) and mild
// per-pixel noise. A pure function of (seed, index): every random number is splitmix64 of
// (seed, index, k), no state outside the call. `label` may be null. Aborts (an invariant, like
// Result::value()) if size is outside [kSynthMinSize, kSynthMaxSize].
Image synth_image(uint64_t seed, uint64_t index, int size, int* label);

// ---- Shards ----------------------------------------------------------------------------------

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

// Shard file name for shard number k: "shard-00000.h5".
std::string shard_file_name(uint64_t k);

// Writes ceil(count / per_shard) shards of synth_image(seed, i, size) encoded as `encoding` ("png",
// or "jpeg" at quality 90) to DIR (created if needed), then DIR/dataset.json describing them
// (written last, atomically: its presence means the dataset is complete). If DIR already holds a
// dataset.json with exactly these parameters it does nothing; if it holds any other dataset.json or
// shard files it refuses (no silent mix of two datasets). Call it on one rank.
Status generate_synthetic_dataset(const std::string& dir, uint64_t count, uint64_t per_shard, int size, uint64_t seed,
                                  const std::string& encoding);

}  // namespace mobula::io
