#include "serve/codec.h"

#include <cmath>

#include "rl/algo/lora_batch.h"

namespace mobula::serve {

namespace {

using nlohmann::json;

// body[key] as T when present (else `fallback`); a wrong type is an error naming the key.
template <class T>
Result<T> field(const json& body, const char* key, T fallback) {
  if (!body.is_object()) return Status::invalid_argument("the body must be a JSON object");
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    return Status::invalid_argument(std::string(key) + ": wrong type (" + it->type_name() + ")");
  }
}

Status finite(const char* key, double v, double lo, double hi) {
  if (!std::isfinite(v) || v < lo || v > hi)
    return Status::invalid_argument(std::string(key) + ": " + std::to_string(v) + " outside [" + std::to_string(lo) +
                                    ", " + std::to_string(hi) + "]");
  return Status::ok();
}

}  // namespace

Result<rl::LossConfig> parse_loss(const json& body) {
  rl::LossConfig l;
  auto loss = field<json>(body, "loss", json::object());
  if (!loss) return loss.status();
  if (!loss->is_object()) return Status::invalid_argument("loss: must be an object {\"fn\": ...}");
  auto fn = field<std::string>(*loss, "fn", "cross_entropy");
  if (!fn) return Status::invalid_argument("loss." + fn.status().message());
  if (*fn == "cross_entropy")
    l.fn = rl::LossFn::kCrossEntropy;
  else if (*fn == "importance_sampling")
    l.fn = rl::LossFn::kImportanceSampling;
  else if (*fn == "ppo")
    l.fn = rl::LossFn::kPpo;
  else
    return Status::invalid_argument("loss.fn: \"" + *fn + "\" is not cross_entropy, importance_sampling or ppo");
  auto lo = field<double>(*loss, "clip_low", 0.2), hi = field<double>(*loss, "clip_high", 0.2),
       kl = field<double>(*loss, "kl_coef", 0.0);
  if (!lo || !hi || !kl) return Status::invalid_argument("loss: clip_low, clip_high and kl_coef must be numbers");
  MOBULA_RETURN_IF_ERROR(finite("loss.clip_low", *lo, 0, 1));
  MOBULA_RETURN_IF_ERROR(finite("loss.clip_high", *hi, 0, 10));
  MOBULA_RETURN_IF_ERROR(finite("loss.kl_coef", *kl, 0, 100));
  l.clip_low = float(*lo);
  l.clip_high = float(*hi);
  l.kl_coef = float(*kl);
  return l;
}

Result<std::vector<rl::Datum>> parse_data(const json& body, const rl::LossConfig& loss, const rl::GptConfig& model,
                                          int max_rows, bool backward) {
  auto data = field<json>(body, "data", json());
  if (!data) return data.status();
  if (!data->is_array() || data->empty()) return Status::invalid_argument("data: must be a non-empty array of datums");
  if (int(data->size()) > max_rows)
    return Status::invalid_argument("data: " + std::to_string(data->size()) + " datums, at most " +
                                    std::to_string(max_rows) + " per request (serve.max_rows)");
  std::vector<rl::Datum> out;
  for (size_t i = 0; i < data->size(); ++i) {
    const json& j = (*data)[i];
    const std::string at = "data[" + std::to_string(i) + "]";
    rl::Datum d;
    auto tok = field<std::vector<int>>(j, "tokens", {});
    auto tgt = field<std::vector<int>>(j, "target_tokens", {});
    auto w = field<std::vector<float>>(j, "weights", {});
    auto old = field<std::vector<float>>(j, "logprobs_old", {});
    auto adv = field<std::vector<float>>(j, "advantages", {});
    for (const Status& s : {tok.status(), tgt.status(), w.status(), old.status(), adv.status()})
      if (!s) return Status::invalid_argument(at + "." + s.message());
    d.tokens = std::move(*tok);
    d.target_tokens = std::move(*tgt);
    d.weights = std::move(*w);
    d.logprobs_old = std::move(*old);
    d.advantages = std::move(*adv);
    for (const auto* v : {&d.weights, &d.logprobs_old, &d.advantages})
      for (float x : *v)
        if (!std::isfinite(x))
          return Status::invalid_argument(at + ": weights, logprobs_old, advantages must be finite");
    MOBULA_RETURN_IF_ERROR(rl::check_datum(d, i, loss, model, backward));
    out.push_back(std::move(d));
  }
  return out;
}

Result<rl::AdamWConfig> parse_adam(const json& body) {
  rl::AdamWConfig c;
  auto lr = field<double>(body, "lr", 1e-4), b1 = field<double>(body, "beta1", 0.9),
       b2 = field<double>(body, "beta2", 0.95), eps = field<double>(body, "eps", 1e-8),
       wd = field<double>(body, "weight_decay", 0.0), clip = field<double>(body, "grad_clip", 1.0);
  for (const Status& s : {lr.status(), b1.status(), b2.status(), eps.status(), wd.status(), clip.status()})
    if (!s) return s;
  MOBULA_RETURN_IF_ERROR(finite("lr", *lr, 0, 1));
  MOBULA_RETURN_IF_ERROR(finite("beta1", *b1, 0, 0.999999));
  MOBULA_RETURN_IF_ERROR(finite("beta2", *b2, 0, 0.999999));
  MOBULA_RETURN_IF_ERROR(finite("eps", *eps, 1e-12, 1));
  MOBULA_RETURN_IF_ERROR(finite("weight_decay", *wd, 0, 1));
  MOBULA_RETURN_IF_ERROR(finite("grad_clip", *clip, 0, 1e6));
  c.lr = float(*lr);
  c.beta1 = float(*b1);
  c.beta2 = float(*b2);
  c.eps = float(*eps);
  c.weight_decay = float(*wd);
  c.grad_clip = float(*clip);
  return c;
}

Result<SampleRequest> parse_sample(const json& body, const rl::GptConfig& model, int max_rows) {
  SampleRequest r;
  auto prompts = field<std::vector<std::vector<int>>>(body, "prompts", {});
  auto n = field<int>(body, "num_samples", 1), max_tokens = field<int>(body, "max_tokens", 16),
       top_k = field<int>(body, "top_k", 0);
  auto temp = field<double>(body, "temperature", 1.0), top_p = field<double>(body, "top_p", 1.0);
  auto stop = field<std::vector<int>>(body, "stop", {});
  auto seed = field<uint64_t>(body, "seed", 0);
  for (const Status& s : {prompts.status(), n.status(), max_tokens.status(), top_k.status(), temp.status(),
                          top_p.status(), stop.status(), seed.status()})
    if (!s) return s;
  if (prompts->empty()) return Status::invalid_argument("prompts: must be a non-empty array of token arrays");
  if (*n < 1 || int64_t(*n) * int64_t(prompts->size()) > max_rows)
    return Status::invalid_argument("num_samples: " + std::to_string(*n) + " x " + std::to_string(prompts->size()) +
                                    " prompts; at most " + std::to_string(max_rows) + " sequences (serve.sample_rows)");
  for (size_t i = 0; i < prompts->size(); ++i) {
    const auto& p = (*prompts)[i];
    if (p.empty() || int(p.size()) + *max_tokens > model.max_seq)
      return Status::invalid_argument("prompts[" + std::to_string(i) + "]: " + std::to_string(p.size()) +
                                      " tokens + max_tokens " + std::to_string(*max_tokens) +
                                      " must be within the context of " + std::to_string(model.max_seq));
    for (int t : p)
      if (t < 0 || t >= model.vocab)
        return Status::invalid_argument("prompts[" + std::to_string(i) + "]: token " + std::to_string(t) +
                                        " outside the vocabulary [0, " + std::to_string(model.vocab) + ")");
  }
  if (*max_tokens < 1) return Status::invalid_argument("max_tokens: must be at least 1");
  MOBULA_RETURN_IF_ERROR(finite("temperature", *temp, 0, 100));
  MOBULA_RETURN_IF_ERROR(finite("top_p", *top_p, 1e-6, 1));
  if (*top_k < 0 || *top_k > model.vocab) return Status::invalid_argument("top_k: outside 0..vocab");
  r.prompts = std::move(*prompts);
  r.num_samples = *n;
  r.params.max_new_tokens = *max_tokens;
  r.params.temperature = float(*temp);
  r.params.top_k = *top_k;
  r.params.top_p = float(*top_p);
  r.params.stop_tokens = std::move(*stop);
  r.seed = *seed;
  return r;
}

Result<rl::LoraConfig> parse_lora(const json& body, int default_rank, double default_alpha) {
  auto rank = field<int>(body, "rank", default_rank);
  auto alpha = field<double>(body, "alpha", default_alpha);
  auto seed = field<uint64_t>(body, "seed", 0);
  for (const Status& s : {rank.status(), alpha.status(), seed.status()})
    if (!s) return s;
  const rl::LoraConfig c{*rank, float(*alpha), *seed};
  MOBULA_RETURN_IF_ERROR(c.validate());
  return c;
}

Result<std::string> parse_name(const json& body) {
  auto name = field<std::string>(body, "name", "");
  if (!name) return name.status();
  bool ok = !name->empty() && name->size() <= 64 && (*name)[0] != '.';
  for (char c : *name) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.');
  if (!ok)
    return Status::invalid_argument("name: \"" + *name + "\" must be 1..64 characters of A-Za-z0-9_.- (no leading .)");
  return *name;
}

json to_json(const rl::ForwardBackwardOutput& out, bool with_stats) {
  json j = {{"logprobs", out.logprobs}};
  if (with_stats) {
    j["loss"] = out.stats.loss;
    j["tokens"] = out.stats.tokens;
    j["clip_fraction"] = out.stats.clip_fraction;
    j["kl"] = out.stats.kl;
    j["mean_ratio"] = out.stats.mean_ratio;
  }
  return j;
}

json to_json(const std::vector<rl::Sample>& samples) {
  json arr = json::array();
  for (const auto& s : samples)
    arr.push_back({{"tokens", s.tokens}, {"logprobs", s.logprobs}, {"finished_by_length", s.finished_by_length}});
  return {{"samples", arr}};
}

}  // namespace mobula::serve
