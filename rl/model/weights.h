// Model weights as safetensors (docs/formats/safetensors.md): one F32 tensor per entry of the
// parameter table (gpt_tensors(): "wte", "wpe", "h.<l>.qkvw", ...), shapes as in the table, and
// metadata {"format": "mobula-gpt", "format_version": "1", "vocab", "max_seq", "layers", "heads",
// "d_model", "mlp_ratio"}.
#pragma once

#include <Kokkos_Core.hpp>
#include <string>

#include "rl/model/gpt.h"

namespace mobula::rl {

// Writes `params` (laid out by gpt_tensors(cfg)) atomically to `path`.
Status save_weights(const std::string& path, const GptConfig& cfg, const Kokkos::View<float*>& params);
// Reads the config stored in a weights file.
Result<GptConfig> read_weights_config(const std::string& path);
// Loads into `params`; the file's config, tensor names and shapes must match `cfg` exactly.
Status load_weights(const std::string& path, const GptConfig& cfg, const Kokkos::View<float*>& params);

}  // namespace mobula::rl
