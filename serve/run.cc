#include "serve/run.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "core/health/health.h"
#include "serve/engine.h"
#include "serve/http.h"

namespace mobula::serve {

namespace {

Result<EngineOptions> engine_options(const JobSpec& spec) {
  EngineOptions o;
  const ServeSpec& s = spec.serve;
  if (s.base.empty()) {  // a random base of [model]'s shape over rl.task's characters
    auto cfg = rl::task_model_config(spec);
    if (!cfg) return cfg.status();
    o.model = *cfg;
  } else if (!std::filesystem::exists(s.base)) {
    return Status::invalid_spec(spec.where("serve.base") + ": serve.base: " + s.base +
                                " does not exist (a weights file, e.g. a grpo job's policy.safetensors)");
  }
  o.base_weights = s.base;
  o.seed = uint64_t(spec.seed);
  o.state_dir = s.state_dir;
  o.pass_rows = s.pass_rows;
  o.chunk_rows = s.chunk_rows;
  o.max_rows = s.max_rows;
  o.sample_rows = s.sample_rows;
  o.max_adapters = s.max_adapters;
  o.max_pending = s.max_pending;
  o.default_rank = s.lora_rank;
  o.default_alpha = s.lora_alpha;
  return o;
}

// WORKDIR/serve.json, written atomically once the port accepts connections.
Status write_endpoint(const JobSpec& spec, const HttpServer& http) {
  const std::string path = spec.workdir + "/serve.json", tmp = path + ".tmp";
  const nlohmann::json j = {{"url", http.url()},
                            {"host", spec.serve.host},
                            {"port", http.port()},
                            {"pid", int64_t(::getpid())},
                            {"state_dir", spec.serve.state_dir}};
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << j.dump(2) << "\n";
    if (!f.flush()) return Status::io(tmp + ": cannot write");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return Status::io(path + ": cannot rename " + tmp + ": " + ec.message());
  return Status::ok();
}

}  // namespace

Status run_serve(const rl::WorkloadContext& ctx) {
  const JobSpec& spec = ctx.spec;
  auto opts = engine_options(spec);
  if (!opts) return opts.status();
  auto engine = Engine::open(*opts);
  if (!engine) return engine.status();
  HttpOptions ho;
  ho.host = spec.serve.host;
  ho.port = spec.serve.port;
  ho.max_body = size_t(spec.serve.max_body_kib) * 1024;
  ho.threads = spec.serve.threads;
  ho.max_wait_s = spec.serve.max_wait_s;
  auto http = HttpServer::start(**engine, ho);
  if (!http) return http.status();
  MOBULA_RETURN_IF_ERROR(write_endpoint(spec, **http));
  spdlog::info("serve: listening on {} (state {}, base {})", (*http)->url(), spec.serve.state_dir,
               spec.serve.base.empty() ? "random from job.seed" : spec.serve.base);
  while (!health::stop_signal()) {
    if (ctx.watchdog) ctx.watchdog->beat("serve");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  (*http)->stop();
  (*engine)->stop();
  return Status::preempted("serve: stopped by signal " + std::to_string(health::stop_signal()) +
                           "; queued requests stay in the journal and run after the restart");
}

int cmd_token(const std::string& action, const JobSpec& spec, const std::string& name) {
  std::error_code ec;
  std::filesystem::create_directories(spec.serve.state_dir, ec);
  auto store = Store::open(spec.serve.state_dir + "/serve.db");
  if (!store) {
    std::fprintf(stderr, "mobula serve token: %s\n", store.status().message().c_str());
    return 1;
  }
  if (action == "list") {
    auto cs = (*store)->clients();
    if (!cs) return std::fprintf(stderr, "mobula serve token: %s\n", cs.status().message().c_str()), 1;
    for (const auto& c : *cs)
      std::printf("%-6lld %-24s %s\n", static_cast<long long>(c.id), c.name.c_str(), c.revoked ? "revoked" : "active");
    return 0;
  }
  if (name.empty()) {
    std::fprintf(stderr, "mobula serve token %s: --name NAME is required\n", action.c_str());
    return 2;
  }
  if (action == "revoke") {
    Status s = (*store)->revoke_client(name);
    if (!s) std::fprintf(stderr, "mobula serve token: %s\n", s.message().c_str());
    return s.exit_code();
  }
  auto token = new_token();
  if (!token) return std::fprintf(stderr, "mobula serve token: %s\n", token.status().message().c_str()), 1;
  auto id = (*store)->add_client(name, sha256_hex(*token));
  if (!id) {
    std::fprintf(stderr, "mobula serve token: %s\n", id.status().message().c_str());
    return id.status().exit_code();
  }
  std::printf("%s\n", token->c_str());
  std::fprintf(stderr, "client \"%s\" (id %lld): the token above is shown once; only its SHA-256 is stored in %s\n",
               name.c_str(), static_cast<long long>(*id), (*store)->path().c_str());
  return 0;
}

}  // namespace mobula::serve
