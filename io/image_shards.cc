#include "io/image_shards.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/runtime/files.h"

namespace mobula::io {

namespace fs = std::filesystem;

namespace {

const char* const kDocs = "docs/formats/images.md";

}  // namespace

// ---- Shards ------------------------------------------------------------------------------------

namespace {

Status write_dataset(hid_t file, const char* name, hid_t file_type, hid_t mem_type, const void* data, hsize_t n,
                     const std::string& path) {
  const std::string what = path + ":/" + name;
  hsize_t dims[1] = {n};
  MOBULA_H5_ID(space, H5Screate_simple(1, dims, nullptr), what);
  // No modification times in the object headers: the same shard is the same bytes (a curated
  // dataset written twice, after a crash or not, compares equal byte for byte).
  MOBULA_H5_ID(dcpl, H5Pcreate(H5P_DATASET_CREATE), what);
  MOBULA_H5(H5Pset_obj_track_times(dcpl.get(), false), what);
  MOBULA_H5_ID(dset, H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), what);
  MOBULA_H5(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), what);
  return dset.close();
}

// Variable-length UTF-8 string (h5py reads it as str).
Status write_str_attr(hid_t obj, const char* name, const std::string& value, const std::string& path) {
  const std::string what = path + ":/@" + name;
  MOBULA_H5_ID(type, H5Tcopy(H5T_C_S1), what);
  MOBULA_H5(H5Tset_size(type.get(), H5T_VARIABLE), what);
  MOBULA_H5(H5Tset_cset(type.get(), H5T_CSET_UTF8), what);
  MOBULA_H5_ID(space, H5Screate(H5S_SCALAR), what);
  MOBULA_H5_ID(attr, H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  const char* c = value.c_str();
  MOBULA_H5(H5Awrite(attr.get(), type.get(), &c), what);
  return attr.close();
}

Status write_u64_attr(hid_t obj, const char* name, hid_t file_type, uint64_t value, const std::string& path) {
  const std::string what = path + ":/@" + name;
  MOBULA_H5_ID(space, H5Screate(H5S_SCALAR), what);
  MOBULA_H5_ID(attr, H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  MOBULA_H5(H5Awrite(attr.get(), H5T_NATIVE_UINT64, &value), what);
  return attr.close();
}

Result<bool> exists(hid_t file, const char* name, bool attribute, const std::string& path) {
  const htri_t e = attribute ? H5Aexists(file, name) : H5Lexists(file, name, H5P_DEFAULT);
  if (e < 0) return h5_error(attribute ? "H5Aexists" : "H5Lexists", path + ":/" + name, __FILE__, __LINE__);
  return e > 0;
}

Status missing_attr(const std::string& path, const char* name) {
  return Status::io(path + ": attribute '" + name + "' is missing; not a complete mobula image shard (" + kDocs + ")");
}

// Opens attribute `name` and checks it holds exactly one element.
Result<Handle> open_scalar_attr(hid_t file, const char* name, const std::string& path) {
  const std::string what = path + ":/@" + name;
  MOBULA_H5_ID(attr, H5Aopen(file, name, H5P_DEFAULT), what);
  MOBULA_H5_ID(space, H5Aget_space(attr.get()), what);
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n < 0) return h5_error("H5Sget_simple_extent_npoints", what, __FILE__, __LINE__);
  if (n != 1)
    return Status::io(path + ": attribute '" + name + "' has " + std::to_string(n) +
                      " elements, expected a scalar; the shard is corrupt (" + kDocs + ")");
  return attr;
}

// Fixed-length or variable-length string attribute.
Result<std::string> read_str_attr(hid_t file, const char* name, const std::string& path) {
  const std::string what = path + ":/@" + name;
  auto attr = open_scalar_attr(file, name, path);
  if (!attr) return attr.status();
  MOBULA_H5_ID(type, H5Aget_type(attr->get()), what);
  if (H5Tget_class(type.get()) != H5T_STRING)
    return Status::io(path + ": attribute '" + name + "' is not a string; the shard is corrupt (" + kDocs + ")");
  const htri_t var = H5Tis_variable_str(type.get());
  if (var < 0) return h5_error("H5Tis_variable_str", what, __FILE__, __LINE__);
  if (var > 0) {
    MOBULA_H5_ID(mem, H5Tcopy(H5T_C_S1), what);
    MOBULA_H5(H5Tset_size(mem.get(), H5T_VARIABLE), what);
    MOBULA_H5(H5Tset_cset(mem.get(), H5Tget_cset(type.get())), what);
    char* c = nullptr;
    MOBULA_H5(H5Aread(attr->get(), mem.get(), &c), what);
    std::string out = c ? c : "";
    MOBULA_H5(H5free_memory(c), what);
    return out;
  }
  const size_t n = H5Tget_size(type.get());
  if (n == 0) return h5_error("H5Tget_size", what, __FILE__, __LINE__);
  std::string out(n, '\0');
  MOBULA_H5(H5Aread(attr->get(), type.get(), out.data()), what);
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return out;
}

// Non-negative integer attribute of any integer type.
Result<uint64_t> read_uint_attr(hid_t file, const char* name, const std::string& path) {
  const std::string what = path + ":/@" + name;
  auto attr = open_scalar_attr(file, name, path);
  if (!attr) return attr.status();
  MOBULA_H5_ID(type, H5Aget_type(attr->get()), what);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    return Status::io(path + ": attribute '" + name + "' is not an integer; the shard is corrupt (" + kDocs + ")");
  if (H5Tget_sign(type.get()) == H5T_SGN_2) {
    int64_t v = 0;
    MOBULA_H5(H5Aread(attr->get(), H5T_NATIVE_INT64, &v), what);
    if (v < 0)
      return Status::io(path + ": attribute '" + name + "' = " + std::to_string(v) +
                        " is negative; the shard is corrupt (" + kDocs + ")");
    return static_cast<uint64_t>(v);
  }
  uint64_t v = 0;
  MOBULA_H5(H5Aread(attr->get(), H5T_NATIVE_UINT64, &v), what);
  return v;
}

// Opens the 1-D integer dataset `name`; *n gets its length. Missing: a clear error.
Result<Handle> open_1d(hid_t file, const char* name, const std::string& path, hsize_t* n) {
  const std::string what = path + ":/" + name;
  auto e = exists(file, name, false, path);
  if (!e) return e.status();
  if (!*e)
    return Status::io(path + ": dataset /" + std::string(name) +
                      " is missing; the shard is incomplete or was not written by write_shard, regenerate it (" +
                      kDocs + ")");
  MOBULA_H5_ID(dset, H5Dopen2(file, name, H5P_DEFAULT), what);
  MOBULA_H5_ID(type, H5Dget_type(dset.get()), what);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    return Status::io(path + ": dataset /" + std::string(name) + " is not of an integer type; the shard is corrupt (" +
                      kDocs + ")");
  MOBULA_H5_ID(space, H5Dget_space(dset.get()), what);
  if (H5Sget_simple_extent_ndims(space.get()) != 1)
    return Status::io(path + ": dataset /" + std::string(name) + " is not 1-D; the shard is corrupt (" + kDocs + ")");
  MOBULA_H5(H5Sget_simple_extent_dims(space.get(), n, nullptr), what);
  return dset;
}

template <class T>
Status read_all(hid_t dset, hid_t mem_type, std::vector<T>* out, hsize_t n, const std::string& what) {
  out->resize(n);
  if (n == 0) return Status::ok();
  MOBULA_H5(H5Dread(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out->data()), what);
  return Status::ok();
}

// A 1-D integer dataset of exactly `want` elements, read whole.
template <class T>
Status read_index(hid_t file, const char* name, hid_t mem_type, hsize_t want, const std::string& path,
                  std::vector<T>* out) {
  hsize_t n = 0;
  auto dset = open_1d(file, name, path, &n);
  if (!dset) return dset.status();
  if (n != want)
    return Status::io(path + ": dataset /" + std::string(name) + " has " + std::to_string(n) + " entries, expected " +
                      std::to_string(want) + " (from attribute count); the shard is corrupt, regenerate it (" + kDocs +
                      ")");
  return read_all(dset->get(), mem_type, out, n, path + ":/" + name);
}

Status write_shard_file(const std::string& tmp, uint64_t first_index, const std::vector<std::vector<uint8_t>>& encoded,
                        const std::vector<int32_t>& labels, const std::vector<int32_t>& widths,
                        const std::vector<int32_t>& heights, const std::string& encoding,
                        const std::string& generator) {
  std::vector<uint64_t> offsets(encoded.size() + 1, 0);
  for (size_t i = 0; i < encoded.size(); ++i) offsets[i + 1] = offsets[i] + encoded[i].size();
  std::vector<uint8_t> data;
  data.reserve(offsets.back());
  for (const auto& e : encoded) data.insert(data.end(), e.begin(), e.end());
  MOBULA_H5_ID(fcpl, H5Pcreate(H5P_FILE_CREATE), tmp);
  MOBULA_H5(H5Pset_obj_track_times(fcpl.get(), false), tmp);  // the root group's header too
  MOBULA_H5_ID(file, H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT), tmp);
  const hid_t f = file.get();
  MOBULA_RETURN_IF_ERROR(write_dataset(f, "data", H5T_STD_U8LE, H5T_NATIVE_UINT8, data.data(), data.size(), tmp));
  MOBULA_RETURN_IF_ERROR(
      write_dataset(f, "offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, offsets.data(), offsets.size(), tmp));
  MOBULA_RETURN_IF_ERROR(
      write_dataset(f, "labels", H5T_STD_I32LE, H5T_NATIVE_INT32, labels.data(), labels.size(), tmp));
  MOBULA_RETURN_IF_ERROR(write_dataset(f, "width", H5T_STD_I32LE, H5T_NATIVE_INT32, widths.data(), widths.size(), tmp));
  MOBULA_RETURN_IF_ERROR(
      write_dataset(f, "height", H5T_STD_I32LE, H5T_NATIVE_INT32, heights.data(), heights.size(), tmp));
  MOBULA_RETURN_IF_ERROR(write_str_attr(f, "format", kShardFormat, tmp));
  MOBULA_RETURN_IF_ERROR(write_u64_attr(f, "version", H5T_STD_U32LE, kShardVersion, tmp));
  MOBULA_RETURN_IF_ERROR(write_u64_attr(f, "count", H5T_STD_U64LE, encoded.size(), tmp));
  MOBULA_RETURN_IF_ERROR(write_u64_attr(f, "first_index", H5T_STD_U64LE, first_index, tmp));
  MOBULA_RETURN_IF_ERROR(write_str_attr(f, "encoding", encoding, tmp));
  MOBULA_RETURN_IF_ERROR(write_str_attr(f, "generator", generator, tmp));
  return file.close();
}

}  // namespace

Status write_shard(const std::string& path, uint64_t first_index, const std::vector<std::vector<uint8_t>>& encoded,
                   const std::vector<int32_t>& labels, const std::string& encoding, const std::string& generator) {
  hdf5_quiet();
  if (encoded.empty()) return Status::invalid_argument(path + ": no samples; a shard holds at least one image");
  if (labels.size() != encoded.size())
    return Status::invalid_argument(path + ": " + std::to_string(encoded.size()) + " images but " +
                                    std::to_string(labels.size()) + " labels; pass one label per image");
  if (encoding != "png" && encoding != "jpeg")
    return Status::invalid_argument(path + ": encoding '" + encoding + "'; use \"png\" or \"jpeg\"");
  if (first_index > UINT64_MAX - encoded.size())
    return Status::invalid_argument(path + ": first_index " + std::to_string(first_index) + " + " +
                                    std::to_string(encoded.size()) + " samples overflows 64 bits");
  std::vector<int32_t> widths(encoded.size()), heights(encoded.size());
  for (size_t i = 0; i < encoded.size(); ++i) {
    auto info = probe_image(encoded[i]);
    if (!info) return Status::invalid_argument(path + ": sample " + std::to_string(i) + ": " + info.status().message());
    if (info->encoding != encoding)
      return Status::invalid_argument(path + ": sample " + std::to_string(i) + " is " + info->encoding +
                                      " but the shard's encoding is " + encoding + "; one encoding per shard");
    widths[i] = info->width;
    heights[i] = info->height;
  }
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  const std::string tmp = (dir / ("." + p.filename().string() + ".tmp")).string();
  Status s = write_shard_file(tmp, first_index, encoded, labels, widths, heights, encoding, generator);
  if (s.is_ok()) s = fsync_path(tmp, false);
  if (s.is_ok() && std::rename(tmp.c_str(), path.c_str()) != 0)
    s = Status::io("rename " + tmp + " -> " + path + ": " + std::strerror(errno));
  if (!s.is_ok()) {
    std::error_code ec;
    fs::remove(tmp, ec);
    return s;
  }
  return fsync_path(dir, true);
}

Result<ShardReader> ShardReader::open(const std::string& path) {
  hdf5_quiet();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    return Status::not_found(path + ": no such shard file; check the path, or generate the dataset (" + kDocs + ")");
  const htri_t h5 = H5Fis_hdf5(path.c_str());
  if (h5 == 0) return Status::io(path + ": not an HDF5 file; an image shard is written by write_shard (" + kDocs + ")");
  ShardReader r;
  r.path_ = path;
  r.file_ = Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!r.file_.valid())
    return Status::io(path + ": H5Fopen failed (" + h5_detail() +
                      "); the shard is truncated or corrupt, regenerate it (" + kDocs + ")");
  const hid_t f = r.file_.get();

  auto has_format = exists(f, "format", true, path);
  if (!has_format) return has_format.status();
  if (!*has_format)
    return Status::io(path + ": no 'format' attribute; not a mobula image shard (" + std::string(kDocs) + ")");
  auto format = read_str_attr(f, "format", path);
  if (!format) return format.status();
  if (*format != kShardFormat)
    return Status::io(path + ": attribute format is '" + *format + "', expected '" + kShardFormat +
                      "'; not a mobula image shard (" + kDocs + ")");
  uint64_t attrs[3] = {0, 0, 0};
  const char* const names[3] = {"version", "count", "first_index"};
  for (int i = 0; i < 3; ++i) {
    auto e = exists(f, names[i], true, path);
    if (!e) return e.status();
    if (!*e) return missing_attr(path, names[i]);
    auto v = read_uint_attr(f, names[i], path);
    if (!v) return v.status();
    attrs[i] = *v;
  }
  if (attrs[0] != uint64_t(kShardVersion))
    return Status::io(path + ": shard format version " + std::to_string(attrs[0]) + ", this mobula reads version " +
                      std::to_string(kShardVersion) + "; regenerate the shard or update mobula");
  const uint64_t count = attrs[1];
  r.first_index_ = attrs[2];
  if (r.first_index_ > UINT64_MAX - count)
    return Status::io(path + ": first_index + count overflows 64 bits; the shard is corrupt (" + kDocs + ")");
  for (const char* name : {"encoding", "generator"}) {
    auto e = exists(f, name, true, path);
    if (!e) return e.status();
    if (!*e) {
      if (std::strcmp(name, "encoding") == 0) return missing_attr(path, name);
      continue;  // generator is informational
    }
    auto v = read_str_attr(f, name, path);
    if (!v) return v.status();
    (std::strcmp(name, "encoding") == 0 ? r.encoding_ : r.generator_) = *v;
  }
  if (r.encoding_ != "png" && r.encoding_ != "jpeg")
    return Status::io(path + ": attribute encoding is '" + r.encoding_ + "', expected 'png' or 'jpeg' (" + kDocs + ")");

  // /data: 1-D uint8, stays open for the per-sample reads.
  hsize_t data_size = 0;
  auto data = open_1d(f, "data", path, &data_size);
  if (!data) return data.status();
  {
    MOBULA_H5_ID(type, H5Dget_type(data->get()), path + ":/data");
    if (H5Tget_size(type.get()) != 1 || H5Tget_sign(type.get()) != H5T_SGN_NONE)
      return Status::io(path + ": dataset /data is not uint8; the shard is corrupt (" + std::string(kDocs) + ")");
  }
  r.data_ = std::move(*data);
  if (count > (uint64_t(1) << 40))
    return Status::io(path + ": attribute count = " + std::to_string(count) + " is implausible; the shard is corrupt");
  MOBULA_RETURN_IF_ERROR(read_index(f, "offsets", H5T_NATIVE_UINT64, count + 1, path, &r.offsets_));
  MOBULA_RETURN_IF_ERROR(read_index(f, "labels", H5T_NATIVE_INT32, count, path, &r.labels_));
  for (const char* name : {"width", "height"}) {
    auto e = exists(f, name, false, path);
    if (!e) return e.status();
    if (*e)
      MOBULA_RETURN_IF_ERROR(read_index(f, name, H5T_NATIVE_INT32, count, path,
                                        std::strcmp(name, "width") == 0 ? &r.widths_ : &r.heights_));
  }
  if (r.offsets_[0] != 0)
    return Status::io(path + ": /offsets[0] = " + std::to_string(r.offsets_[0]) +
                      ", expected 0; the shard is corrupt, regenerate it (" + kDocs + ")");
  for (uint64_t i = 0; i < count; ++i) {
    if (r.offsets_[i + 1] <= r.offsets_[i])
      return Status::io(path + ": /offsets is not increasing at sample " + std::to_string(i) + " (" +
                        std::to_string(r.offsets_[i]) + " then " + std::to_string(r.offsets_[i + 1]) +
                        "); the shard is corrupt, regenerate it (" + kDocs + ")");
    if (r.offsets_[i + 1] > data_size)
      return Status::io(path + ": /offsets[" + std::to_string(i + 1) + "] = " + std::to_string(r.offsets_[i + 1]) +
                        " is past the end of /data (" + std::to_string(data_size) +
                        " bytes); the shard is truncated or corrupt, regenerate it (" + kDocs + ")");
  }
  if (r.offsets_[count] != data_size)
    return Status::io(path + ": /offsets ends at " + std::to_string(r.offsets_[count]) + " but /data holds " +
                      std::to_string(data_size) + " bytes; the shard is corrupt, regenerate it (" + kDocs + ")");
  return r;
}

Result<std::vector<uint8_t>> ShardReader::read(uint64_t i) {
  if (i >= count())
    return Status::invalid_argument(path_ + ": sample " + std::to_string(i) + " out of range; the shard holds " +
                                    std::to_string(count()) + " samples");
  const std::string what = path_ + ":/data";
  hsize_t off[1] = {offsets_[i]}, cnt[1] = {offsets_[i + 1] - offsets_[i]};
  MOBULA_H5_ID(fspace, H5Dget_space(data_.get()), what);
  MOBULA_H5(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, off, nullptr, cnt, nullptr), what);
  MOBULA_H5_ID(mspace, H5Screate_simple(1, cnt, nullptr), what);
  std::vector<uint8_t> out(cnt[0]);
  MOBULA_H5(H5Dread(data_.get(), H5T_NATIVE_UINT8, mspace.get(), fspace.get(), H5P_DEFAULT, out.data()), what);
  return out;
}

bool parse_shard_file_name(const std::string& name, uint64_t* k) {
  if (name.size() < 14 || name.rfind("shard-", 0) != 0 || name.substr(name.size() - 3) != ".h5") return false;
  const std::string digits = name.substr(6, name.size() - 9);
  if (digits.size() < 5 || digits.size() > 19 || digits.find_first_not_of("0123456789") != std::string::npos)
    return false;
  *k = std::stoull(digits);
  return true;
}

std::string shard_file_name(uint64_t k) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "shard-%05llu.h5", static_cast<unsigned long long>(k));
  return buf;
}

Result<ImageDataset> ImageDataset::open(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return Status::not_found(dir +
                             ": no such dataset directory; check the path, or create one with "
                             "generate_synthetic_dataset (" +
                             kDocs + ")");
  std::vector<std::pair<uint64_t, std::string>> files;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    uint64_t k = 0;
    if (parse_shard_file_name(e.path().filename().string(), &k)) files.emplace_back(k, e.path().string());
  }
  if (ec) return Status::io(dir + ": cannot list: " + ec.message());
  if (files.empty())
    return Status::not_found(dir + ": no shard-NNNNN.h5 files; generate the dataset first (" + std::string(kDocs) +
                             ")");
  std::sort(files.begin(), files.end());
  ImageDataset d;
  d.dir_ = dir;
  for (const auto& [k, file] : files) {
    auto r = ShardReader::open(file);
    if (!r) return r.status();
    d.shards_.push_back(std::move(*r));
  }
  std::stable_sort(d.shards_.begin(), d.shards_.end(),
                   [](const ShardReader& a, const ShardReader& b) { return a.first_index() < b.first_index(); });
  uint64_t next = 0;
  std::string prev;
  for (const auto& s : d.shards_) {
    const std::string name = fs::path(s.path()).filename().string();
    if (s.first_index() > next)
      return Status::io(dir + ": gap in the global indices: samples " + std::to_string(next) + ".." +
                        std::to_string(s.first_index() - 1) + " are in no shard (" + name + " starts at " +
                        std::to_string(s.first_index()) +
                        (prev.empty() ? ", and no shard starts at 0"
                                      : ", " + prev + " ends with sample " + std::to_string(next - 1)) +
                        "); restore the missing shard or regenerate the dataset");
    if (s.first_index() < next)
      return Status::io(dir + ": overlapping shards: " + name + " starts at " + std::to_string(s.first_index()) +
                        " but " + prev + " already covers up to " + std::to_string(next - 1) +
                        "; remove the stale shard or regenerate the dataset");
    next = s.first_index() + s.count();
    prev = name;
  }
  d.size_ = next;
  return d;
}

long ImageDataset::find(uint64_t g) const {
  if (g >= size_) return -1;
  auto it = std::upper_bound(shards_.begin(), shards_.end(), g,
                             [](uint64_t v, const ShardReader& s) { return v < s.first_index(); });
  return static_cast<long>(it - shards_.begin()) - 1;
}

Result<std::vector<uint8_t>> ImageDataset::read(uint64_t global_index) {
  const long k = find(global_index);
  if (k < 0)
    return Status::invalid_argument(dir_ + ": index " + std::to_string(global_index) +
                                    " out of range; the dataset holds " + std::to_string(size_) + " samples");
  ShardReader& s = shards_[size_t(k)];
  return s.read(global_index - s.first_index());
}

int32_t ImageDataset::label(uint64_t global_index) const {
  const long k = find(global_index);
  if (k < 0) return -1;
  const ShardReader& s = shards_[size_t(k)];
  return s.label(global_index - s.first_index());
}

}  // namespace mobula::io
