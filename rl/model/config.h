// Shape of a GPT-style decoder-only transformer.
#pragma once

#include <cstddef>
#include <string>

#include "core/runtime/status.h"

namespace mobula::rl {

struct GptConfig {
  int vocab = 64;     // V: tokens
  int max_seq = 128;  // T_max: context length (learned positions)
  int layers = 4;     // L
  int heads = 4;      // NH; head size hs = C / NH
  int d_model = 256;  // C
  int mlp_ratio = 4;  // hidden width of the MLP = mlp_ratio * C

  int head_size() const { return d_model / heads; }
  int hidden() const { return mlp_ratio * d_model; }
  // One-line error naming the offending field, or OK.
  Status validate() const;
  std::string to_string() const;
};

// Hands out consecutive offsets inside one flat buffer (activation and workspace layouts).
struct Offsets {
  size_t total = 0;
  size_t take(size_t n) {
    const size_t at = total;
    total += n;
    return at;
  }
};

}  // namespace mobula::rl
