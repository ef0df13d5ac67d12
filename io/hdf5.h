// Thin RAII layer over parallel HDF5 (MPI-IO). Every HDF5 call is checked; failures come back as
// Status with the call, the object path and HDF5's innermost error message. The automatic HDF5
// error-stack printing is switched off (messages would interleave across ranks).
//
// Contract
//  * H5File::create/open are collective over `comm` (MPI-IO driver); all ranks pass the same path.
//  * write_slices/read_slices are collective: rank r writes/reads `local.size()` elements starting
//    at the sum of the sizes of ranks < r (the flat-buffer shard layout checkpoints use).
//  * Objects are not thread-safe (HDF5 built without thread safety on Debian).
#pragma once

#include <hdf5.h>
#include <mpi.h>

#include <span>
#include <string>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::io {

std::string hdf5_version();

// HDF5 failures as Status: "<call> failed for <what> at <file>:<line>: <HDF5's innermost message>"
// (clears HDF5's error stack). h5_detail(): that innermost message alone. hdf5_quiet(): stops HDF5
// printing its own error stacks (once per process): errors are reported through Status.
Status h5_error(const char* call, const std::string& what, const char* file, int line);
std::string h5_detail();
void hdf5_quiet();

// Owns an hid_t and closes it with the matching H5*close.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(Handle&& o) noexcept : id_(o.id_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { close(); }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  Status close();

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// Return h5_error(...) from the enclosing function when `call` fails (< 0) / yields an invalid id.
#define MOBULA_H5(call, what)                                           \
  do {                                                                  \
    if ((call) < 0) return h5_error(#call, (what), __FILE__, __LINE__); \
  } while (0)
#define MOBULA_H5_ID(var, call, what) \
  Handle var{(call)};                 \
  if (!var.valid()) return h5_error(#call, (what), __FILE__, __LINE__)

class H5File {
 public:
  static Result<H5File> create(const std::string& path, MPI_Comm comm);  // truncates
  static Result<H5File> open(const std::string& path, MPI_Comm comm, bool writable = false);
  const std::string& path() const { return path_; }
  hid_t id() const { return file_.get(); }
  Status close() { return file_.close(); }

  // Collective flat-buffer shards of a 1-D float32 dataset `name` (created by write_slices).
  Status write_slices(const std::string& name, std::span<const float> local, MPI_Comm comm);
  Status read_slices(const std::string& name, std::span<float> local, MPI_Comm comm);
  Result<size_t> dataset_size(const std::string& name);

  // String attributes on the root group. Collective for writes (HDF5 metadata rule).
  Status set_attr(const std::string& name, const std::string& value);
  Result<std::string> get_attr(const std::string& name);

 private:
  std::string path_;
  Handle file_;
};

}  // namespace mobula::io
