#include "io/synthetic_images.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>
#include <sstream>

#include "core/runtime/files.h"
#include "core/runtime/hash.h"
#include "io/image_shards.h"

namespace mobula::io {

namespace fs = std::filesystem;

namespace {

// Random number k of sample `base` = splitmix64(splitmix64(seed) ^ index).
uint64_t draw(uint64_t base, uint64_t k) {
  return splitmix64(base ^ splitmix64(k));
}
double uniform(uint64_t base, uint64_t k) {
  return static_cast<double>(draw(base, k) >> 11) * 0x1.0p-53;
}

}  // namespace

// ---- Procedural images ---------------------------------------------------------------------------

const char* synth_class_name(int label) {
  static const char* const kNames[kSynthClasses] = {"disc", "square", "triangle", "ring"};
  return label >= 0 && label < kSynthClasses ? kNames[label] : "?";
}

Image synth_image(uint64_t seed, uint64_t index, int size, int* label) {
  if (size < kSynthMinSize || size > kSynthMaxSize) {
    std::fprintf(stderr, "mobula: internal error: synth_image size %d outside [%d, %d]\n", size, kSynthMinSize,
                 kSynthMaxSize);
    std::abort();
  }
  const uint64_t base = splitmix64(splitmix64(seed) ^ index);
  const int cls = static_cast<int>(draw(base, 0) % kSynthClasses);
  if (label) *label = cls;
  // Dark background with a bright shape, or the reverse: channel bands [0, 110] and [145, 255], so
  // the shape differs from the background by >= 35 per channel everywhere.
  const bool dark = draw(base, 1) & 1;
  auto band = [&](uint64_t k, bool low) {
    std::array<double, 3> c{};
    const uint64_t h = draw(base, k);
    for (int i = 0; i < 3; ++i) {
      const double u = static_cast<double>((h >> (16 * i)) & 0xffff) / 65535.0;
      c[size_t(i)] = low ? 110.0 * u : 145.0 + 110.0 * u;
    }
    return c;
  };
  const auto bg0 = band(2, dark), bg1 = band(3, dark), fg = band(4, !dark);
  const double dir = 2 * std::numbers::pi * uniform(base, 5), dcos = std::cos(dir), dsin = std::sin(dir);
  const double s = size;
  const double r = s * (0.15 + 0.15 * uniform(base, 6));
  const double cx = r + (s - 2 * r) * uniform(base, 7), cy = r + (s - 2 * r) * uniform(base, 8);
  const double rot = 2 * std::numbers::pi * uniform(base, 9), rcos = std::cos(rot), rsin = std::sin(rot);
  // Triangle: equilateral, circumradius r, inside iff the point is within r/2 (the inradius) of the
  // centre along each of the three edge normals.
  double ncos[3], nsin[3];
  for (int k = 0; k < 3; ++k) {
    ncos[k] = std::cos(std::numbers::pi / 2 + 2 * std::numbers::pi * k / 3);
    nsin[k] = std::sin(std::numbers::pi / 2 + 2 * std::numbers::pi * k / 3);
  }
  auto inside = [&](double px, double py) {
    const double dx = px - cx, dy = py - cy;
    const double u = dx * rcos + dy * rsin, v = -dx * rsin + dy * rcos;
    const double d2 = dx * dx + dy * dy;
    switch (cls) {
      case 0:
        return d2 <= r * r;
      case 1:
        return std::abs(u) <= 0.75 * r && std::abs(v) <= 0.75 * r;
      case 2:
        for (int k = 0; k < 3; ++k)
          if (u * ncos[k] + v * nsin[k] > 0.5 * r) return false;
        return true;
      default:
        return d2 <= r * r && d2 >= 0.3025 * r * r;  // ring: inner radius 0.55 r
    }
  };
  Image im;
  im.width = im.height = size;
  im.channels = 3;
  im.pixels.resize(size_t(size) * size_t(size) * 3);
  uint8_t* p = im.pixels.data();
  for (int y = 0; y < size; ++y) {
    for (int x = 0; x < size; ++x) {
      const double px = x + 0.5, py = y + 0.5;
      const bool in = inside(px, py);
      const double t =
          std::clamp(((px / s - 0.5) * dcos + (py / s - 0.5) * dsin) / std::numbers::sqrt2 + 0.5, 0.0, 1.0);
      const uint64_t noise = draw(base, 1000 + uint64_t(y) * uint64_t(size) + uint64_t(x));
      for (int c = 0; c < 3; ++c) {
        const double v = in ? fg[size_t(c)] : bg0[size_t(c)] + (bg1[size_t(c)] - bg0[size_t(c)]) * t;
        const int n = static_cast<int>((noise >> (8 * c)) & 15) - 8;  // -8..7
        *p++ = static_cast<uint8_t>(std::clamp(static_cast<int>(std::lround(v)) + n, 0, 255));
      }
    }
  }
  return im;
}

int64_t near_duplicate_source(uint64_t seed, uint64_t index, int percent) {
  if (index == 0 || percent <= 0) return -1;
  const uint64_t base = splitmix64(splitmix64(seed ^ 0x6475706c6963ULL) ^ index);
  if (int(draw(base, 0) % 100) >= percent) return -1;
  const uint64_t j = draw(base, 1) % index;
  const int64_t root = near_duplicate_source(seed, j, percent);  // a copy of a copy: of the original
  return root >= 0 ? root : static_cast<int64_t>(j);
}

Image synth_sample(uint64_t seed, uint64_t index, int size, int duplicate_percent, int* label) {
  const int64_t j = near_duplicate_source(seed, index, duplicate_percent);
  if (j < 0) return synth_image(seed, index, size, label);
  Image im = synth_image(seed, uint64_t(j), size, label);
  const uint64_t base = splitmix64(splitmix64(seed ^ 0x6e6f697365ULL) ^ index);
  for (size_t p = 0; p < im.pixels.size(); ++p) {
    const int v = int(im.pixels[p]) + int(draw(base, p) % 5) - 2;
    im.pixels[p] = static_cast<uint8_t>(std::clamp(v, 0, 255));
  }
  return im;
}

Status generate_synthetic_dataset(const std::string& dir, uint64_t count, uint64_t per_shard, int size, uint64_t seed,
                                  const std::string& encoding, int duplicate_percent) {
  if (count == 0 || per_shard == 0)
    return Status::invalid_argument(dir + ": count and per_shard must be positive (got " + std::to_string(count) +
                                    ", " + std::to_string(per_shard) + ")");
  if (size < kSynthMinSize || size > kSynthMaxSize)
    return Status::invalid_argument(dir + ": image size " + std::to_string(size) + " outside [" +
                                    std::to_string(kSynthMinSize) + ", " + std::to_string(kSynthMaxSize) + "]");
  if (encoding != "png" && encoding != "jpeg")
    return Status::invalid_argument(dir + ": encoding '" + encoding + "'; use \"png\" or \"jpeg\"");
  constexpr int kQuality = 90;
  const uint64_t shards = (count + per_shard - 1) / per_shard;
  std::string generator = "synth seed=" + std::to_string(seed) + " size=" + std::to_string(size) +
                          " classes=disc,square,triangle,ring encoding=" + encoding;
  if (encoding == "jpeg") generator += " quality=" + std::to_string(kQuality);
  nlohmann::ordered_json desc = {{"format", "mobula-image-dataset"},
                                 {"version", 1},
                                 {"generator", generator},
                                 {"seed", seed},
                                 {"count", count},
                                 {"per_shard", per_shard},
                                 {"shards", shards},
                                 {"size", size},
                                 {"channels", 3},
                                 {"encoding", encoding},
                                 {"classes", {"disc", "square", "triangle", "ring"}},
                                 {"shard_files", "shard-NNNNN.h5"}};
  if (encoding == "jpeg") desc["jpeg_quality"] = kQuality;
  if (duplicate_percent > 0) {
    desc["duplicate_percent"] = duplicate_percent;
    nlohmann::ordered_json dups = nlohmann::ordered_json::array();
    for (uint64_t i = 0; i < count; ++i)
      if (const int64_t j = near_duplicate_source(seed, i, duplicate_percent); j >= 0) dups.push_back({i, j});
    desc["near_duplicates"] = dups;
  }

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::io(dir + ": cannot create the directory: " + ec.message());
  const fs::path json_path = fs::path(dir) / "dataset.json";
  if (fs::exists(json_path, ec)) {
    std::ifstream in(json_path);
    std::stringstream ss;
    ss << in.rdbuf();
    const auto old = nlohmann::ordered_json::parse(ss.str(), nullptr, false);
    if (!old.is_discarded() && old == desc) return Status::ok();  // already generated, same parameters
    return Status::invalid_argument(json_path.string() + ": the directory holds a different dataset (" +
                                    (old.is_discarded() ? std::string("unreadable dataset.json") : old.dump()) +
                                    "); remove it or choose another directory");
  }
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    uint64_t k = 0;
    if (parse_shard_file_name(e.path().filename().string(), &k))
      return Status::invalid_argument(dir + ": holds shard files (" + e.path().filename().string() +
                                      ") but no dataset.json (an interrupted or foreign dataset); remove them or "
                                      "choose another directory");
  }
  for (uint64_t k = 0; k < shards; ++k) {
    const uint64_t first = k * per_shard, n = std::min(per_shard, count - first);
    std::vector<std::vector<uint8_t>> enc(n);
    std::vector<int32_t> labels(n);
    for (uint64_t j = 0; j < n; ++j) {
      int label = 0;
      const Image im = synth_sample(seed, first + j, size, duplicate_percent, &label);
      auto bytes = encoding == "png" ? encode_png(im) : encode_jpeg(im, kQuality);
      if (!bytes) return Status::io(dir + ": sample " + std::to_string(first + j) + ": " + bytes.status().message());
      enc[j] = std::move(*bytes);
      labels[j] = label;
    }
    MOBULA_RETURN_IF_ERROR(
        write_shard((fs::path(dir) / shard_file_name(k)).string(), first, enc, labels, encoding, generator));
  }
  return write_file_atomically(json_path, desc.dump(2) + "\n", true);
}

}  // namespace mobula::io
