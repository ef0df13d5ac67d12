#include "io/hdf5.h"

#include <numeric>

#include "core/runtime/mpi.h"

namespace mobula::io {
namespace {

herr_t innermost(unsigned n, const H5E_error2_t* e, void* out) {
  if (n == 0) *static_cast<std::string*>(out) = e->desc ? e->desc : "";
  return 0;
}

struct SilenceHdf5 {
  SilenceHdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};

}  // namespace

std::string h5_detail() {
  std::string detail;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost, &detail);
  H5Eclear2(H5E_DEFAULT);
  return detail;
}

Status h5_error(const char* call, const std::string& what, const char* file, int line) {
  const std::string detail = h5_detail();
  return Status::io(std::string(call) + " failed for " + what + " at " + file + ":" + std::to_string(line) +
                    (detail.empty() ? "" : ": " + detail));
}

void hdf5_quiet() {
  static SilenceHdf5 once;
}

std::string hdf5_version() {
  unsigned maj = 0, min = 0, rel = 0;
  if (H5get_libversion(&maj, &min, &rel) < 0) return "unknown";
  std::string v = std::to_string(maj) + "." + std::to_string(min) + "." + std::to_string(rel);
#ifdef H5_HAVE_PARALLEL
  v += " (parallel)";
#endif
  return v;
}

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    (void)close();
    id_ = o.id_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

Status Handle::close() {
  if (id_ < 0) return Status::ok();
  const hid_t id = id_;
  id_ = H5I_INVALID_HID;
  herr_t rc = 0;
  switch (H5Iget_type(id)) {
    case H5I_FILE:
      rc = H5Fclose(id);
      break;
    case H5I_GROUP:
      rc = H5Gclose(id);
      break;
    case H5I_DATASET:
      rc = H5Dclose(id);
      break;
    case H5I_DATASPACE:
      rc = H5Sclose(id);
      break;
    case H5I_ATTR:
      rc = H5Aclose(id);
      break;
    case H5I_DATATYPE:
      rc = H5Tclose(id);
      break;
    case H5I_GENPROP_LST:
      rc = H5Pclose(id);
      break;
    default:
      rc = H5Idec_ref(id);
      break;
  }
  if (rc < 0) return h5_error("H5*close", "handle " + std::to_string(id), __FILE__, __LINE__);
  return Status::ok();
}

static Result<Handle> mpio_fapl(MPI_Comm comm, const std::string& path) {
  hdf5_quiet();
  MOBULA_H5_ID(fapl, H5Pcreate(H5P_FILE_ACCESS), path);
  MOBULA_H5(H5Pset_fapl_mpio(fapl.get(), comm, MPI_INFO_NULL), path);
  return fapl;
}

Result<H5File> H5File::create(const std::string& path, MPI_Comm comm) {
  auto fapl = mpio_fapl(comm, path);
  if (!fapl) return fapl.status();
  H5File f;
  f.path_ = path;
  f.file_ = Handle(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl->get()));
  if (!f.file_.valid()) return h5_error("H5Fcreate", path, __FILE__, __LINE__);
  return f;
}

Result<H5File> H5File::open(const std::string& path, MPI_Comm comm, bool writable) {
  auto fapl = mpio_fapl(comm, path);
  if (!fapl) return fapl.status();
  H5File f;
  f.path_ = path;
  f.file_ = Handle(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl->get()));
  if (!f.file_.valid()) return h5_error("H5Fopen", path, __FILE__, __LINE__);
  return f;
}

namespace {
Result<std::pair<hsize_t, hsize_t>> shard(size_t local, MPI_Comm comm) {
  unsigned long long mine = local, before = 0, total = 0;
  MOBULA_MPI(MPI_Exscan(&mine, &before, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, comm));
  int rank = 0;
  MOBULA_MPI(MPI_Comm_rank(comm, &rank));
  if (rank == 0) before = 0;  // MPI_Exscan leaves rank 0's result undefined
  MOBULA_MPI(MPI_Allreduce(&mine, &total, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, comm));
  return std::pair<hsize_t, hsize_t>{before, total};
}
}  // namespace

Status H5File::write_slices(const std::string& name, std::span<const float> local, MPI_Comm comm) {
  auto sh = shard(local.size(), comm);
  if (!sh) return sh.status();
  const auto [offset, total] = *sh;
  const std::string what = path_ + ":/" + name;
  hsize_t dims[1] = {total};
  MOBULA_H5_ID(fspace, H5Screate_simple(1, dims, nullptr), what);
  MOBULA_H5_ID(
      dset, H5Dcreate2(file_.get(), name.c_str(), H5T_IEEE_F32LE, fspace.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
      what);
  hsize_t off[1] = {offset}, cnt[1] = {local.size()};
  MOBULA_H5(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, off, nullptr, cnt, nullptr), what);
  MOBULA_H5_ID(mspace, H5Screate_simple(1, cnt, nullptr), what);
  MOBULA_H5_ID(dxpl, H5Pcreate(H5P_DATASET_XFER), what);
  MOBULA_H5(H5Pset_dxpl_mpio(dxpl.get(), H5FD_MPIO_COLLECTIVE), what);
  MOBULA_H5(H5Dwrite(dset.get(), H5T_NATIVE_FLOAT, mspace.get(), fspace.get(), dxpl.get(), local.data()), what);
  return Status::ok();
}

Status H5File::read_slices(const std::string& name, std::span<float> local, MPI_Comm comm) {
  auto sh = shard(local.size(), comm);
  if (!sh) return sh.status();
  const auto [offset, total] = *sh;
  const std::string what = path_ + ":/" + name;
  MOBULA_H5_ID(dset, H5Dopen2(file_.get(), name.c_str(), H5P_DEFAULT), what);
  MOBULA_H5_ID(fspace, H5Dget_space(dset.get()), what);
  hsize_t dims[1] = {0};
  if (H5Sget_simple_extent_ndims(fspace.get()) != 1) return Status::io(what + ": expected a 1-D dataset");
  MOBULA_H5(H5Sget_simple_extent_dims(fspace.get(), dims, nullptr), what);
  if (dims[0] != total)
    return Status::io(what + ": dataset has " + std::to_string(dims[0]) + " elements, the ranks asked for " +
                      std::to_string(total));
  hsize_t off[1] = {offset}, cnt[1] = {local.size()};
  MOBULA_H5(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, off, nullptr, cnt, nullptr), what);
  MOBULA_H5_ID(mspace, H5Screate_simple(1, cnt, nullptr), what);
  MOBULA_H5_ID(dxpl, H5Pcreate(H5P_DATASET_XFER), what);
  MOBULA_H5(H5Pset_dxpl_mpio(dxpl.get(), H5FD_MPIO_COLLECTIVE), what);
  MOBULA_H5(H5Dread(dset.get(), H5T_NATIVE_FLOAT, mspace.get(), fspace.get(), dxpl.get(), local.data()), what);
  return Status::ok();
}

Result<size_t> H5File::dataset_size(const std::string& name) {
  const std::string what = path_ + ":/" + name;
  MOBULA_H5_ID(dset, H5Dopen2(file_.get(), name.c_str(), H5P_DEFAULT), what);
  MOBULA_H5_ID(space, H5Dget_space(dset.get()), what);
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n < 0) return h5_error("H5Sget_simple_extent_npoints", what, __FILE__, __LINE__);
  return static_cast<size_t>(n);
}

Status H5File::set_attr(const std::string& name, const std::string& value) {
  const std::string what = path_ + ":/@" + name;
  MOBULA_H5_ID(type, H5Tcopy(H5T_C_S1), what);
  MOBULA_H5(H5Tset_size(type.get(), value.empty() ? 1 : value.size()), what);
  MOBULA_H5(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), what);
  MOBULA_H5_ID(space, H5Screate(H5S_SCALAR), what);
  if (H5Aexists(file_.get(), name.c_str()) > 0) MOBULA_H5(H5Adelete(file_.get(), name.c_str()), what);
  MOBULA_H5_ID(attr, H5Acreate2(file_.get(), name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  MOBULA_H5(H5Awrite(attr.get(), type.get(), value.empty() ? "" : value.data()), what);
  return Status::ok();
}

Result<std::string> H5File::get_attr(const std::string& name) {
  const std::string what = path_ + ":/@" + name;
  MOBULA_H5_ID(attr, H5Aopen(file_.get(), name.c_str(), H5P_DEFAULT), what);
  MOBULA_H5_ID(type, H5Aget_type(attr.get()), what);
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0)
    return Status::io(what + ": not a fixed-length string attribute");
  const size_t n = H5Tget_size(type.get());
  if (n == 0) return h5_error("H5Tget_size", what, __FILE__, __LINE__);
  std::string out(n, '\0');
  MOBULA_H5(H5Aread(attr.get(), type.get(), out.data()), what);
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return out;
}

}  // namespace mobula::io
