#include "rl/api/sampling_client.h"

#include <string>

namespace mobula::rl {

Result<std::unique_ptr<SamplingClient>> SamplingClient::create(const GptConfig& cfg, int max_rows) {
  auto s = Sampler<>::create(cfg, max_rows, cfg.max_seq);
  if (!s) return s.status();
  std::unique_ptr<SamplingClient> c(new SamplingClient(cfg, std::move(s).value()));
  c->params_ =
      Kokkos::View<float*>("sampling_client_params", gpt_tensors(cfg).back().offset + gpt_tensors(cfg).back().size());
  return c;
}

Status SamplingClient::set_weights(std::span<const float> params, int64_t version) {
  if (params.size() != params_.extent(0))
    return Status::invalid_argument("SamplingClient::set_weights: " + std::to_string(params.size()) +
                                    " parameters, the model has " + std::to_string(params_.extent(0)));
  Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> src(params.data(),
                                                                                             params.size());
  Kokkos::deep_copy(params_, src);
  version_ = version;
  return Status::ok();
}

Future<std::vector<Sample>> SamplingClient::sample(const std::vector<std::vector<int>>& prompts, int num_samples,
                                                   const SamplingParams& params, const std::vector<uint64_t>& seeds) {
  std::promise<Result<std::vector<Sample>>> p;
  Future<std::vector<Sample>> f = p.get_future().share();
  if (version_ < 0) {
    p.set_value(Status::invalid_argument("sample: no weights yet (set_weights first)"));
  } else if (prompts.empty()) {
    p.set_value(std::vector<Sample>{});
  } else {
    p.set_value(sampler_.sample_groups(params_, prompts, num_samples, seeds, params));
  }
  return f;
}

}  // namespace mobula::rl
