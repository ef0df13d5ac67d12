#include "serve/store.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <chrono>
#include <cstdio>
#include <vector>

namespace mobula::serve {

namespace {

const char* const kSchema = R"sql(
CREATE TABLE IF NOT EXISTS clients(
  id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, token_sha256 TEXT UNIQUE NOT NULL,
  created REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS adapters(
  id INTEGER PRIMARY KEY, client INTEGER NOT NULL, rank INTEGER NOT NULL, alpha REAL NOT NULL,
  seed INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, ckpt_path TEXT NOT NULL DEFAULT '',
  ckpt_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS requests(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, client INTEGER NOT NULL, request_id TEXT NOT NULL,
  adapter INTEGER NOT NULL, op TEXT NOT NULL, body TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending', result TEXT NOT NULL DEFAULT '',
  created REAL NOT NULL, finished REAL, UNIQUE(client, request_id));
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS saved(
  client INTEGER NOT NULL, name TEXT NOT NULL, adapter INTEGER NOT NULL, path TEXT NOT NULL,
  PRIMARY KEY(client, name));
)sql";

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A prepared statement, finalized on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr); }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return rc_ == SQLITE_OK; }
  Stmt& bind(int i, int64_t v) {
    if (rc_ == SQLITE_OK) rc_ = sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& bind(int i, double v) {
    if (rc_ == SQLITE_OK) rc_ = sqlite3_bind_double(s_, i, v);
    return *this;
  }
  Stmt& bind(int i, const std::string& v) {
    if (rc_ == SQLITE_OK) rc_ = sqlite3_bind_text(s_, i, v.data(), int(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  // SQLITE_ROW (a row to read), SQLITE_DONE, or an error code.
  int step() {
    if (rc_ != SQLITE_OK && rc_ != SQLITE_ROW && rc_ != SQLITE_DONE) return rc_;
    rc_ = sqlite3_step(s_);
    return rc_;
  }
  int64_t i64(int c) const { return sqlite3_column_int64(s_, c); }
  double f64(int c) const { return sqlite3_column_double(s_, c); }
  std::string text(int c) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, c));
    return p ? std::string(p, size_t(sqlite3_column_bytes(s_, c))) : std::string();
  }

 private:
  sqlite3_stmt* s_ = nullptr;
  int rc_ = SQLITE_OK;
};

RequestRow read_request(const Stmt& s) {
  return RequestRow{s.i64(0), s.i64(1), s.text(2), s.i64(3), s.text(4), s.text(5), s.text(6), s.text(7)};
}

constexpr const char* kRequestCols = "seq, client, request_id, adapter, op, body, state, result";

}  // namespace

namespace {

std::string hex(const unsigned char* p, size_t n) {
  static const char* const kDigits = "0123456789abcdef";
  std::string s(2 * n, '0');
  for (size_t i = 0; i < n; ++i) s[2 * i] = kDigits[p[i] >> 4], s[2 * i + 1] = kDigits[p[i] & 15];
  return s;
}

}  // namespace

std::string sha256_hex(const std::string& text) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(text.data(), text.size(), md, &n, EVP_sha256(), nullptr) != 1) return {};
  return hex(md, n);
}

Result<std::string> random_hex(int bytes) {
  std::vector<unsigned char> r(static_cast<size_t>(bytes));
  if (RAND_bytes(r.data(), bytes) != 1) return Status::external("OpenSSL RAND_bytes failed (no entropy source?)");
  return hex(r.data(), r.size());
}

Result<std::string> new_token() {
  auto r = random_hex(32);
  if (!r) return Status::external("token: " + r.status().message());
  return "mbl_" + *r;
}

Result<std::unique_ptr<Store>> Store::open(const std::string& path) {
  std::unique_ptr<Store> s(new Store());
  s->path_ = path;
  if (sqlite3_open_v2(path.c_str(), &s->db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK)
    return s->fail("open");
  sqlite3_busy_timeout(s->db_, 5000);  // `mobula serve token create` may write while the service runs
  MOBULA_RETURN_IF_ERROR(s->exec("PRAGMA journal_mode=WAL"));
  MOBULA_RETURN_IF_ERROR(s->exec("PRAGMA synchronous=FULL"));
  MOBULA_RETURN_IF_ERROR(s->exec(kSchema));
  return s;
}

Store::~Store() {
  if (db_) sqlite3_close(db_);
}

Status Store::fail(const std::string& what) {
  return Status::io(path_ + ": sqlite " + what + ": " + (db_ ? sqlite3_errmsg(db_) : "cannot open"));
}

Status Store::exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : "error";
    sqlite3_free(err);
    return Status::io(path_ + ": sqlite: " + m + " (in: " + sql.substr(0, 60) + ")");
  }
  return Status::ok();
}

Result<int64_t> Store::add_client(const std::string& name, const std::string& token_sha256) {
  std::lock_guard lk(mu_);
  Stmt s(db_, "INSERT INTO clients(name, token_sha256, created) VALUES(?, ?, ?)");
  if (s.bind(1, name).bind(2, token_sha256).bind(3, now_s()).step() != SQLITE_DONE) {
    if (sqlite3_errcode(db_) == SQLITE_CONSTRAINT)
      return Status::invalid_argument("serve token create: a client named \"" + name +
                                      "\" exists already (revoke it first, or pick another --name)");
    return fail("insert client");
  }
  return sqlite3_last_insert_rowid(db_);
}

Result<std::optional<ClientRow>> Store::client_by_token_hash(const std::string& token_sha256) {
  std::lock_guard lk(mu_);
  Stmt s(db_, "SELECT id, name, revoked FROM clients WHERE token_sha256 = ?");
  const int rc = s.bind(1, token_sha256).step();
  if (rc == SQLITE_DONE) return std::optional<ClientRow>();
  if (rc != SQLITE_ROW) return fail("select client");
  return std::optional<ClientRow>(ClientRow{s.i64(0), s.text(1), s.i64(2) != 0});
}

Result<std::vector<ClientRow>> Store::clients() {
  std::lock_guard lk(mu_);
  Stmt s(db_, "SELECT id, name, revoked FROM clients ORDER BY id");
  std::vector<ClientRow> out;
  int rc;
  while ((rc = s.step()) == SQLITE_ROW) out.push_back({s.i64(0), s.text(1), s.i64(2) != 0});
  if (rc != SQLITE_DONE) return fail("select clients");
  return out;
}

Status Store::revoke_client(const std::string& name) {
  std::lock_guard lk(mu_);
  Stmt s(db_, "UPDATE clients SET revoked = 1 WHERE name = ?");
  if (s.bind(1, name).step() != SQLITE_DONE) return fail("revoke client");
  if (sqlite3_changes(db_) == 0) return Status::not_found("serve token revoke: no client named \"" + name + "\"");
  return Status::ok();
}

Result<RequestRow> Store::append(int64_t client, const std::string& request_id, int64_t adapter, const std::string& op,
                                 const std::string& body, bool* existed) {
  std::lock_guard lk(mu_);
  {
    Stmt s(db_, (std::string("SELECT ") + kRequestCols + " FROM requests WHERE client = ? AND request_id = ?").c_str());
    const int rc = s.bind(1, client).bind(2, request_id).step();
    if (rc == SQLITE_ROW) {
      *existed = true;
      return read_request(s);
    }
    if (rc != SQLITE_DONE) return fail("select request");
  }
  Stmt s(db_, "INSERT INTO requests(client, request_id, adapter, op, body, created) VALUES(?, ?, ?, ?, ?, ?)");
  if (s.bind(1, client).bind(2, request_id).bind(3, adapter).bind(4, op).bind(5, body).bind(6, now_s()).step() !=
      SQLITE_DONE)
    return fail("insert request");
  *existed = false;
  return RequestRow{sqlite3_last_insert_rowid(db_), client, request_id, adapter, op, body, "pending", ""};
}

Result<std::optional<RequestRow>> Store::request(int64_t client, int64_t seq) {
  std::lock_guard lk(mu_);
  Stmt s(db_, (std::string("SELECT ") + kRequestCols + " FROM requests WHERE client = ? AND seq = ?").c_str());
  const int rc = s.bind(1, client).bind(2, seq).step();
  if (rc == SQLITE_DONE) return std::optional<RequestRow>();
  if (rc != SQLITE_ROW) return fail("select request");
  return std::optional<RequestRow>(read_request(s));
}

Result<std::vector<RequestRow>> Store::replay_requests() {
  std::lock_guard lk(mu_);
  Stmt s(db_, (std::string("SELECT ") + kRequestCols +
               " FROM requests r WHERE state = 'pending' OR (state = 'done' AND op = 'forward_backward' AND "
               "seq > (SELECT ckpt_seq FROM adapters a WHERE a.id = r.adapter AND a.deleted = 0)) ORDER BY seq")
                  .c_str());
  std::vector<RequestRow> out;
  int rc;
  while ((rc = s.step()) == SQLITE_ROW) out.push_back(read_request(s));
  if (rc != SQLITE_DONE) return fail("select replay");
  return out;
}

Status Store::finish(const std::vector<Completion>& done) {
  if (done.empty()) return Status::ok();
  std::lock_guard lk(mu_);
  MOBULA_RETURN_IF_ERROR(exec("BEGIN IMMEDIATE"));
  auto one = [&](const Completion& c) -> Status {
    const Effect& e = c.effect;
    if (e.new_adapter) {
      const AdapterRow& a = *e.new_adapter;
      Stmt s(db_, "INSERT OR REPLACE INTO adapters(id, client, rank, alpha, seed) VALUES(?, ?, ?, ?, ?)");
      if (s.bind(1, a.id).bind(2, a.client).bind(3, int64_t(a.rank)).bind(4, a.alpha).bind(5, a.seed).step() !=
          SQLITE_DONE)
        return fail("insert adapter");
    }
    if (e.checkpoint) {
      Stmt s(db_, "UPDATE adapters SET ckpt_path = ?, ckpt_seq = ? WHERE id = ?");
      if (s.bind(1, e.checkpoint->ckpt_path).bind(2, e.checkpoint->ckpt_seq).bind(3, e.checkpoint->id).step() !=
          SQLITE_DONE)
        return fail("update checkpoint");
    }
    if (e.deleted_adapter) {
      Stmt s(db_, "UPDATE adapters SET deleted = 1 WHERE id = ?");
      if (s.bind(1, *e.deleted_adapter).step() != SQLITE_DONE) return fail("delete adapter");
    }
    if (e.saved) {
      Stmt s(db_, "INSERT OR REPLACE INTO saved(client, name, adapter, path) VALUES(?, ?, ?, ?)");
      const SavedRow& r = e.saved->second;
      if (s.bind(1, e.saved->first).bind(2, r.name).bind(3, r.adapter).bind(4, r.path).step() != SQLITE_DONE)
        return fail("insert saved");
    }
    Stmt s(db_, "UPDATE requests SET state = ?, result = ?, finished = ? WHERE seq = ?");
    if (s.bind(1, std::string(c.ok ? "done" : "failed")).bind(2, c.result).bind(3, now_s()).bind(4, c.seq).step() !=
        SQLITE_DONE)
      return fail("finish request");
    return Status::ok();
  };
  for (const Completion& c : done) {
    if (Status st = one(c); !st) {
      (void)exec("ROLLBACK");  // the failure being reported is the first one
      return st;
    }
  }
  return exec("COMMIT");
}

Result<std::vector<AdapterRow>> Store::adapters() {
  std::lock_guard lk(mu_);
  Stmt s(db_, "SELECT id, client, rank, alpha, seed, ckpt_path, ckpt_seq FROM adapters WHERE deleted = 0 ORDER BY id");
  std::vector<AdapterRow> out;
  int rc;
  while ((rc = s.step()) == SQLITE_ROW)
    out.push_back({s.i64(0), s.i64(1), int(s.i64(2)), s.f64(3), s.i64(4), s.text(5), s.i64(6)});
  if (rc != SQLITE_DONE) return fail("select adapters");
  return out;
}

Result<std::optional<SavedRow>> Store::saved(int64_t client, const std::string& name) {
  std::lock_guard lk(mu_);
  Stmt s(db_, "SELECT name, path, adapter FROM saved WHERE client = ? AND name = ?");
  const int rc = s.bind(1, client).bind(2, name).step();
  if (rc == SQLITE_DONE) return std::optional<SavedRow>();
  if (rc != SQLITE_ROW) return fail("select saved");
  return std::optional<SavedRow>(SavedRow{s.text(0), s.text(1), s.i64(2)});
}

Result<std::string> Store::meta(const std::string& key) {
  std::lock_guard lk(mu_);
  Stmt s(db_, "SELECT value FROM meta WHERE key = ?");
  const int rc = s.bind(1, key).step();
  if (rc == SQLITE_DONE) return std::string();
  if (rc != SQLITE_ROW) return fail("select meta");
  return s.text(0);
}

Status Store::set_meta(const std::string& key, const std::string& value) {
  std::lock_guard lk(mu_);
  Stmt s(db_, "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)");
  if (s.bind(1, key).bind(2, value).step() != SQLITE_DONE) return fail("set meta");
  return Status::ok();
}

}  // namespace mobula::serve
