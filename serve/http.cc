#include "serve/http.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace mobula::serve {

using nlohmann::json;

namespace {

void send(httplib::Response& res, const Reply& r) {
  res.status = r.http;
  res.set_content(r.body.dump(), "application/json");
}

// The client a request's bearer token names, or 0 (and the 401 reply is set).
int64_t authenticate(Engine& e, const httplib::Request& req, httplib::Response& res) {
  const std::string h = req.get_header_value("Authorization");
  const std::string prefix = "Bearer ";
  if (h.size() <= prefix.size() || h.compare(0, prefix.size(), prefix) != 0) {
    send(res, Reply::error(401, "missing \"Authorization: Bearer <token>\" (create one: mobula serve token create)"));
    return 0;
  }
  auto c = e.store().client_by_token_hash(sha256_hex(h.substr(prefix.size())));
  if (!c) {
    send(res, Reply::error(500, c.status().message()));
    return 0;
  }
  if (!*c || (*c)->revoked) {
    send(res, Reply::error(401, "invalid or revoked token"));
    return 0;
  }
  return (*c)->id;
}

// The JSON body (an empty body is {}), or a 400.
bool body_json(const httplib::Request& req, httplib::Response& res, json* out) {
  if (req.body.empty()) {
    *out = json::object();
    return true;
  }
  *out = json::parse(req.body, nullptr, false);
  if (out->is_discarded() || !out->is_object()) {
    send(res, Reply::error(400, "the body is not a JSON object"));
    return false;
  }
  return true;
}

std::string request_id(const httplib::Request& req, const json& body) {
  std::string id = req.get_header_value("Idempotency-Key");
  if (id.empty() && body.contains("request_id") && body["request_id"].is_string()) id = body["request_id"];
  return id.substr(0, 128);
}

}  // namespace

HttpServer::HttpServer(Engine& e, const HttpOptions& o) : engine_(e), opts_(o), srv_(new httplib::Server) {}

Result<std::unique_ptr<HttpServer>> HttpServer::start(Engine& engine, const HttpOptions& opts) {
  std::unique_ptr<HttpServer> s(new HttpServer(engine, opts));
  s->srv_->set_payload_max_length(opts.max_body);
  s->srv_->set_tcp_nodelay(true);  // replies are written as header + body: no Nagle wait on the second
  s->srv_->set_read_timeout(opts.io_timeout_s, 0);
  s->srv_->set_write_timeout(opts.io_timeout_s, 0);
  const int threads = opts.threads;
  s->srv_->new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  s->routes();
  s->port_ = opts.port == 0 ? s->srv_->bind_to_any_port(opts.host) : opts.port;
  if (opts.port != 0 && !s->srv_->bind_to_port(opts.host, opts.port)) s->port_ = -1;
  if (s->port_ <= 0)
    return Status::io("serve: cannot listen on " + opts.host + ":" + std::to_string(opts.port) +
                      " (in use, or not an address of this host); set serve.port (0 = any free port)");
  s->thread_ = std::thread([p = s.get()] { p->srv_->listen_after_bind(); });
  return s;
}

HttpServer::~HttpServer() {
  stop();
}

void HttpServer::stop() {
  if (srv_) srv_->stop();
  if (thread_.joinable()) thread_.join();
}

void HttpServer::routes() {
  httplib::Server& s = *srv_;
  Engine& e = engine_;
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& x) {
      what = x.what();
    } catch (...) {
    }
    send(res, Reply::error(500, what));
  });
  s.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.body.empty()) {  // httplib's own refusals (413 too large, 400 bad request, 404 no route)
      const std::string m = res.status == 413   ? "body larger than serve.max_body_kib"
                            : res.status == 404 ? "no such endpoint (see docs/serve.md)"
                                                : "bad request";
      res.set_content(json{{"error", m}}.dump(), "application/json");
    }
  });
  s.Get("/v1/healthz", [](const httplib::Request&, httplib::Response& res) { send(res, {200, {{"ok", true}}}); });
  s.Get("/v1/info", [&e](const httplib::Request& req, httplib::Response& res) {
    if (authenticate(e, req, res)) send(res, {200, e.info()});
  });
  s.Get("/v1/adapters", [&e](const httplib::Request& req, httplib::Response& res) {
    if (const int64_t c = authenticate(e, req, res)) send(res, e.list_adapters(c));
  });
  s.Post("/v1/adapters", [&e](const httplib::Request& req, httplib::Response& res) {
    json body;
    if (const int64_t c = authenticate(e, req, res); c && body_json(req, res, &body))
      send(res, e.submit(c, request_id(req, body), "create_adapter", 0, body));
  });
  s.Post(R"(/v1/adapters/(\d{1,18})/([a-z_]+))", [&e](const httplib::Request& req, httplib::Response& res) {
    json body;
    const std::string op = req.matches[2];
    if (op == "create_adapter" || op == "delete_adapter") return send(res, Reply::error(404, "unknown operation"));
    if (const int64_t c = authenticate(e, req, res); c && body_json(req, res, &body))
      send(res, e.submit(c, request_id(req, body), op, std::stoll(req.matches[1]), body));
  });
  s.Delete(R"(/v1/adapters/(\d{1,18}))", [&e](const httplib::Request& req, httplib::Response& res) {
    json body;
    if (const int64_t c = authenticate(e, req, res); c && body_json(req, res, &body))
      send(res, e.submit(c, request_id(req, body), "delete_adapter", std::stoll(req.matches[1]), body));
  });
  const double max_wait = opts_.max_wait_s;
  s.Post("/v1/retrieve_future", [&e, max_wait](const httplib::Request& req, httplib::Response& res) {
    json body;
    const int64_t c = authenticate(e, req, res);
    if (!c || !body_json(req, res, &body)) return;
    if (!body.contains("future_id") || !body["future_id"].is_number_integer())
      return send(res, Reply::error(400, "future_id: must be the integer a call returned"));
    const double t = body.contains("timeout_s") && body["timeout_s"].is_number() ? body["timeout_s"].get<double>() : 0;
    send(res, e.retrieve(c, body["future_id"].get<int64_t>(), std::clamp(t, 0.0, max_wait)));
  });
}

}  // namespace mobula::serve
