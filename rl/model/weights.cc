#include "rl/model/weights.h"

#include "io/safetensors.h"

namespace mobula::rl {

namespace {
std::map<std::string, std::string> config_meta(const GptConfig& c) {
  return {{"format", "mobula-gpt"},
          {"format_version", "1"},
          {"vocab", std::to_string(c.vocab)},
          {"max_seq", std::to_string(c.max_seq)},
          {"layers", std::to_string(c.layers)},
          {"heads", std::to_string(c.heads)},
          {"d_model", std::to_string(c.d_model)},
          {"mlp_ratio", std::to_string(c.mlp_ratio)}};
}
}  // namespace

Status save_weights(const std::string& path, const GptConfig& cfg, const Kokkos::View<float*>& params) {
  auto h = Kokkos::create_mirror_view(params);
  Kokkos::deep_copy(h, params);
  io::StFile f;
  f.metadata = config_meta(cfg);
  for (const auto& t : gpt_tensors(cfg)) {
    if (t.offset + t.size() > h.extent(0))
      return Status::invalid_argument(path + ": parameter buffer smaller than the model");
    f.tensors[t.name] = io::StTensor::f32(std::vector<int64_t>(t.shape.begin(), t.shape.end()), h.data() + t.offset);
  }
  return io::write_safetensors(path, f);
}

Result<GptConfig> read_weights_config(const std::string& path) {
  auto f = io::read_safetensors(path);
  if (!f) return f.status();
  auto get = [&](const char* k) -> Result<int> {
    auto it = f->metadata.find(k);
    if (it == f->metadata.end())
      return Status::io(path + ": __metadata__." + k + ": missing (not a mobula-gpt weights file?)");
    try {
      return std::stoi(it->second);
    } catch (const std::exception&) {
      return Status::io(path + ": __metadata__." + k + ": not an integer: " + it->second);
    }
  };
  GptConfig c;
  for (auto [k, dst] : {std::pair<const char*, int*>{"vocab", &c.vocab},
                        {"max_seq", &c.max_seq},
                        {"layers", &c.layers},
                        {"heads", &c.heads},
                        {"d_model", &c.d_model},
                        {"mlp_ratio", &c.mlp_ratio}}) {
    auto v = get(k);
    if (!v) return v.status();
    *dst = *v;
  }
  if (Status s = c.validate(); !s) return Status::io(path + ": " + s.message());
  return c;
}

Status load_weights(const std::string& path, const GptConfig& cfg, const Kokkos::View<float*>& params) {
  auto stored = read_weights_config(path);
  if (!stored) return stored.status();
  if (stored->to_string() != cfg.to_string())
    return Status::invalid_argument(path + ": weights are for (" + stored->to_string() + "), the model is (" +
                                    cfg.to_string() + ")");
  auto f = io::read_safetensors(path);
  if (!f) return f.status();
  auto h = Kokkos::create_mirror_view(params);
  for (const auto& t : gpt_tensors(cfg)) {
    auto it = f->tensors.find(t.name);
    if (it == f->tensors.end()) return Status::io(path + ": " + t.name + ": tensor missing");
    const std::vector<int64_t> want(t.shape.begin(), t.shape.end());
    if (it->second.dtype != "F32" || it->second.shape != want)
      return Status::io(path + ": " + t.name + ": expected F32 with the table's shape");
    const auto v = it->second.as_f32();
    std::copy(v.begin(), v.end(), h.data() + t.offset);
  }
  Kokkos::deep_copy(params, h);
  return Status::ok();
}

}  // namespace mobula::rl
