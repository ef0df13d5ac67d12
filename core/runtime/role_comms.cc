#include "core/runtime/role_comms.h"

#include "core/runtime/mpi.h"

namespace mobula {

Result<RoleComms> RoleComms::create(MPI_Comm world, const Layout& layout) {
  int rank = 0, size = 0;
  MOBULA_MPI(MPI_Comm_rank(world, &rank));
  MOBULA_MPI(MPI_Comm_size(world, &size));
  if (size != layout.world_size())
    return Status::invalid_argument("RoleComms: communicator has " + std::to_string(size) + " ranks, layout has " +
                                    std::to_string(layout.world_size()));
  RoleComms c;
  const Placement& me = layout.at(rank);
  MOBULA_MPI(MPI_Comm_split(world, layout.role_index(me.role), me.role_rank, &c.role_));
  MOBULA_MPI(MPI_Comm_set_errhandler(c.role_, MPI_ERRORS_RETURN));
  for (const auto& [a, b] : layout.links()) {
    Link l{a, b, MPI_COMM_NULL};
    const bool member = me.role == a || me.role == b;
    // key: world rank keeps the first role's ranks first (roles are contiguous, canonical order).
    MOBULA_MPI(MPI_Comm_split(world, member ? 0 : MPI_UNDEFINED, rank, &l.comm));
    if (l.comm != MPI_COMM_NULL) MOBULA_MPI(MPI_Comm_set_errhandler(l.comm, MPI_ERRORS_RETURN));
    c.links_.push_back(std::move(l));
  }
  return c;
}

MPI_Comm RoleComms::link(std::string_view a, std::string_view b) const {
  for (const auto& l : links_)
    if ((l.a == a && l.b == b) || (l.a == b && l.b == a)) return l.comm;
  return MPI_COMM_NULL;
}

RoleComms::RoleComms(RoleComms&& o) noexcept : role_(o.role_), links_(std::move(o.links_)) {
  o.role_ = MPI_COMM_NULL;
  o.links_.clear();
}

RoleComms& RoleComms::operator=(RoleComms&& o) noexcept {
  if (this != &o) {
    release();
    role_ = o.role_;
    links_ = std::move(o.links_);
    o.role_ = MPI_COMM_NULL;
    o.links_.clear();
  }
  return *this;
}

void RoleComms::release() {
  int fin = 0;
  MPI_Finalized(&fin);
  if (fin) return;
  // MPI_Comm_free failures at teardown cannot be acted upon; they are ignored deliberately.
  if (role_ != MPI_COMM_NULL) (void)MPI_Comm_free(&role_);
  for (auto& l : links_)
    if (l.comm != MPI_COMM_NULL) (void)MPI_Comm_free(&l.comm);
  links_.clear();
}

RoleComms::~RoleComms() {
  release();
}

}  // namespace mobula
