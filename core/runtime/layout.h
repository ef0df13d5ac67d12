// Role layout: which world rank plays which role.
//
// Contract
//  * Layout::make() is local and deterministic: every rank computes the same layout from the same
//    spec, world size and het-group vector.
//  * Without Slurm heterogeneous-job information (het_group_of_rank empty or all -1) ranks are
//    assigned contiguously in canonical role order: trainer ranks first, then rollout, then embed.
//  * With it, a rank whose het group is g plays a role whose roles.<r>.het_group == g (roles
//    sharing a group are filled in canonical order); roles with het_group -1 take the remaining
//    ranks. Counts must match exactly.
//  * Impossible layouts return Status::invalid_spec "FILE:LINE: KEY: message; what to do".
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/runtime/spec.h"

namespace mobula {

struct Placement {
  int rank = 0;       // world rank
  std::string role;   // "trainer", ...
  int role_rank = 0;  // rank inside the role communicator
  int role_size = 0;
  int het_group = -1;
};

class Layout {
 public:
  static Result<Layout> make(const JobSpec& spec, int world_size, std::span<const int> het_group_of_rank = {});

  int world_size() const { return static_cast<int>(ranks_.size()); }
  const std::vector<Placement>& ranks() const { return ranks_; }
  const Placement& at(int rank) const { return ranks_.at(static_cast<size_t>(rank)); }
  // Roles present, canonical order.
  const std::vector<std::string>& roles() const { return roles_; }
  int role_index(std::string_view role) const;  // -1 if absent
  std::vector<int> ranks_of(std::string_view role) const;
  // Pairs of roles that share a communicator (the union of both groups), canonical order.
  // Every pair of present roles gets one: trainer+rollout (weights, rollouts), trainer+embed
  // (latents), rollout+embed.
  const std::vector<std::pair<std::string, std::string>>& links() const { return links_; }
  // A human-readable table "rank role role_rank/role_size host"; hosts[i] for rank i (may be empty).
  std::string table(std::span<const std::string> hosts = {}) const;

 private:
  std::vector<Placement> ranks_;
  std::vector<std::string> roles_;
  std::vector<std::pair<std::string, std::string>> links_;
};

}  // namespace mobula
