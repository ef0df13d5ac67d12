// Role communicators: MPI_COMM_WORLD split by the layout.
//
// Contract
//  * RoleComms::create() is collective over `world` (every rank, same layout) and checks every
//    MPI call. It builds one communicator per role (each rank holds its own role's) and one per
//    link of the layout (the union of two roles' ranks, ordered by world rank: the first role's
//    ranks come first because roles are contiguous in canonical order).
//  * The object owns the communicators and frees them on destruction (not collective in MPI's
//    sense, but every rank should destroy it before MPI_Finalize). Not thread-safe.
#pragma once

#include <mpi.h>

#include <string>
#include <string_view>
#include <vector>

#include "core/runtime/layout.h"

namespace mobula {

class RoleComms {
 public:
  static Result<RoleComms> create(MPI_Comm world, const Layout& layout);
  RoleComms() = default;
  RoleComms(RoleComms&&) noexcept;
  RoleComms& operator=(RoleComms&&) noexcept;
  RoleComms(const RoleComms&) = delete;
  RoleComms& operator=(const RoleComms&) = delete;
  ~RoleComms();

  // This rank's role communicator.
  MPI_Comm role() const { return role_; }
  // The link communicator of roles a and b (either order); MPI_COMM_NULL when this rank is in
  // neither role or the link does not exist.
  MPI_Comm link(std::string_view a, std::string_view b) const;

  struct Link {
    std::string a, b;
    MPI_Comm comm = MPI_COMM_NULL;
  };
  const std::vector<Link>& links() const { return links_; }

 private:
  void release();
  MPI_Comm role_ = MPI_COMM_NULL;
  std::vector<Link> links_;
};

}  // namespace mobula
