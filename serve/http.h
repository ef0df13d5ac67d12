// The service's HTTP+JSON front end (cpp-httplib, Debian's libcpp-httplib-dev): Tinker's calls as
// endpoints over serve/engine.h, bearer-token authentication, bounded bodies and waits
// (docs/serve.md, "HTTP API").
//
//   GET    /v1/healthz                        no token: {"ok": true}
//   GET    /v1/info                           base model and limits
//   GET    /v1/adapters                       this client's adapters
//   POST   /v1/adapters                       create_adapter {"rank", "alpha", "seed"}  -> future
//   POST   /v1/adapters/{id}/{op}             op: forward_backward, forward, optim_step, sample,
//                                             save_state, load_state, save_weights_for_sampler
//   DELETE /v1/adapters/{id}                  delete_adapter                            -> future
//   POST   /v1/retrieve_future                {"future_id", "timeout_s"}  (long poll)
//
// Every call but healthz needs "Authorization: Bearer <token>" (401 without a valid one). The
// request id for retries is the "Idempotency-Key" header or the body's "request_id". Errors are
// {"error": "..."} with 400 (malformed), 401, 404 (unknown, or another client's), 409, 413 (body
// over serve.max_body_kib), 429 (queue full), 503 (stopping).
//
// Thread safety: start() serves on its own threads until stop() or destruction.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "serve/engine.h"

namespace httplib {
class Server;
}

namespace mobula::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";  // loopback unless configured
  int port = 0;                    // 0: any free port (see port())
  size_t max_body = 4u << 20;      // bytes
  int threads = 32;                // connections served at once (long polls hold one each)
  double max_wait_s = 30;          // the longest retrieve_future long poll
  int io_timeout_s = 30;           // socket read/write timeouts
};

class HttpServer {
 public:
  static Result<std::unique_ptr<HttpServer>> start(Engine& engine, const HttpOptions& opts);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  void stop();
  int port() const { return port_; }
  std::string url() const { return "http://" + opts_.host + ":" + std::to_string(port_); }

 private:
  HttpServer(Engine& e, const HttpOptions& o);
  void routes();
  Engine& engine_;
  HttpOptions opts_;
  std::unique_ptr<httplib::Server> srv_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace mobula::serve
