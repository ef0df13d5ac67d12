// PNG/JPEG encode/decode for the embedding stages (libpng, libjpeg-turbo).
//
// Contract
//  * Local, no MPI. Errors are returned as one-line Status ("png: ...", "jpeg: ..."); nothing
//    throws, and libpng/libjpeg errors never exit() or print.
//  * Decoders are reentrant (no shared state).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/runtime/status.h"

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

}  // namespace mobula::io
