// The service's durable state in one SQLite database (WAL journal, synchronous=FULL): clients
// and their hashed tokens, adapters with their latest checkpoint, and the request journal.
//
// The journal is the service's write-ahead log: a request is acknowledged (its future id returned)
// only after its row is committed, and it is marked done in the same transaction that records
// what it changed (an adapter row, a checkpoint). After a crash the engine re-runs, in order, every
// request that is not done, and the forward_backward calls after each adapter's checkpoint (their
// gradients were in memory); results are deterministic (rl/algo/lora_batch.h), so a request
// retried with its id gets the same result (docs/serve.md, "Crash safety").
//
// Contract: every method is thread-safe (one connection, serialised by a mutex); errors are
// returned with the database path and the failing statement.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::serve {

struct ClientRow {
  int64_t id = 0;
  std::string name;
  bool revoked = false;
};

struct AdapterRow {
  int64_t id = 0;  // the seq of the request that created it
  int64_t client = 0;
  int rank = 0;
  double alpha = 0;
  int64_t seed = 0;
  std::string ckpt_path;  // "" = none (the adapter as initialised)
  int64_t ckpt_seq = 0;   // the journal seq the checkpoint includes
};

struct RequestRow {
  int64_t seq = 0;
  int64_t client = 0;
  std::string request_id;
  int64_t adapter = 0;  // 0: none (create_adapter)
  std::string op;
  std::string body;    // JSON
  std::string state;   // "pending", "done", "failed"
  std::string result;  // JSON (done) or the error message (failed)
};

// Named checkpoints a client saved (save_state), private to that client.
struct SavedRow {
  std::string name, path;
  int64_t adapter = 0;
};

class Store {
 public:
  static Result<std::unique_ptr<Store>> open(const std::string& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Clients. The token is never stored, only its SHA-256 (hex).
  Result<int64_t> add_client(const std::string& name, const std::string& token_sha256);
  Result<std::optional<ClientRow>> client_by_token_hash(const std::string& token_sha256);
  Result<std::vector<ClientRow>> clients();
  Status revoke_client(const std::string& name);

  // Journal. append() returns the new row, or the existing one when (client, request_id) is known
  // (an idempotent retry; `existed` says which).
  Result<RequestRow> append(int64_t client, const std::string& request_id, int64_t adapter, const std::string& op,
                            const std::string& body, bool* existed);
  Result<std::optional<RequestRow>> request(int64_t client, int64_t seq);
  // Requests to run at start-up: not done, or forward_backward after their adapter's checkpoint.
  Result<std::vector<RequestRow>> replay_requests();

  // What a request changed besides its own row, committed in the same transaction as its "done".
  struct Effect {
    std::optional<AdapterRow> new_adapter;
    std::optional<AdapterRow> checkpoint;  // id, ckpt_path, ckpt_seq
    std::optional<int64_t> deleted_adapter;
    std::optional<std::pair<int64_t, SavedRow>> saved;  // client, row
  };
  struct Completion {
    int64_t seq = 0;
    bool ok = false;
    std::string result;  // JSON, or the error message
    Effect effect;
  };
  // Completes requests in one transaction (one fsync for a whole round of the worker).
  Status finish(const std::vector<Completion>& done);

  Result<std::vector<AdapterRow>> adapters();
  Result<std::optional<SavedRow>> saved(int64_t client, const std::string& name);

  // Service-wide facts (the base model's hash): "" when unset.
  Result<std::string> meta(const std::string& key);
  Status set_meta(const std::string& key, const std::string& value);

  const std::string& path() const { return path_; }

 private:
  Store() = default;
  Status exec(const std::string& sql);
  Status fail(const std::string& what);
  sqlite3* db_ = nullptr;
  std::string path_;
  std::mutex mu_;
};

// SHA-256 of `text`, lower-case hex (OpenSSL).
std::string sha256_hex(const std::string& text);
// `bytes` random bytes (OpenSSL RAND_bytes), lower-case hex.
Result<std::string> random_hex(int bytes);
// A new bearer token: "mbl_" + 32 random bytes, hex.
Result<std::string> new_token();

}  // namespace mobula::serve
