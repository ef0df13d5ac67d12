#include "rl/api/training_client.h"

#include <algorithm>

#include "io/safetensors.h"
#include "rl/model/weights.h"

namespace mobula::rl {

TrainingClient::TrainingClient(const ClientOptions& o) : opts_(o) {}

Result<std::unique_ptr<TrainingClient>> TrainingClient::create_local(const ClientOptions& opts) {
  std::unique_ptr<TrainingClient> c(new TrainingClient(opts));
  auto m = Gpt<>::create(opts.model, opts.max_batch, opts.recompute);
  if (!m) return m.status();
  c->model_ = std::make_unique<Gpt<>>(std::move(m).value());
  c->model_->init(opts.seed);
  c->opt_ = std::make_unique<AdamW<>>(AdamWConfig{}, c->model_->tensors(), c->model_->num_params());
  auto s = Sampler<>::create(opts.model, opts.sample_rows, opts.model.max_seq);
  if (!s) return s.status();
  c->sampler_ = std::make_unique<Sampler<>>(std::move(s).value());
  c->worker_ = std::thread([p = c.get()] { p->run(); });
  return c;
}

Result<std::unique_ptr<TrainingClient>> TrainingClient::create_spmd(const ClientOptions& opts, GradientGroup& group,
                                                                    SamplerSink* sink) {
  std::unique_ptr<TrainingClient> c(new TrainingClient(opts));
  auto m = Gpt<>::create(opts.model, opts.microbatch > 0 ? opts.microbatch : opts.max_batch, opts.recompute);
  if (!m) return m.status();
  c->model_ = std::make_unique<Gpt<>>(std::move(m).value());
  c->model_->init(opts.seed);  // the same seed on every member: identical replicas
  c->opt_ = std::make_unique<AdamW<>>(AdamWConfig{}, c->model_->tensors(), c->model_->num_params());
  c->group_ = &group;
  c->sink_ = sink;
  return c;  // no worker thread: calls run on the caller's thread (see the header)
}

TrainingClient::~TrainingClient() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();  // drains every call already submitted
}

void TrainingClient::run() {
  while (true) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and drained
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job();
  }
}

template <class T>
Future<T> TrainingClient::submit(std::function<Result<T>()> fn) {
  auto promise = std::make_shared<std::promise<Result<T>>>();
  Future<T> fut = promise->get_future().share();
  if (!worker_.joinable()) {  // SPMD: in order on the caller's thread
    promise->set_value(fn());
    return fut;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    queue_.emplace_back([promise, fn = std::move(fn)] { promise->set_value(fn()); });
  }
  cv_.notify_one();
  return fut;
}

Future<ForwardBackwardOutput> TrainingClient::forward_backward(std::vector<Datum> batch, LossConfig loss) {
  return submit<ForwardBackwardOutput>([this, batch = std::move(batch), loss]() -> Result<ForwardBackwardOutput> {
    if (group_ && opts_.shards > 0) return forward_backward_shards(batch, loss);
    double tokens = 0;
    auto out = forward_backward_batch(*model_, batch, loss, &tokens);
    if (!group_ && !out) return out;
    if (group_) {
      // The group's statistics: token-weighted sums, added up in rank order on every member. A
      // member whose share failed still joins the sum (so nobody waits for it) and every member
      // returns an error.
      const bool ok = out.is_ok();
      const LossStats st0 = ok ? out->stats : LossStats{};
      if (!ok) tokens = 0;
      double sums[6] = {tokens,          st0.loss * tokens,       st0.clip_fraction * tokens,
                        st0.kl * tokens, st0.mean_ratio * tokens, ok ? 0.0 : 1.0};
      MOBULA_RETURN_IF_ERROR(group_->sum(std::span<double>(sums, 6)));
      if (!ok) return out;
      if (sums[5] > 0)
        return Status::invalid_argument("forward_backward: " + std::to_string(static_cast<int>(sums[5])) +
                                        " other member(s) of the trainer group failed (see their errors)");
      LossStats& st = out->stats;
      tokens = sums[0];
      st.tokens = static_cast<long>(tokens);
      if (tokens > 0) {
        st.loss = sums[1] / tokens;
        st.clip_fraction = sums[2] / tokens;
        st.kl = sums[3] / tokens;
        st.mean_ratio = sums[4] / tokens;
      }
    }
    tokens_since_step_ += tokens;
    return out;
  });
}

Future<std::vector<std::vector<float>>> TrainingClient::forward(std::vector<Datum> batch) {
  return submit<std::vector<std::vector<float>>>(
      [this, batch = std::move(batch)]() { return forward_batch(*model_, batch); });
}

Future<bool> TrainingClient::with_state(std::function<Status(TrainingState&)> fn) {
  return submit<bool>([this, fn = std::move(fn)]() -> Result<bool> {
    TrainingState st{*model_, *opt_};
    MOBULA_RETURN_IF_ERROR(fn(st));
    return true;
  });
}

Future<OptimStepOutput> TrainingClient::optim_step(AdamParams p) {
  return submit<OptimStepOutput>([this, p]() -> Result<OptimStepOutput> {
    if (tokens_since_step_ <= 0) return Status::invalid_argument("optim_step: no trained tokens since the last step");
    if (group_ && !reduced_)  // data parallelism: the gradient token sums of the whole group
      MOBULA_RETURN_IF_ERROR(group_->sum(std::span<float>(model_->grads.data(), model_->grads.extent(0))));
    AdamWConfig c;
    c.lr = p.lr;
    c.beta1 = p.beta1;
    c.beta2 = p.beta2;
    c.eps = p.eps;
    c.weight_decay = p.weight_decay;
    c.grad_clip = p.grad_clip;
    opt_->set_config(c);
    OptimStepOutput out;
    out.grad_norm = step_token_mean(*model_, *opt_, tokens_since_step_);
    out.step = opt_->steps_done();
    model_->zero_grad();
    tokens_since_step_ = 0;
    reduced_ = false;
    return out;
  });
}

// Each of this member's shards through the model on its own (model grads as scratch), summed with
// the other members' in the fixed tree (GradientGroup::sum_shards); then the loss statistics the
// same way. A shard that fails still joins both sums, with zeros and a failure count, so no member
// waits for it and every member returns an error.
Result<ForwardBackwardOutput> TrainingClient::forward_backward_shards(const std::vector<Datum>& batch,
                                                                      const LossConfig& loss) {
  if (reduced_)
    return Status::invalid_argument(
        "forward_backward: with shards, one call per optim_step (the group's gradient "
        "is reduced already)");
  const ShardRange mine = shards_of(group_->member(), group_->members(), opts_.shards);
  // batch[begin[i] .. begin[i + 1]) is shard mine.first + i.
  std::vector<size_t> begin(size_t(mine.size()) + 1, 0);
  size_t at = 0;
  for (int i = 0; i < mine.size(); ++i) {
    begin[size_t(i)] = at;
    while (at < batch.size() && batch[at].shard == mine.first + i) ++at;
  }
  begin[size_t(mine.size())] = at;
  if (at != batch.size())
    return Status::invalid_argument("forward_backward: datum " + std::to_string(at) + " is of shard " +
                                    std::to_string(batch[at].shard) + "; this member holds shards " +
                                    std::to_string(mine.first) + ".." + std::to_string(mine.end - 1) +
                                    ", and the batch must be ordered by shard");
  ForwardBackwardOutput out;
  Status first_error = Status::ok();
  std::vector<double> stats(size_t(mine.size()) * 6, 0.0);  // per shard: tokens, 4 token-weighted means, failed
  const size_t n = model_->grads.extent(0);
  MOBULA_RETURN_IF_ERROR(group_->sum_shards(
      opts_.shards,
      [&](int s, std::span<float> value) -> Status {
        const size_t i = size_t(s - mine.first);
        const auto part = std::span<const Datum>(batch).subspan(begin[i], begin[i + 1] - begin[i]);
        model_->zero_grad();
        double tokens = 0;
        double* st = &stats[i * 6];
        if (!part.empty()) {
          auto r = forward_backward_batch(*model_, part, loss, &tokens);
          if (r) {
            const LossStats& ls = r->stats;
            st[0] = tokens, st[1] = ls.loss * tokens, st[2] = ls.clip_fraction * tokens;
            st[3] = ls.kl * tokens, st[4] = ls.mean_ratio * tokens;
            for (auto& lp : r->logprobs) out.logprobs.push_back(std::move(lp));
          } else {
            if (first_error.is_ok()) first_error = r.status();
            model_->zero_grad();
            st[5] = 1;
          }
        }
        std::copy_n(model_->grads.data(), n, value.begin());
        return Status::ok();
      },
      std::span<float>(model_->grads.data(), n)));
  double sums[6] = {0, 0, 0, 0, 0, 0};
  MOBULA_RETURN_IF_ERROR(group_->sum_shards(
      opts_.shards,
      [&](int s, std::span<double> value) {
        std::copy_n(&stats[size_t(s - mine.first) * 6], 6, value.begin());
        return Status::ok();
      },
      std::span<double>(sums, 6)));
  reduced_ = sums[0] > 0;  // no token anywhere: nothing accumulated, the next call starts afresh
  if (!first_error.is_ok()) return first_error;
  if (sums[5] > 0)
    return Status::invalid_argument("forward_backward: " + std::to_string(static_cast<int>(sums[5])) +
                                    " shard(s) failed on other member(s) of the trainer group (see their errors)");
  LossStats& st = out.stats;
  st.tokens = static_cast<long>(sums[0]);
  if (sums[0] > 0) {
    st.loss = sums[1] / sums[0];
    st.clip_fraction = sums[2] / sums[0];
    st.kl = sums[3] / sums[0];
    st.mean_ratio = sums[4] / sums[0];
  }
  tokens_since_step_ += sums[0];
  return out;
}

Future<std::vector<Sample>> TrainingClient::sample(std::vector<std::vector<int>> prompts, int num_samples,
                                                   SamplingParams params, uint64_t seed) {
  return submit<std::vector<Sample>>(
      [this, prompts = std::move(prompts), num_samples, params, seed]() -> Result<std::vector<Sample>> {
        if (!sampler_) return Status::invalid_argument("sample: this client has no sampler (SPMD trainer backend)");
        if (num_samples < 1 || num_samples > opts_.sample_rows)
          return Status::invalid_argument("sample: num_samples must be 1.." + std::to_string(opts_.sample_rows));
        std::vector<Sample> out;
        const size_t per_call = static_cast<size_t>(opts_.sample_rows / num_samples);
        for (size_t p0 = 0; p0 < prompts.size(); p0 += per_call) {
          const size_t P = std::min(per_call, prompts.size() - p0);
          std::vector<std::vector<int>> chunk(prompts.begin() + long(p0), prompts.begin() + long(p0 + P));
          std::vector<uint64_t> seeds;
          for (size_t p = 0; p < P; ++p)
            for (int g = 0; g < num_samples; ++g)
              seeds.push_back(seed * 0x9E3779B97F4A7C15ull + (p0 + p) * 1000003ull + static_cast<uint64_t>(g));
          auto r = sampler_->sample_groups(model_->params, chunk, num_samples, seeds, params);
          if (!r) return r.status();
          for (auto& s : *r) out.push_back(std::move(s));
        }
        return out;
      });
}

Future<std::string> TrainingClient::save_weights_for_sampler(std::string path) {
  return submit<std::string>([this, path]() -> Result<std::string> {
    if (sink_) {
      MOBULA_RETURN_IF_ERROR(sink_->publish(std::span<const float>(model_->params.data(), model_->num_params()), path));
      return path;
    }
    MOBULA_RETURN_IF_ERROR(save_weights(path, opts_.model, model_->params));
    return path;
  });
}

namespace {
void put_buffer(io::StFile& f, const std::string& prefix, const std::vector<TensorInfo>& table,
                const Kokkos::View<float*>& buf) {
  auto h = Kokkos::create_mirror_view(buf);
  Kokkos::deep_copy(h, buf);
  for (const auto& t : table)
    f.tensors[prefix + t.name] =
        io::StTensor::f32(std::vector<int64_t>(t.shape.begin(), t.shape.end()), h.data() + t.offset);
}
Status get_buffer(const io::StFile& f, const std::string& path, const std::string& prefix,
                  const std::vector<TensorInfo>& table, const Kokkos::View<float*>& buf) {
  auto h = Kokkos::create_mirror_view(buf);
  for (const auto& t : table) {
    auto it = f.tensors.find(prefix + t.name);
    if (it == f.tensors.end() || it->second.numel() != t.size() || it->second.dtype != "F32")
      return Status::io(path + ": " + prefix + t.name + ": missing or wrong shape");
    const auto v = it->second.as_f32();
    std::copy(v.begin(), v.end(), h.data() + t.offset);
  }
  Kokkos::deep_copy(buf, h);
  return Status::ok();
}
}  // namespace

Future<std::string> TrainingClient::save_state(std::string path) {
  return submit<std::string>([this, path]() -> Result<std::string> {
    io::StFile f;
    put_buffer(f, "param.", model_->tensors(), model_->params);
    put_buffer(f, "adam_m.", model_->tensors(), opt_->m);
    put_buffer(f, "adam_v.", model_->tensors(), opt_->v);
    f.metadata = {{"format", "mobula-training-state"},
                  {"format_version", "1"},
                  {"step", std::to_string(opt_->steps_done())},
                  {"model", opts_.model.to_string()}};
    MOBULA_RETURN_IF_ERROR(io::write_safetensors(path, f));
    return path;
  });
}

Future<std::string> TrainingClient::load_state(std::string path) {
  return submit<std::string>([this, path]() -> Result<std::string> {
    auto f = io::read_safetensors(path);
    if (!f) return f.status();
    if (f->metadata["format"] != "mobula-training-state" || f->metadata["model"] != opts_.model.to_string())
      return Status::invalid_argument(path + ": not a training state of this model (" + opts_.model.to_string() + ")");
    MOBULA_RETURN_IF_ERROR(get_buffer(*f, path, "param.", model_->tensors(), model_->params));
    MOBULA_RETURN_IF_ERROR(get_buffer(*f, path, "adam_m.", model_->tensors(), opt_->m));
    MOBULA_RETURN_IF_ERROR(get_buffer(*f, path, "adam_v.", model_->tensors(), opt_->v));
    try {
      opt_->set_steps_done(std::stoi(f->metadata["step"]));
    } catch (const std::exception&) {
      return Status::io(path + ": __metadata__.step: not an integer");
    }
    model_->zero_grad();
    tokens_since_step_ = 0;
    reduced_ = false;
    return path;
  });
}

}  // namespace mobula::rl
