// Role and link communicators at np = 1, 2, 4 against the layout, and the layout-check workload.
#include <gtest/gtest.h>
#include <mpi.h>

#include "core/runtime/layout.h"
#include "core/runtime/role_comms.h"
#include "rl/roles/workload.h"
#include "tests/support/mpi_world.h"

namespace mobula {
namespace {

using test::world_rank;
using test::world_size;

// trainer = ceil(n/2), rollout = floor(n/2) (none at np 1).
JobSpec spec_for(int n, int steps = 2) {
  const int t = (n + 1) / 2, r = n / 2;
  auto s = load_spec_from_string("[job]\nname = \"comm\"\nsteps = " + std::to_string(steps) +
                                     "\n[roles.trainer]\nranks = " + std::to_string(t) +
                                     "\n[roles.rollout]\nranks = " + std::to_string(r) + "\n",
                                 "comm.toml");
  EXPECT_TRUE(s.is_ok()) << s.status().message();
  return std::move(s).value();
}

TEST(RoleComms, SizesAndMembershipMatchLayout) {
  const int n = world_size(), me = world_rank();
  const auto spec = spec_for(n);
  auto layout = Layout::make(spec, n);
  ASSERT_TRUE(layout.is_ok()) << layout.status().message();
  auto comms = RoleComms::create(MPI_COMM_WORLD, *layout);
  ASSERT_TRUE(comms.is_ok()) << comms.status().message();

  int rsize = 0, rrank = 0;
  ASSERT_EQ(MPI_Comm_size(comms->role(), &rsize), MPI_SUCCESS);
  ASSERT_EQ(MPI_Comm_rank(comms->role(), &rrank), MPI_SUCCESS);
  EXPECT_EQ(rsize, layout->at(me).role_size);
  EXPECT_EQ(rrank, layout->at(me).role_rank);

  // The role communicator reduces exactly over the role's world ranks.
  int mine = me, sum = 0, want = 0;
  for (int r : layout->ranks_of(layout->at(me).role)) want += r;
  ASSERT_EQ(MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, comms->role()), MPI_SUCCESS);
  EXPECT_EQ(sum, want);

  if (n == 1) {
    EXPECT_TRUE(comms->links().empty());
  } else {
    MPI_Comm link = comms->link("rollout", "trainer");
    ASSERT_NE(link, MPI_COMM_NULL);
    int lsize = 0, lrank = 0;
    MPI_Comm_size(link, &lsize);
    MPI_Comm_rank(link, &lrank);
    EXPECT_EQ(lsize, n);
    EXPECT_EQ(lrank, me);  // trainers first, in world order
    EXPECT_EQ(comms->link("trainer", "embed"), MPI_COMM_NULL);
  }
}

TEST(RoleComms, LayoutCheckWorkloadPasses) {
  const int n = world_size();
  const auto spec = spec_for(n, 3);
  auto layout = Layout::make(spec, n);
  ASSERT_TRUE(layout.is_ok());
  auto comms = RoleComms::create(MPI_COMM_WORLD, *layout);
  ASSERT_TRUE(comms.is_ok());
  rl::WorkloadContext ctx{spec, *layout, *comms, MPI_COMM_WORLD, world_rank()};
  const Status s = rl::run_workload(ctx);
  EXPECT_TRUE(s.is_ok()) << s.message();
}

TEST(RoleComms, LayoutCheckDetectsAWrongLayout) {
  // Communicators built for one layout, checked against another: every rank must report failure
  // (agreed with an all-reduce), none may hang.
  const int n = world_size();
  if (n < 2) GTEST_SKIP() << "needs two roles";
  const auto spec = spec_for(n);
  auto layout = Layout::make(spec, n);
  ASSERT_TRUE(layout.is_ok());
  auto comms = RoleComms::create(MPI_COMM_WORLD, *layout);
  ASSERT_TRUE(comms.is_ok());
  // Same world size, different split: 1 trainer, n-1 rollout.
  auto other_spec = load_spec_from_string(
      "[job]\nname = \"x\"\n[roles.trainer]\nranks = 1\n[roles.rollout]\nranks = " + std::to_string(n - 1) + "\n",
      "x.toml");
  ASSERT_TRUE(other_spec.is_ok());
  auto other = Layout::make(*other_spec, n);
  ASSERT_TRUE(other.is_ok());
  if (n == 2) GTEST_SKIP() << "at np 2 both splits are the same";
  rl::WorkloadContext ctx{*other_spec, *other, *comms, MPI_COMM_WORLD, world_rank()};
  const Status s = rl::run_layout_check(ctx);
  EXPECT_FALSE(s.is_ok());
}

}  // namespace
}  // namespace mobula
