#include "core/runtime/spec.h"

#include <xxhash.h>

#include <toml++/toml.h>
#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

namespace mobula {

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t subst = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, subst});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

namespace {

// "FILE:LINE" of `key`, else of its closest enclosing table, else FILE:1.
std::string closest_where(const std::map<std::string, std::string, std::less<>>& where, std::string_view key,
                          const std::string& file) {
  std::string k(key);
  while (true) {
    if (auto it = where.find(k); it != where.end()) return it->second;
    const auto dot = k.rfind('.');
    if (dot == std::string::npos) return file + ":1";
    k.resize(dot);
  }
}

const KeyDef* find_key(std::string_view path) {
  for (const auto& k : spec_schema())
    if (k.path == path) return &k;
  return nullptr;
}

// True when `path` names a table that holds schema keys ("roles", "roles.trainer", "model", ...).
bool is_known_table(std::string_view path) {
  for (const auto& s : spec_sections())
    if (s == path) return true;
  const std::string prefix = std::string(path) + ".";
  for (const auto& k : spec_schema())
    if (k.path.starts_with(prefix)) return true;
  return false;
}

std::string suggestion(std::string_view path) {
  std::vector<std::string> candidates;
  for (const auto& k : spec_schema()) {
    candidates.push_back(k.path);
    // also every enclosing table of a key
    for (size_t p = k.path.find('.'); p != std::string::npos; p = k.path.find('.', p + 1))
      candidates.push_back(k.path.substr(0, p));
  }
  for (const auto& s : spec_sections()) candidates.push_back(s);
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(path, c);
    if (d < best_d) best_d = d, best = c;
  }
  const size_t limit = std::max<size_t>(2, path.size() / 4);
  if (best_d > 0 && best_d <= limit) return "; did you mean '" + best + "'?";
  // Same last component under a different table (e.g. "trainer.ranks" at top level).
  const auto last = path.substr(path.rfind('.') == std::string_view::npos ? 0 : path.rfind('.') + 1);
  for (const auto& k : spec_schema())
    if (k.path.ends_with("." + std::string(last))) return "; did you mean '" + k.path + "'?";
  return "; see docs/spec.md for the keys";
}

std::string section_note(std::string_view path) {
  const auto dot = path.find('.');
  const std::string top(path.substr(0, dot));
  for (const auto& s : spec_sections()) {
    if (s != top) continue;
    for (const auto& k : spec_schema())
      if (k.path.starts_with(top + ".")) return "";
    return " (section [" + top + "] has no keys in this version of mobula)";
  }
  return "";
}

std::string describe(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return "string \"" + std::string(*n.value<std::string_view>()) + "\"";
    case toml::node_type::integer:
      return "integer " + std::to_string(*n.value<int64_t>());
    case toml::node_type::floating_point:
      return "float " + std::to_string(*n.value<double>());
    case toml::node_type::boolean:
      return *n.value<bool>() ? "boolean true" : "boolean false";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    default:
      return "a date/time";
  }
}

// Converts a TOML node to the key's type; empty optional + message on mismatch.
Status convert(const KeyDef& def, const toml::node& n, SpecValue* out) {
  auto mismatch = [&] { return Status::invalid_spec("expected " + type_name(def.type) + ", got " + describe(n)); };
  switch (def.type) {
    case ValueType::kInt: {
      auto v = n.value_exact<int64_t>();
      if (!v) return mismatch();
      if (*v < def.min || *v > def.max)
        return Status::invalid_spec("value " + std::to_string(*v) + " out of range [" + std::to_string(def.min) + ", " +
                                    std::to_string(def.max) + "]");
      *out = *v;
      return Status::ok();
    }
    case ValueType::kFloat: {
      if (!n.is_number()) return mismatch();
      *out = *n.value<double>();
      return Status::ok();
    }
    case ValueType::kBool: {
      auto v = n.value_exact<bool>();
      if (!v) return mismatch();
      *out = *v;
      return Status::ok();
    }
    case ValueType::kString: {
      auto v = n.value_exact<std::string>();
      if (!v) return mismatch();
      if (!def.choices.empty() && std::find(def.choices.begin(), def.choices.end(), *v) == def.choices.end()) {
        std::string list;
        for (const auto& c : def.choices) list += (list.empty() ? "" : ", ") + ("\"" + c + "\"");
        return Status::invalid_spec("\"" + *v + "\" is not one of " + list);
      }
      *out = *v;
      return Status::ok();
    }
    case ValueType::kStringList: {
      const auto* arr = n.as_array();
      if (!arr) return mismatch();
      std::vector<std::string> v;
      for (const auto& e : *arr) {
        auto s = e.value_exact<std::string>();
        if (!s) return Status::invalid_spec("expected an array of strings, found " + describe(e));
        v.push_back(*s);
      }
      *out = std::move(v);
      return Status::ok();
    }
  }
  return mismatch();
}

struct Loader {
  std::string file;
  std::map<std::string, std::pair<SpecValue, std::string>> set;  // path -> (value, origin)
  std::map<std::string, std::string, std::less<>> where;         // path or table -> FILE:LINE

  std::string loc(const toml::source_region& r) const {
    return file + ":" + std::to_string(r.begin.line ? r.begin.line : 1);
  }

  Status walk(const toml::table& t, const std::string& prefix) {
    for (auto&& [k, node] : t) {
      const std::string path = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
      const std::string at = loc(k.source().begin.line ? k.source() : node.source());
      if (const auto* sub = node.as_table()) {
        if (!is_known_table(path))
          return Status::invalid_spec(at + ": " + path + ": unknown table" + section_note(path) + suggestion(path));
        where.emplace(path, at);
        if (Status s = walk(*sub, path); !s) return s;
        continue;
      }
      const KeyDef* def = find_key(path);
      if (!def) {
        std::string msg = at + ": " + path + ": unknown key" + section_note(path) + suggestion(path);
        return Status::invalid_spec(msg);
      }
      SpecValue v;
      if (Status s = convert(*def, node, &v); !s) return Status::invalid_spec(at + ": " + path + ": " + s.message());
      set[path] = {std::move(v), at};
      where[path] = at;
    }
    return Status::ok();
  }

  Status apply_override(const std::string& ov, size_t index) {
    const std::string at = "--set:" + std::to_string(index);
    const auto eq = ov.find('=');
    if (eq == std::string::npos || eq == 0)
      return Status::invalid_spec(at + ": " + ov + ": expected KEY=VALUE, e.g. --set job.steps=10");
    const std::string path = ov.substr(0, eq);
    const std::string text = ov.substr(eq + 1);
    const KeyDef* def = find_key(path);
    if (!def) return Status::invalid_spec(at + ": " + path + ": unknown key" + suggestion(path));
    SpecValue v;
    if (def->type == ValueType::kString && !(text.size() >= 2 && text.front() == '"')) {
      toml::table t;
      t.insert("v", text);
      if (Status s = convert(*def, *t.get("v"), &v); !s)
        return Status::invalid_spec(at + ": " + path + ": " + s.message());
    } else {
      toml::table parsed;
      try {
        const std::string doc = "v = " + text;
        parsed = toml::parse(std::string_view(doc), std::string_view("--set"));
      } catch (const toml::parse_error&) {
        return Status::invalid_spec(at + ": " + path + ": cannot parse '" + text + "' as " + type_name(def->type) +
                                    " (TOML syntax)");
      }
      if (Status s = convert(*def, *parsed.get("v"), &v); !s)
        return Status::invalid_spec(at + ": " + path + ": " + s.message());
    }
    set[path] = {std::move(v), at};
    where[path] = at;
    return Status::ok();
  }

  std::string where_of(std::string_view key) const { return closest_where(where, key, file); }
};

template <class T>
const T& get(const std::map<std::string, std::pair<SpecValue, std::string>>& m, const std::string& k) {
  return std::get<T>(m.at(k).first);
}

}  // namespace

SlurmResources SlurmResources::inherit(const SlurmResources& g) const {
  SlurmResources r = *this;
  for (auto [mine, theirs] :
       {std::pair{&r.partition, &g.partition}, std::pair{&r.account, &g.account}, std::pair{&r.qos, &g.qos},
        std::pair{&r.constraint, &g.constraint}, std::pair{&r.gres, &g.gres}})
    if (mine->empty()) *mine = *theirs;
  for (auto [mine, theirs] : {std::pair{&r.nodes, &g.nodes}, std::pair{&r.tasks_per_node, &g.tasks_per_node},
                              std::pair{&r.gpus_per_node, &g.gpus_per_node}})
    if (*mine == 0) *mine = *theirs;
  return r;
}

int JobSpec::total_ranks() const {
  int n = 0;
  for (const auto& r : roles) n += r.ranks;
  return n;
}

const RoleSpec* JobSpec::role(std::string_view n) const {
  for (const auto& r : roles)
    if (r.name == n) return &r;
  return nullptr;
}

std::string JobSpec::where(std::string_view key) const {
  return closest_where(where_, key, file);
}

Result<int64_t> parse_slurm_duration(const std::string& t) {
  if (t.empty()) return int64_t{0};
  const auto bad = Status::invalid_argument("not a Slurm time: '" + t + "'");
  if (t.find_first_not_of("0123456789:-") != std::string::npos) return bad;
  int64_t days = 0;
  std::string rest = t;
  const bool with_days = t.find('-') != std::string::npos;
  std::vector<int64_t> parts;
  try {
    if (with_days) {
      const auto dash = t.find('-');
      if (dash == 0 || t.find('-', dash + 1) != std::string::npos) return bad;
      days = std::stoll(t.substr(0, dash));
      rest = t.substr(dash + 1);
    }
    size_t p = 0;
    while (true) {
      const auto c = rest.find(':', p);
      const std::string f = rest.substr(p, c == std::string::npos ? std::string::npos : c - p);
      if (f.empty() || f.size() > 6) return bad;
      parts.push_back(std::stoll(f));
      if (c == std::string::npos) break;
      p = c + 1;
    }
  } catch (const std::exception&) {
    return bad;
  }
  if (parts.size() > 3) return bad;
  int64_t secs = 0;
  if (with_days) {  // D-H, D-H:M, D-H:M:S
    secs = days * 86400 + parts[0] * 3600 + (parts.size() > 1 ? parts[1] * 60 : 0) + (parts.size() > 2 ? parts[2] : 0);
  } else if (parts.size() == 1) {  // minutes
    secs = parts[0] * 60;
  } else if (parts.size() == 2) {  // M:S
    secs = parts[0] * 60 + parts[1];
  } else {  // H:M:S
    secs = parts[0] * 3600 + parts[1] * 60 + parts[2];
  }
  return secs;
}

Result<JobSpec> load_spec(const std::string& file, const std::vector<std::string>& overrides) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return Status::invalid_spec(file + ":0: (file): cannot open the spec file; check the path");
  std::stringstream ss;
  ss << in.rdbuf();
  return load_spec_from_string(ss.str(), file, overrides);
}

Result<JobSpec> load_spec_from_string(std::string_view text, std::string file,
                                      const std::vector<std::string>& overrides) {
  Loader L;
  L.file = file;
  toml::table parsed;
  try {
    parsed = toml::parse(text, std::string_view(file));
  } catch (const toml::parse_error& e) {
    return Status::invalid_spec(L.loc(e.source()) + ": (syntax): " + std::string(e.description()) +
                                "; fix the TOML syntax");
  }
  if (Status s = L.walk(parsed, ""); !s) return s;
  for (size_t i = 0; i < overrides.size(); ++i)
    if (Status s = L.apply_override(overrides[i], i + 1); !s) return s;

  // Defaults and required keys.
  JobSpec spec;
  spec.file = file;
  for (const auto& def : spec_schema()) {
    auto it = L.set.find(def.path);
    if (it == L.set.end()) {
      if (def.required) {
        const auto dot = def.path.rfind('.');
        return Status::invalid_spec(L.where_of(def.path) + ": " + def.path + ": required key missing; add " +
                                    def.path.substr(dot + 1) + " = ... under [" + def.path.substr(0, dot) + "]");
      }
      spec.keys_.push_back({&def, def.default_value, "default"});
      L.set[def.path] = {def.default_value, "default"};
    } else {
      spec.keys_.push_back({&def, it->second.first, it->second.second});
    }
  }

  spec.name = get<std::string>(L.set, "job.name");
  if (spec.name.empty() || spec.name.find_first_of("/ \t\n") != std::string::npos)
    return Status::invalid_spec(L.where_of("job.name") + ": job.name: must be non-empty without '/' or whitespace");
  spec.workdir = get<std::string>(L.set, "job.workdir");
  for (size_t p; (p = spec.workdir.find("{name}")) != std::string::npos;) spec.workdir.replace(p, 6, spec.name);
  spec.seed = get<int64_t>(L.set, "job.seed");
  spec.steps = get<int64_t>(L.set, "job.steps");
  spec.threads = static_cast<int>(get<int64_t>(L.set, "job.threads"));
  spec.shards = static_cast<int>(get<int64_t>(L.set, "job.shards"));
  spec.workload = get<std::string>(L.set, "job.workload");
  for (const auto& r : known_roles()) {
    RoleSpec role{r, static_cast<int>(get<int64_t>(L.set, "roles." + r + ".ranks")),
                  static_cast<int>(get<int64_t>(L.set, "roles." + r + ".het_group"))};
    if (role.ranks > 0) spec.roles.push_back(role);
  }
  if (!spec.role("trainer"))
    return Status::invalid_spec(L.where_of("roles.trainer.ranks") +
                                ": roles.trainer.ranks: a job needs at least 1 trainer rank; set "
                                "[roles.trainer] ranks = 1 or more");
  for (const FlowKey& f : kFlowKeys) spec.transport.*f.choice = get<std::string>(L.set, f.key);

  auto geti = [&](const char* k) { return static_cast<int>(get<int64_t>(L.set, k)); };
  spec.model = {geti("model.layers"),    geti("model.heads"),   geti("model.d_model"),
                geti("model.mlp_ratio"), geti("model.context"), geti("model.microbatch")};
  if (spec.model.d_model % spec.model.heads != 0)
    return Status::invalid_spec(L.where_of("model.d_model") + ": model.d_model: " + std::to_string(spec.model.d_model) +
                                " is not a multiple of model.heads (" + std::to_string(spec.model.heads) + ")");
  spec.rl.task = get<std::string>(L.set, "rl.task");
  spec.rl.digits = geti("rl.digits");
  spec.rl.warm_start_steps = geti("rl.warm_start_steps");
  spec.rl.warm_start_batch = geti("rl.warm_start_batch");
  spec.rl.warm_start_noise = geti("rl.warm_start_noise");
  spec.rl.prompts_per_step = geti("rl.prompts_per_step");
  spec.rl.group_size = geti("rl.group_size");
  spec.rl.max_new_tokens = geti("rl.max_new_tokens");
  spec.rl.eval_problems = geti("rl.eval_problems");
  spec.rl.max_staleness = geti("rl.max_staleness");
  spec.rl.lr = get<double>(L.set, "rl.lr");
  spec.rl.warm_start_lr = get<double>(L.set, "rl.warm_start_lr");
  spec.rl.clip = get<double>(L.set, "rl.clip");
  spec.rl.clip_high = get<double>(L.set, "rl.clip_high");
  spec.rl.temperature = get<double>(L.set, "rl.temperature");
  spec.rl.kl_coef = get<double>(L.set, "rl.kl_coef");
  spec.rl.advantage_std = get<bool>(L.set, "rl.advantage_std");
  for (const char* k : {"rl.lr", "rl.warm_start_lr", "rl.clip", "rl.clip_high", "rl.temperature", "rl.kl_coef"})
    if (!(get<double>(L.set, k) >= 0) || !std::isfinite(get<double>(L.set, k)))
      return Status::invalid_spec(L.where_of(k) + ": " + k + ": must be a finite number >= 0");
  {
    auto& sl = spec.slurm;
    const auto res = [&](const std::string& prefix) {
      SlurmResources r;
      r.partition = get<std::string>(L.set, prefix + "partition");
      r.account = get<std::string>(L.set, prefix + "account");
      r.qos = get<std::string>(L.set, prefix + "qos");
      r.constraint = get<std::string>(L.set, prefix + "constraint");
      r.gres = get<std::string>(L.set, prefix + "gres");
      r.nodes = static_cast<int>(get<int64_t>(L.set, prefix + "nodes"));
      r.tasks_per_node = static_cast<int>(get<int64_t>(L.set, prefix + "tasks_per_node"));
      r.gpus_per_node = static_cast<int>(get<int64_t>(L.set, prefix + "gpus_per_node"));
      return r;
    };
    sl.job = res("slurm.");
    for (const auto& r : known_roles()) sl.role[r] = res("slurm." + r + ".");
    sl.time = get<std::string>(L.set, "slurm.time");
    sl.extra = get<std::vector<std::string>>(L.set, "slurm.extra");
    sl.env = get<std::vector<std::string>>(L.set, "slurm.env");
    sl.requeue = get<bool>(L.set, "slurm.requeue");
    sl.signal = get<std::string>(L.set, "slurm.signal");
    sl.signal_grace_s = static_cast<int>(get<int64_t>(L.set, "slurm.signal_grace_s"));
    sl.mpi = get<std::string>(L.set, "slurm.mpi");
    sl.step_grace_s = static_cast<int>(get<int64_t>(L.set, "slurm.step_grace_s"));
    // Values end up in a shell script: no newlines, no quotes where Slurm never needs them.
    for (const auto& k : spec.keys_) {
      if (k.def->path.rfind("slurm.", 0) != 0) continue;
      std::vector<std::string> vals;
      if (const auto* v = std::get_if<std::string>(&k.value)) vals.push_back(*v);
      if (const auto* v = std::get_if<std::vector<std::string>>(&k.value)) vals = *v;
      for (const auto& v : vals)
        if (v.find_first_of("\n\r") != std::string::npos ||
            (k.def->path != "slurm.env" && k.def->path != "slurm.extra" &&
             v.find_first_of("'\"`$\\ ") != std::string::npos))
          return Status::invalid_spec(L.where_of(k.def->path) + ": " + k.def->path + ": \"" + v +
                                      "\" contains a character that cannot go into a batch script");
    }
    {
      const std::string k = get<std::string>(L.set, "slurm.keep_on_failure");
      auto secs = parse_slurm_duration(k);
      if (!secs)
        return Status::invalid_spec(L.where_of("slurm.keep_on_failure") + ": slurm.keep_on_failure: \"" + k +
                                    "\" is not a Slurm time (MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]])");
      sl.keep_on_failure_s = static_cast<int>(*secs);
    }
    if (sl.time.find_first_not_of("0123456789:-") != std::string::npos)
      return Status::invalid_spec(L.where_of("slurm.time") + ": slurm.time: \"" + sl.time +
                                  "\" is not a Slurm time (MM, HH:MM:SS or D-HH:MM:SS)");
    for (const auto& e : sl.env) {
      const auto eq = e.find('=');
      const std::string name = e.substr(0, eq);
      if (eq == std::string::npos || name.empty() || std::isdigit(static_cast<unsigned char>(name[0])) ||
          name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") !=
              std::string::npos)
        return Status::invalid_spec(L.where_of("slurm.env") + ": slurm.env: \"" + e + "\" is not NAME=VALUE");
    }
    if (sl.mpi.empty() || sl.mpi.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") != std::string::npos)
      return Status::invalid_spec(L.where_of("slurm.mpi") + ": slurm.mpi: \"" + sl.mpi +
                                  "\" is not an srun --mpi plugin name");
  }
  spec.fault.max_restarts = static_cast<int>(get<int64_t>(L.set, "fault.max_restarts"));
  spec.fault.restart_delay_s = static_cast<int>(get<int64_t>(L.set, "fault.restart_delay_s"));
  spec.checkpoint.every = static_cast<int>(get<int64_t>(L.set, "checkpoint.every"));
  spec.checkpoint.keep = static_cast<int>(get<int64_t>(L.set, "checkpoint.keep"));
  spec.checkpoint.async = get<bool>(L.set, "checkpoint.async");
  spec.fault.hang_timeout_s = static_cast<int>(get<int64_t>(L.set, "fault.hang_timeout_s"));
  spec.fault.abort_grace_s = static_cast<int>(get<int64_t>(L.set, "fault.abort_grace_s"));
  spec.fault.max_requeues = static_cast<int>(get<int64_t>(L.set, "fault.max_requeues"));
  spec.data.dir = get<std::string>(L.set, "data.dir");
  if (spec.data.dir.empty()) spec.data.dir = spec.workdir + "/data";
  spec.data.images = get<int64_t>(L.set, "data.images");
  spec.data.per_shard = static_cast<int>(get<int64_t>(L.set, "data.per_shard"));
  spec.data.size = static_cast<int>(get<int64_t>(L.set, "data.size"));
  spec.data.encoding = get<std::string>(L.set, "data.encoding");
  spec.latent.mode = get<std::string>(L.set, "latent.mode");
  spec.latent.batch = static_cast<int>(get<int64_t>(L.set, "latent.batch"));
  spec.latent.prefetch = static_cast<int>(get<int64_t>(L.set, "latent.prefetch"));
  spec.latent.base_channels = static_cast<int>(get<int64_t>(L.set, "latent.base_channels"));
  spec.latent.downsamples = static_cast<int>(get<int64_t>(L.set, "latent.downsamples"));
  spec.latent.hidden = static_cast<int>(get<int64_t>(L.set, "latent.hidden"));
  spec.latent.lr = get<double>(L.set, "latent.lr");
  spec.latent.encoder_weights = get<std::string>(L.set, "latent.encoder_weights");
  spec.curate.task_images = static_cast<int>(get<int64_t>(L.set, "curate.task_images"));
  spec.curate.threshold = get<double>(L.set, "curate.threshold");
  spec.curate.per_shard = static_cast<int>(get<int64_t>(L.set, "curate.per_shard"));
  spec.curate.duplicates = static_cast<int>(get<int64_t>(L.set, "curate.duplicates"));
  spec.curate.backend = get<std::string>(L.set, "curate.backend");
  spec.curate.redis = get<std::string>(L.set, "curate.redis");
  spec.curate.queue = get<std::string>(L.set, "curate.queue");
  if (spec.curate.queue.empty()) spec.curate.queue = spec.name;
  spec.curate.lease_s = get<double>(L.set, "curate.lease_s");
  spec.curate.max_attempts = static_cast<int>(get<int64_t>(L.set, "curate.max_attempts"));
  if (!(spec.curate.lease_s > 0))
    return Status::invalid_spec(L.where_of("curate.lease_s") + ": curate.lease_s: must be > 0 (seconds)");
  if (!(spec.curate.threshold > 0 && spec.curate.threshold <= 1))
    return Status::invalid_spec(L.where_of("curate.threshold") + ": curate.threshold: must be in (0, 1]");
  {
    ServeSpec& v = spec.serve;
    auto i = [&](const char* k) { return static_cast<int>(get<int64_t>(L.set, k)); };
    v.host = get<std::string>(L.set, "serve.host");
    v.port = i("serve.port");
    v.state_dir = get<std::string>(L.set, "serve.state_dir");
    if (v.state_dir.empty()) v.state_dir = spec.workdir + "/serve";
    v.base = get<std::string>(L.set, "serve.base");
    v.max_body_kib = i("serve.max_body_kib");
    v.max_rows = i("serve.max_rows");
    v.pass_rows = i("serve.pass_rows");
    v.chunk_rows = i("serve.chunk_rows");
    v.sample_rows = i("serve.sample_rows");
    v.max_adapters = i("serve.max_adapters");
    v.max_pending = i("serve.max_pending");
    v.lora_rank = i("serve.lora_rank");
    v.threads = i("serve.threads");
    v.lora_alpha = get<double>(L.set, "serve.lora_alpha");
    v.max_wait_s = get<double>(L.set, "serve.max_wait_s");
    if (!(v.lora_alpha > 0))
      return Status::invalid_spec(L.where_of("serve.lora_alpha") + ": serve.lora_alpha: must be > 0");
    if (!(v.max_wait_s >= 0))
      return Status::invalid_spec(L.where_of("serve.max_wait_s") + ": serve.max_wait_s: must be >= 0 (seconds)");
    if (v.chunk_rows > v.pass_rows)
      return Status::invalid_spec(L.where_of("serve.chunk_rows") +
                                  ": serve.chunk_rows: " + std::to_string(v.chunk_rows) + " exceeds serve.pass_rows (" +
                                  std::to_string(v.pass_rows) + "): a chunk must fit in one pass");
    if (spec.workload == "serve" && spec.total_ranks() != 1)
      return Status::invalid_spec(L.where_of("roles.trainer.ranks") +
                                  ": roles: workload \"serve\" runs on one rank "
                                  "in this version (roles.trainer.ranks = 1, no other roles); " +
                                  std::to_string(spec.total_ranks()) + " ranks are set");
  }
  if (spec.workload == "curate" && (spec.role("trainer")->ranks != 1 || !spec.role("embed")))
    return Status::invalid_spec(L.where_of("roles.trainer.ranks") +
                                ": roles: workload \"curate\" needs exactly 1 trainer rank (the coordinator: it "
                                "serves the queue and writes the output) and at least 1 embed rank (the workers)");
  if (spec.workload == "latent-pretrain") {
    const RoleSpec* tr = spec.role("trainer");
    const RoleSpec* em = spec.role("embed");
    if (!tr)
      return Status::invalid_spec(L.where_of("roles.trainer.ranks") +
                                  ": roles.trainer.ranks: workload \"latent-pretrain\" needs at least 1 trainer");
    if (spec.latent.mode == "jit" && !em)
      return Status::invalid_spec(L.where_of("latent.mode") +
                                  ": latent.mode: \"jit\" needs embed ranks (roles.embed.ranks >= 1); or use "
                                  "\"inline\"");
    if (spec.latent.mode == "inline" && em)
      return Status::invalid_spec(L.where_of("latent.mode") +
                                  ": latent.mode: \"inline\" has the trainers encode; set roles.embed.ranks = 0");
    if (spec.role("rollout"))
      return Status::invalid_spec(
          L.where_of("roles.rollout.ranks") +
          ": roles.rollout.ranks: workload \"latent-pretrain\" has no rollout role; set it to 0");
    if (spec.latent.batch % tr->ranks != 0)
      return Status::invalid_spec(L.where_of("latent.batch") + ": latent.batch: " + std::to_string(spec.latent.batch) +
                                  " is not a multiple of the " + std::to_string(tr->ranks) + " trainer ranks");
    if (spec.data.size % (1 << spec.latent.downsamples) != 0)
      return Status::invalid_spec(L.where_of("data.size") + ": data.size: " + std::to_string(spec.data.size) +
                                  " is not a multiple of 2^latent.downsamples");
  }
  spec.metrics.port = static_cast<int>(get<int64_t>(L.set, "metrics.port"));
  spec.metrics.address = get<std::string>(L.set, "metrics.address");
  spec.metrics.interval_s = get<double>(L.set, "metrics.interval_s");
  if (spec.metrics.interval_s < 0)
    return Status::invalid_spec(L.where_of("metrics.interval_s") + ": metrics.interval_s: must be >= 0 (seconds)");
  spec.checkpoint.dir = get<std::string>(L.set, "checkpoint.dir");
  if (spec.checkpoint.dir.empty())
    return Status::invalid_spec(L.where_of("checkpoint.dir") + ": checkpoint.dir: must not be empty");
  if (spec.checkpoint.dir.front() != '/') spec.checkpoint.dir = spec.workdir + "/" + spec.checkpoint.dir;
  if (spec.workload == "grpo" && (!spec.role("rollout")))
    return Status::invalid_spec(L.where_of("roles.rollout.ranks") +
                                ": roles.rollout.ranks: workload \"grpo\" needs at least 1 rollout rank");
  // Every trainer needs a shard of the step's batch (docs/rl.md, "Determinism").
  if (const RoleSpec* tr = spec.role("trainer"); spec.workload == "grpo" && tr && tr->ranks > spec.shards)
    return Status::invalid_spec(L.where_of("job.shards") + ": job.shards: " + std::to_string(spec.shards) +
                                " is less than the " + std::to_string(tr->ranks) +
                                " trainers; every trainer needs a shard: raise job.shards to " +
                                std::to_string(tr->ranks) + " or more");
  spec.where_ = std::move(L.where);
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, 0);
  for (const auto& k : spec.keys_) {
    const std::string line = k.def->path + "=" + value_to_string(k.value) + "\n";
    XXH64_update(st, line.data(), line.size());
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(XXH64_digest(st)));
  XXH64_freeState(st);
  spec.hash_ = hex;
  return spec;
}

}  // namespace mobula
