// The service's engine in-process (serve/engine.h): the Tinker calls as journaled futures,
// per-client order, idempotent retries, tenant isolation, refusals, and a restart from the journal
// that ends bitwise where an uninterrupted run ends.
#include "serve/engine.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "tests/support/files.h"

namespace mobula::serve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

EngineOptions options(const std::string& dir) {
  EngineOptions o;
  o.model.vocab = 16;
  o.model.max_seq = 16;
  o.model.layers = 2;
  o.model.heads = 2;
  o.model.d_model = 32;
  o.seed = 3;
  o.state_dir = dir;
  o.pass_rows = 16;
  o.chunk_rows = 4;
  o.default_rank = 4;
  return o;
}

std::string fresh_dir(const std::string& name) {
  const std::string d = (fs::temp_directory_path() / ("mobula-engine-" + name)).string();
  fs::remove_all(d);
  return d;
}

// A small supervised batch: next token = (3 * token + 1) mod 16.
json batch(int n, int offset) {
  json data = json::array();
  for (int i = 0; i < n; ++i) {
    json tok = json::array(), tgt = json::array(), w = json::array();
    for (int t = 0; t < 6 + (i + offset) % 5; ++t) {
      const int x = (i * 7 + t * 3 + offset) % 16;
      tok.push_back(x);
      tgt.push_back((3 * x + 1) % 16);
      w.push_back(t >= 1 ? 1.0 : 0.0);
    }
    data.push_back({{"tokens", tok}, {"target_tokens", tgt}, {"weights", w}});
  }
  return {{"data", data}, {"loss", {{"fn", "cross_entropy"}}}};
}

struct Client {
  Engine& e;
  int64_t id;
  int n = 0;
  // Submits and waits; the result (or the error) of the future.
  json call(const std::string& op, int64_t adapter, const json& body, const std::string& rid = "") {
    const Reply r = e.submit(id, rid.empty() ? std::to_string(id) + "-" + std::to_string(n++) : rid, op, adapter, body);
    EXPECT_EQ(r.http, 202) << op << ": " << r.body.dump();
    if (r.http != 202) return r.body;
    return wait(r.body["future_id"].get<int64_t>());
  }
  json wait(int64_t fid) {
    for (;;) {
      const Reply f = e.retrieve(id, fid, 5.0);
      EXPECT_EQ(f.http, 200) << f.body.dump();
      if (f.http != 200 || f.body["state"] != "pending") return f.body;
    }
  }
};

int64_t add_client(Engine& e, const std::string& name) {
  auto id = e.store().add_client(name, sha256_hex("token-" + name));
  EXPECT_TRUE(id.is_ok()) << id.status().message();
  return *id;
}

TEST(Engine, TrainsAndSamplesAnAdapter) {
  auto e = Engine::open(options(fresh_dir("train")));
  ASSERT_TRUE(e.is_ok()) << e.status().message();
  Client a{**e, add_client(**e, "a")};
  const json created = a.call("create_adapter", 0, {{"rank", 4}, {"alpha", 8}, {"seed", 1}});
  ASSERT_EQ(created["state"], "done") << created.dump();
  const int64_t ad = created["result"]["adapter_id"];
  double first = 0, last = 0;
  for (int step = 0; step < 25; ++step) {
    const json fb = a.call("forward_backward", ad, batch(8, 0));
    ASSERT_EQ(fb["state"], "done") << fb.dump();
    if (step == 0) first = fb["result"]["loss"];
    last = fb["result"]["loss"];
    const json os = a.call("optim_step", ad, {{"lr", 2e-2}});
    ASSERT_EQ(os["state"], "done") << os.dump();
    EXPECT_EQ(os["result"]["step"], step + 1);
  }
  EXPECT_LT(last, 0.8 * first) << first << " -> " << last;
  const json s = a.call("sample", ad, {{"prompts", {{1, 2, 3}}}, {"num_samples", 3}, {"max_tokens", 4}, {"seed", 7}});
  ASSERT_EQ(s["state"], "done") << s.dump();
  ASSERT_EQ(s["result"]["samples"].size(), 3u);
  EXPECT_EQ(s["result"]["samples"][0]["tokens"].size(), 4u);
  // Same seed, same samples.
  EXPECT_EQ(
      a.call("sample", ad, {{"prompts", {{1, 2, 3}}}, {"num_samples", 3}, {"max_tokens", 4}, {"seed", 7}})["result"],
      s["result"]);
  const json list = (*e)->list_adapters(a.id).body;
  ASSERT_EQ(list["adapters"].size(), 1u);
  EXPECT_EQ(list["adapters"][0]["step"], 25);
}

TEST(Engine, RequestsRunInSubmissionOrderAndRetriesAreIdempotent) {
  auto e = Engine::open(options(fresh_dir("order")));
  ASSERT_TRUE(e.is_ok()) << e.status().message();
  Client a{**e, add_client(**e, "a")};
  const int64_t ad = a.call("create_adapter", 0, {{"seed", 2}})["result"]["adapter_id"];
  // Queue fb, step, fb, step without waiting: each step sees exactly its forward_backward.
  std::vector<int64_t> f;
  for (const char* rid : {"fb0", "os0", "fb1", "os1"}) {
    const bool fb = rid[0] == 'f';
    const Reply r =
        (*e)->submit(a.id, rid, fb ? "forward_backward" : "optim_step", ad, fb ? batch(4, 1) : json{{"lr", 1e-2}});
    ASSERT_EQ(r.http, 202) << r.body.dump();
    f.push_back(r.body["future_id"]);
  }
  EXPECT_EQ(a.wait(f[1])["result"]["step"], 1);
  EXPECT_EQ(a.wait(f[3])["result"]["step"], 2);
  // A retry of a known id returns the same future and its stored result.
  const Reply again = (*e)->submit(a.id, "os0", "optim_step", ad, {{"lr", 1e-2}});
  EXPECT_EQ(again.http, 202);
  EXPECT_EQ(again.body["future_id"], f[1]);
  EXPECT_EQ(again.body["duplicate"], true);
  EXPECT_EQ(a.wait(f[1])["result"]["step"], 1);
  // The same id for another call is refused.
  EXPECT_EQ((*e)->submit(a.id, "os0", "forward_backward", ad, batch(1, 0)).http, 409);
  // A step with nothing trained since the last one fails (the future, not the submission).
  const json empty = a.call("optim_step", ad, {{"lr", 1e-2}});
  EXPECT_EQ(empty["state"], "failed");
  EXPECT_NE(empty["error"].get<std::string>().find("no trained token"), std::string::npos);
}

TEST(Engine, ClientsAreIsolated) {
  const std::string dir = fresh_dir("isolation");
  auto e = Engine::open(options(dir));
  ASSERT_TRUE(e.is_ok()) << e.status().message();
  Client a{**e, add_client(**e, "a")}, b{**e, add_client(**e, "b")};
  const int64_t ad = a.call("create_adapter", 0, {})["result"]["adapter_id"];
  const json fb = a.call("forward_backward", ad, batch(2, 0));
  ASSERT_EQ(fb["state"], "done");
  ASSERT_EQ(a.call("save_state", ad, {{"name", "mine"}})["state"], "done");
  for (const char* op : {"forward_backward", "sample", "optim_step", "save_state", "delete_adapter"}) {
    const Reply r = (*e)->submit(b.id, "", op, ad, json::object());
    EXPECT_EQ(r.http, 404) << op << " " << r.body.dump();
  }
  EXPECT_EQ((*e)->retrieve(b.id, fb["future_id"], 0).http, 404);  // another client's future
  EXPECT_TRUE((*e)->list_adapters(b.id).body["adapters"].empty());
  // b's own adapter cannot load a's saved state by its name.
  const int64_t bd = b.call("create_adapter", 0, {})["result"]["adapter_id"];
  const json load = b.call("load_state", bd, {{"name", "mine"}});
  EXPECT_EQ(load["state"], "failed") << load.dump();
  // Malformed requests are refused before they are journaled.
  for (const json& bad : {json{{"data", "x"}}, json{{"data", json::array()}},
                          json{{"data", {{{"tokens", {99}}, {"target_tokens", {1}}, {"weights", {1}}}}}},
                          json{{"data", {{{"tokens", {1, 2}}, {"target_tokens", {1}}, {"weights", {1, 1}}}}}},
                          json{{"loss", {{"fn", "mse"}}}, {"data", batch(1, 0)["data"]}}}) {
    const Reply r = (*e)->submit(a.id, "", "forward_backward", ad, bad);
    EXPECT_EQ(r.http, 400) << bad.dump();
    EXPECT_TRUE(r.body.contains("error"));
  }
  EXPECT_EQ((*e)->submit(a.id, "", "save_state", ad, {{"name", "../escape"}}).http, 400);
  EXPECT_EQ((*e)->submit(a.id, "", "create_adapter", 0, {{"rank", "big"}}).http, 400);
  EXPECT_EQ((*e)->submit(a.id, "", "create_adapter", 0, {{"rank", 65}}).http, 400);
  EXPECT_EQ((*e)->submit(a.id, "", "fly", ad, {}).http, 404);
}

// A run interrupted after acknowledged work (a forward_backward whose gradient was only in memory,
// and queued requests) resumes from the journal and ends with the same bits as a run that was not.
TEST(Engine, RestartFromTheJournalEndsBitwiseWhereAnUninterruptedRunEnds) {
  auto script = [](Engine& e, int64_t client, int upto, std::vector<int64_t>* futures) {
    const std::vector<std::pair<std::string, json>> calls = {
        {"forward_backward", batch(6, 0)}, {"optim_step", {{"lr", 1e-2}}},   {"forward_backward", batch(5, 2)},
        {"forward_backward", batch(3, 4)}, {"optim_step", {{"lr", 1e-2}}},   {"forward_backward", batch(4, 1)},
        {"optim_step", {{"lr", 1e-2}}},    {"save_state", {{"name", "end"}}}};
    for (int i = 0; i < upto; ++i) {
      const Reply r = e.submit(client, "call-" + std::to_string(i), calls[size_t(i)].first, 1, calls[size_t(i)].second);
      ASSERT_EQ(r.http, 202) << r.body.dump();
      futures->push_back(r.body["future_id"]);
    }
  };
  auto run = [&](const std::string& dir, bool interrupt) {
    std::vector<json> results;
    auto e = Engine::open(options(dir));
    EXPECT_TRUE(e.is_ok()) << e.status().message();
    Client a{**e, add_client(**e, "a")};
    EXPECT_EQ(a.call("create_adapter", 0, {{"seed", 5}}, "create")["result"]["adapter_id"], 1);
    std::vector<int64_t> f;
    if (interrupt) {
      script(**e, a.id, 6, &f);  // up to a forward_backward after the second step
      a.wait(f[5]);              // done: its gradient lives in memory only
      (*e)->stop();              // then the process is gone
      e->reset();
      auto again = Engine::open(options(dir));
      EXPECT_TRUE(again.is_ok()) << again.status().message();
      Client b{**again, a.id};
      std::vector<int64_t> g;
      script(**again, a.id, 8, &g);  // the client retries everything with the same ids
      for (size_t i = 0; i < g.size(); ++i) {
        if (i < f.size()) {
          EXPECT_EQ(g[i], f[i]) << "retry " << i << " got another future";
        }
        results.push_back(b.wait(g[i])["result"]);
      }
      return std::make_pair(results, test::slurp(dir + "/clients/" + std::to_string(a.id) + "/end.state.safetensors"));
    }
    script(**e, a.id, 8, &f);
    for (int64_t id : f) results.push_back(a.wait(id)["result"]);
    return std::make_pair(results, test::slurp(dir + "/clients/" + std::to_string(a.id) + "/end.state.safetensors"));
  };
  const auto ref = run(fresh_dir("ref"), false);
  const auto got = run(fresh_dir("crash"), true);
  ASSERT_EQ(ref.first.size(), got.first.size());
  for (size_t i = 0; i < ref.first.size(); ++i) EXPECT_EQ(ref.first[i], got.first[i]) << "call " << i;
  ASSERT_FALSE(ref.second.empty());
  EXPECT_TRUE(ref.second == got.second) << "the final adapter states differ";
}

TEST(Engine, RefusesAnotherBase) {
  const std::string dir = fresh_dir("base");
  { ASSERT_TRUE(Engine::open(options(dir)).is_ok()); }
  EngineOptions o = options(dir);
  o.seed = 4;
  auto e = Engine::open(o);
  ASSERT_FALSE(e.is_ok());
  EXPECT_NE(e.status().message().find("serve.base"), std::string::npos) << e.status().message();
}

}  // namespace
}  // namespace mobula::serve
