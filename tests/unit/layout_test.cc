#include "core/runtime/layout.h"

#include <gtest/gtest.h>

namespace mobula {
namespace {

JobSpec spec_of(const std::string& roles, std::vector<std::string> sets = {}) {
  auto r = load_spec_from_string("[job]\nname = \"t\"\n" + roles, "l.toml", sets);
  EXPECT_TRUE(r.is_ok()) << r.status().message();
  return std::move(r).value();
}

const char* kThree = "[roles.trainer]\nranks = 2\n[roles.rollout]\nranks = 1\n[roles.embed]\nranks = 2\n";

TEST(Layout, ContiguousInCanonicalOrder) {
  auto L = Layout::make(spec_of(kThree), 5);
  ASSERT_TRUE(L.is_ok()) << L.status().message();
  const std::vector<std::string> roles = {"trainer", "trainer", "rollout", "embed", "embed"};
  const std::vector<int> rr = {0, 1, 0, 0, 1};
  for (int r = 0; r < 5; ++r) {
    EXPECT_EQ(L->at(r).role, roles[static_cast<size_t>(r)]);
    EXPECT_EQ(L->at(r).role_rank, rr[static_cast<size_t>(r)]);
  }
  EXPECT_EQ(L->at(4).role_size, 2);
  EXPECT_EQ(L->ranks_of("embed"), (std::vector<int>{3, 4}));
  ASSERT_EQ(L->links().size(), 3u);
  EXPECT_EQ(L->links()[0], (std::pair<std::string, std::string>{"trainer", "rollout"}));
  EXPECT_EQ(L->links()[2], (std::pair<std::string, std::string>{"rollout", "embed"}));
  EXPECT_EQ(L->role_index("embed"), 2);
  EXPECT_EQ(L->role_index("critic"), -1);
}

TEST(Layout, SingleRoleHasNoLinks) {
  auto L = Layout::make(spec_of("[roles.trainer]\nranks = 1\n"), 1);
  ASSERT_TRUE(L.is_ok());
  EXPECT_TRUE(L->links().empty());
}

TEST(Layout, RankTotalMismatchIsOneLineWithLocation) {
  auto L = Layout::make(spec_of(kThree), 4);
  ASSERT_FALSE(L.is_ok());
  EXPECT_EQ(L.status().exit_code(), 2);
  EXPECT_EQ(L.status().message(),
            "l.toml:3: roles: role ranks add up to 5 (2 trainer + 1 rollout + 2 embed) but the job has 4 ranks; "
            "start it with 5 ranks or change roles.*.ranks");
}

TEST(Layout, HetGroupsDecideRoles) {
  // Tasks of het group 1 come first in the world, yet they must become the embed ranks.
  auto spec = spec_of(kThree, {"roles.trainer.het_group=0", "roles.embed.het_group=1"});
  const std::vector<int> het = {1, 1, 0, 0, 0};
  auto L = Layout::make(spec, 5, het);
  ASSERT_TRUE(L.is_ok()) << L.status().message();
  EXPECT_EQ(L->ranks_of("embed"), (std::vector<int>{0, 1}));
  EXPECT_EQ(L->ranks_of("trainer"), (std::vector<int>{2, 3}));
  EXPECT_EQ(L->ranks_of("rollout"), (std::vector<int>{4}));  // unpinned role takes what is left
  EXPECT_EQ(L->at(3).role_rank, 1);
  EXPECT_EQ(L->at(0).het_group, 1);
}

TEST(Layout, HetGroupTooSmallIsAnError) {
  auto spec = spec_of(kThree, {"roles.trainer.het_group=0", "roles.embed.het_group=1"});
  const std::vector<int> het = {0, 1, 1, 1, 1};  // only one task in group 0 for 2 trainers
  auto L = Layout::make(spec, 5, het);
  ASSERT_FALSE(L.is_ok());
  EXPECT_NE(L.status().message().find("roles.trainer.het_group: het group 0 has 1 free tasks but 2 trainer ranks"),
            std::string::npos)
      << L.status().message();
}

TEST(Layout, HetGroupsIgnoredOutsideHetSteps) {
  auto spec = spec_of(kThree, {"roles.trainer.het_group=1"});
  auto L = Layout::make(spec, 5, std::vector<int>(5, -1));
  ASSERT_TRUE(L.is_ok());
  EXPECT_EQ(L->at(0).role, "trainer");
}

TEST(Layout, TableListsEveryRank) {
  auto L = Layout::make(spec_of(kThree), 5);
  ASSERT_TRUE(L.is_ok());
  const std::vector<std::string> hosts = {"n1", "n1", "n2", "n3", "n3"};
  const std::string t = L->table(hosts);
  EXPECT_NE(t.find("   2  rollout   0/1          -  n2"), std::string::npos) << t;
  EXPECT_EQ(std::count(t.begin(), t.end(), '\n'), 6);
}

}  // namespace
}  // namespace mobula
