#include "core/runtime/layout.h"

#include <algorithm>
#include <cstdio>
#include <map>

namespace mobula {

Result<Layout> Layout::make(const JobSpec& spec, int world_size, std::span<const int> het) {
  const int want = spec.total_ranks();
  if (world_size <= 0)
    return Status::invalid_spec(spec.where("roles") + ": roles: world size " + std::to_string(world_size) +
                                " is not positive");
  if (want != world_size) {
    std::string parts;
    for (const auto& r : spec.roles) parts += (parts.empty() ? "" : " + ") + std::to_string(r.ranks) + " " + r.name;
    return Status::invalid_spec(spec.where("roles") + ": roles: role ranks add up to " + std::to_string(want) + " (" +
                                parts + ") but the job has " + std::to_string(world_size) + " ranks; start it with " +
                                std::to_string(want) + " ranks or change roles.*.ranks");
  }
  const bool use_het = !het.empty() && std::any_of(het.begin(), het.end(), [](int g) {
    return g >= 0;
  }) && std::any_of(spec.roles.begin(), spec.roles.end(), [](const RoleSpec& r) { return r.het_group >= 0; });
  if (!het.empty() && static_cast<int>(het.size()) != world_size)
    return Status::invalid_argument("layout: het group vector has " + std::to_string(het.size()) + " entries for " +
                                    std::to_string(world_size) + " ranks");

  Layout L;
  L.ranks_.resize(static_cast<size_t>(world_size));
  for (int r = 0; r < world_size; ++r) {
    L.ranks_[static_cast<size_t>(r)].rank = r;
    L.ranks_[static_cast<size_t>(r)].het_group = het.empty() ? -1 : het[static_cast<size_t>(r)];
  }
  std::vector<bool> taken(static_cast<size_t>(world_size), false);
  auto assign = [&](const RoleSpec& role, auto&& eligible) -> int {
    int got = 0;
    for (int r = 0; r < world_size && got < role.ranks; ++r) {
      if (taken[static_cast<size_t>(r)] || !eligible(r)) continue;
      auto& p = L.ranks_[static_cast<size_t>(r)];
      p.role = role.name;
      p.role_rank = got++;
      p.role_size = role.ranks;
      taken[static_cast<size_t>(r)] = true;
    }
    return got;
  };
  if (use_het) {
    // Pass 1: roles pinned to a het group; pass 2: the rest take what is left.
    std::map<int, int> group_size;
    for (int g : het) group_size[g]++;
    for (const auto& role : spec.roles) {
      if (role.het_group < 0) continue;
      const int got = assign(role, [&](int r) { return het[static_cast<size_t>(r)] == role.het_group; });
      if (got != role.ranks)
        return Status::invalid_spec(spec.where("roles." + role.name + ".het_group") + ": roles." + role.name +
                                    ".het_group: het group " + std::to_string(role.het_group) + " has " +
                                    std::to_string(group_size[role.het_group]) + " free tasks but " +
                                    std::to_string(role.ranks) + " " + role.name +
                                    " ranks are pinned to it; match the het component's --ntasks");
    }
    for (const auto& role : spec.roles) {
      if (role.het_group >= 0) continue;
      assign(role, [](int) { return true; });
    }
    for (const auto& p : L.ranks_)
      if (p.role.empty())
        return Status::invalid_spec(spec.where("roles") + ": roles: rank " + std::to_string(p.rank) + " (het group " +
                                    std::to_string(p.het_group) +
                                    ") has no role; pin a role to that group with roles.<role>.het_group");
  } else {
    for (const auto& role : spec.roles) assign(role, [](int) { return true; });
  }

  for (const auto& role : spec.roles) L.roles_.push_back(role.name);
  for (size_t i = 0; i < L.roles_.size(); ++i)
    for (size_t j = i + 1; j < L.roles_.size(); ++j) L.links_.emplace_back(L.roles_[i], L.roles_[j]);
  return L;
}

int Layout::role_index(std::string_view role) const {
  for (size_t i = 0; i < roles_.size(); ++i)
    if (roles_[i] == role) return static_cast<int>(i);
  return -1;
}

std::vector<int> Layout::ranks_of(std::string_view role) const {
  std::vector<int> out;
  for (const auto& p : ranks_)
    if (p.role == role) out.push_back(p.rank);
  return out;
}

std::string Layout::table(std::span<const std::string> hosts) const {
  std::string out = "rank  role      role rank  het  host\n";
  char line[256];
  for (const auto& p : ranks_) {
    const std::string host = static_cast<size_t>(p.rank) < hosts.size() ? hosts[static_cast<size_t>(p.rank)] : "";
    const std::string rr = std::to_string(p.role_rank) + "/" + std::to_string(p.role_size);
    std::snprintf(line, sizeof line, "%4d  %-8s  %-9s  %3s  %s\n", p.rank, p.role.c_str(), rr.c_str(),
                  p.het_group >= 0 ? std::to_string(p.het_group).c_str() : "-", host.c_str());
    out += line;
  }
  return out;
}

}  // namespace mobula
