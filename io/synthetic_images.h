// A procedural image dataset (no download needed for demos and tests): images that are pure
// functions of (seed, index), written as image shards (io/image_shards.h).
#pragma once

#include <cstdint>
#include <string>

#include "core/runtime/status.h"
#include "io/image_codecs.h"

namespace mobula::io {

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

// Near-duplicates for curation tests and demos: sample i > 0 is, with probability percent / 100
// (a pure function of (seed, i)), a near-duplicate of an earlier ORIGINAL sample j: j's image with
// every pixel channel moved by at most 2 levels. Returns j, or -1 when i is an original.
int64_t near_duplicate_source(uint64_t seed, uint64_t index, int percent);
// Sample i of such a dataset (synth_image when it is an original).
Image synth_sample(uint64_t seed, uint64_t index, int size, int duplicate_percent, int* label);

// Writes ceil(count / per_shard) shards of synth_sample(seed, i, size, duplicate_percent) encoded
// as `encoding` ("png", or "jpeg" at quality 90) to DIR (created if needed), then DIR/dataset.json
// describing them (written last, atomically: its presence means the dataset is complete; with
// duplicates it lists them as "near_duplicates": [[i, j], ...]). If DIR already holds a dataset.json
// with exactly these parameters it does nothing; if it holds any other dataset.json or shard files
// it refuses (no silent mix of two datasets). Call it on one rank.
Status generate_synthetic_dataset(const std::string& dir, uint64_t count, uint64_t per_shard, int size, uint64_t seed,
                                  const std::string& encoding, int duplicate_percent = 0);

}  // namespace mobula::io
