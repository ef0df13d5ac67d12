#include "rl/algo/lora_batch.h"

#include <algorithm>
#include <string>

namespace mobula::rl {

namespace {

// A chunk: rows [first, first + rows) of work item `item`, padded to T positions (the bucket of
// its own longest datum).
struct Chunk {
  size_t item, first, rows;
  int T;
};

// Per work item: the sums the stats are made of, accumulated chunk by chunk.
struct Sums {
  double loss = 0, clip = 0, kl = 0, ratio = 0, tokens = 0;
};

// One pass: chunks side by side, one forward (and one backward when any chunk trains).
Status run_pass(Gpt<>& model, std::span<const LoraWork> work, std::span<const Chunk> pass,
                std::vector<LoraWorkResult>& res, std::vector<Sums>& sums) {
  size_t B = 0;
  for (const Chunk& c : pass) B += c.rows;
  const int T = pass.front().T;  // every chunk of a pass has the same (see forward_backward_lora)
  const size_t N = B * size_t(T);
  std::vector<int> tok(N, 0), tgt(N, -1);
  std::vector<float> mask(N, 0.f), old(N, 0.f), adv(N, 0.f), ref(N, 0.f), w(N, 0.f), lp(N);
  std::vector<LoraSegment<Kokkos::DefaultExecutionSpace>> segs;
  bool any_backward = false;
  size_t row = 0;
  for (const Chunk& c : pass) {
    const LoraWork& wk = work[c.item];
    segs.push_back({int(row), int(c.rows), wk.adapter});
    any_backward |= wk.backward;
    for (size_t k = 0; k < c.rows; ++k, ++row) {
      const Datum& d = wk.data[c.first + k];
      for (size_t t = 0; t < d.tokens.size(); ++t) {
        const size_t i = row * size_t(T) + t;
        tok[i] = d.tokens[t];
        tgt[i] = d.target_tokens[t];
        if (!wk.backward) continue;
        mask[i] = d.weights[t];
        if (wk.loss.fn != LossFn::kCrossEntropy) old[i] = d.logprobs_old[t], adv[i] = d.advantages[t];
        if (!d.logprobs_ref.empty()) ref[i] = d.logprobs_ref[t];
      }
    }
  }
  MOBULA_RETURN_IF_ERROR(model.set_lora(segs));
  MOBULA_RETURN_IF_ERROR(model.forward(tok, tgt, int(B), T, lp));
  row = 0;
  for (const Chunk& c : pass) {
    const LoraWork& wk = work[c.item];
    const size_t p0 = row * size_t(T), n = c.rows * size_t(T);
    auto& out = *res[c.item].out;
    for (size_t k = 0; k < c.rows; ++k)
      out.logprobs[c.first + k].assign(lp.begin() + long(p0 + k * T),
                                       lp.begin() + long(p0 + k * T + wk.data[c.first + k].tokens.size()));
    row += c.rows;
    if (!wk.backward) continue;
    // The chunk's ref only when every datum of the chunk has one (as forward_backward_batch).
    bool with_ref = wk.loss.fn == LossFn::kPpo && wk.loss.kl_coef != 0;
    for (size_t k = 0; k < c.rows && with_ref; ++k) with_ref = !wk.data[c.first + k].logprobs_ref.empty();
    auto span = [&](std::vector<float>& v) { return std::span<float>(v).subspan(p0, n); };
    Result<LossStats> st = token_sum_weights(wk.loss, span(lp), span(mask), span(old), span(adv),
                                             with_ref ? span(ref) : std::span<float>{}, span(w));
    if (!st) return st.status();
    const double n_tok = static_cast<double>(st->tokens);
    Sums& s = sums[c.item];
    s.loss += st->loss * n_tok;
    s.clip += st->clip_fraction * n_tok;
    s.kl += st->kl * n_tok;
    s.ratio += st->mean_ratio * n_tok;
    s.tokens += n_tok;
  }
  if (!any_backward) return Status::ok();
  // Forward-only chunks take no part in the backward (their weights are 0 and their adapters get
  // no gradient).
  for (size_t i = 0; i < pass.size(); ++i)
    if (!work[pass[i].item].backward) segs[i].adapter = nullptr;
  MOBULA_RETURN_IF_ERROR(model.set_lora(segs));
  return model.backward(w);
}

}  // namespace

std::vector<LoraWorkResult> forward_backward_lora(Gpt<>& model, std::span<const LoraWork> work, int chunk_rows) {
  std::vector<LoraWorkResult> res(work.size());
  std::vector<Sums> sums(work.size());
  const size_t cap = static_cast<size_t>(model.max_batch());
  const size_t chunk = std::clamp<size_t>(static_cast<size_t>(std::max(chunk_rows, 1)), 1, cap);
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < work.size(); ++i) {
    Status ok = work[i].adapter ? Status::ok() : Status::invalid_argument("forward_backward: no adapter");
    for (size_t k = 0; ok && k < work[i].data.size(); ++k)
      ok = check_datum(work[i].data[k], k, work[i].loss, model.config(), work[i].backward);
    if (!ok) {
      res[i].out = ok;
      continue;
    }
    res[i].out = ForwardBackwardOutput{};
    res[i].out->logprobs.resize(work[i].data.size());
    for (size_t f = 0; f < work[i].data.size(); f += chunk) {
      const size_t rows = std::min(chunk, work[i].data.size() - f);
      size_t maxlen = 0;
      for (size_t k = 0; k < rows; ++k) maxlen = std::max(maxlen, work[i].data[f + k].tokens.size());
      chunks.push_back({i, f, rows, bucket_length(static_cast<int>(maxlen), model.config().max_seq)});
    }
  }
  // Passes hold chunks of one length only, so the attention's per-row GEMMs have the shapes they
  // have alone; by length, then in submission order: a request's chunks run in the same order
  // whatever else is batched with it.
  std::stable_sort(chunks.begin(), chunks.end(), [](const Chunk& a, const Chunk& b) { return a.T < b.T; });
  auto fail_pass = [&](std::span<const Chunk> pass, const Status& s) {
    for (const Chunk& c : pass) res[c.item].out = s;
  };
  size_t begin = 0, rows = 0;
  for (size_t c = 0; c <= chunks.size(); ++c) {
    if (c < chunks.size() && rows + chunks[c].rows <= cap && (c == begin || chunks[c].T == chunks[begin].T)) {
      rows += chunks[c].rows;
      continue;
    }
    if (c > begin) {
      const std::span<const Chunk> pass(chunks.data() + begin, c - begin);
      if (Status s = run_pass(model, work, pass, res, sums); !s) fail_pass(pass, s);
    }
    begin = c;
    rows = c < chunks.size() ? chunks[c].rows : 0;
  }
  (void)model.set_lora({});  // no segments: cannot fail
  for (size_t i = 0; i < work.size(); ++i) {
    if (!res[i].out || !work[i].backward) continue;
    const Sums& s = sums[i];
    LossStats& st = res[i].out->stats;
    st.tokens = static_cast<long>(s.tokens);
    if (s.tokens > 0) {
      st.loss = s.loss / s.tokens;
      st.clip_fraction = s.clip / s.tokens;
      st.kl = s.kl / s.tokens;
      st.mean_ratio = s.ratio / s.tokens;
    }
    res[i].tokens = s.tokens;
  }
  return res;
}

float lora_step(LoraAdapter<>& adapter, AdamW<>& opt, double tokens) {
  const float norm = step_token_mean(adapter.params, adapter.grads, opt, tokens);
  adapter.zero_grad();
  return norm;
}

}  // namespace mobula::rl
