#include "launch/registry.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/metrics/events.h"
#include "core/runtime/files.h"

namespace mobula::launch {

namespace fs = std::filesystem;

std::string registry_root() {
  if (const char* h = std::getenv("MOBULA_HOME"); h && *h) return h;
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.mobula";
  return ".mobula";
}

Status register_job(const JobRecord& r) {
  const fs::path dir = fs::path(registry_root()) / "jobs";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::io("job registry " + dir.string() + ": " + ec.message() + "; set MOBULA_HOME elsewhere");
  std::string text;
  for (const auto& [k, v] : std::vector<std::pair<std::string, std::string>>{{"id", r.id},
                                                                             {"name", r.name},
                                                                             {"workdir", r.workdir},
                                                                             {"spec", r.spec},
                                                                             {"submitted", r.submitted},
                                                                             {"launcher", r.launcher},
                                                                             {"host", r.host},
                                                                             {"pid", std::to_string(r.pid)}})
    text += k + "=" + v + "\n";
  return write_file_atomically((dir / (r.id + ".job")).string(), text);
}

namespace {
Result<JobRecord> read_record(const fs::path& p) {
  std::ifstream in(p);
  if (!in) return Status::io(p.string() + ": cannot read");
  std::map<std::string, std::string> kv;
  for (std::string line; std::getline(in, line);) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
  }
  JobRecord r;
  r.id = kv["id"];
  r.name = kv["name"];
  r.workdir = kv["workdir"];
  r.spec = kv["spec"];
  r.submitted = kv["submitted"];
  if (!kv["launcher"].empty()) r.launcher = kv["launcher"];
  r.host = kv["host"];
  r.pid = std::atol(kv["pid"].c_str());
  if (r.id.empty() || r.workdir.empty()) return Status::io(p.string() + ": not a job record (id, workdir missing)");
  return r;
}
}  // namespace

Result<std::vector<JobRecord>> list_jobs() {
  std::vector<JobRecord> out;
  const fs::path dir = fs::path(registry_root()) / "jobs";
  std::error_code ec;
  if (!fs::exists(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() != ".job") continue;
    auto r = read_record(e.path());
    if (!r) return r.status();
    out.push_back(std::move(r).value());
  }
  if (ec) return Status::io(dir.string() + ": " + ec.message());
  std::sort(out.begin(), out.end(), [](const JobRecord& a, const JobRecord& b) {
    if (a.submitted != b.submitted) return a.submitted < b.submitted;
    return a.id.size() != b.id.size() ? a.id.size() < b.id.size() : a.id < b.id;
  });
  return out;
}

Result<JobRecord> find_job(const std::string& key) {
  auto all = list_jobs();
  if (!all) return all.status();
  for (auto it = all->rbegin(); it != all->rend(); ++it)
    if (it->id == key) return *it;
  for (auto it = all->rbegin(); it != all->rend(); ++it)
    if (it->name == key) return *it;
  return Status::not_found("no job '" + key + "' in the registry " + registry_root() +
                           "/jobs (jobs of mobula submit and mobula run are registered; MOBULA_HOME moves it)");
}

}  // namespace mobula::launch
