#include "io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

namespace mobula::io {

namespace {
size_t dtype_size(const std::string& d) {
  return d == "F32" || d == "I32" ? 4 : 0;
}
std::string errno_text() {
  return std::strerror(errno);
}
}  // namespace

size_t StTensor::numel() const {
  size_t n = 1;
  for (auto d : shape) n *= static_cast<size_t>(d);
  return n;
}

std::vector<float> StTensor::as_f32() const {
  std::vector<float> v(bytes.size() / 4);
  if (dtype == "F32")
    std::memcpy(v.data(), bytes.data(), v.size() * 4);
  else
    v.clear();
  return v;
}

std::vector<int32_t> StTensor::as_i32() const {
  std::vector<int32_t> v(bytes.size() / 4);
  if (dtype == "I32")
    std::memcpy(v.data(), bytes.data(), v.size() * 4);
  else
    v.clear();
  return v;
}

StTensor StTensor::f32(std::vector<int64_t> shape, const float* data) {
  StTensor t;
  t.dtype = "F32";
  t.shape = std::move(shape);
  t.bytes.resize(t.numel() * 4);
  if (!t.bytes.empty()) std::memcpy(t.bytes.data(), data, t.bytes.size());
  return t;
}

StTensor StTensor::i32(std::vector<int64_t> shape, const int32_t* data) {
  StTensor t = f32(std::move(shape), reinterpret_cast<const float*>(data));
  t.dtype = "I32";
  return t;
}

Status write_safetensors(const std::string& path, const StFile& file) {
  nlohmann::ordered_json h;
  if (!file.metadata.empty()) h["__metadata__"] = file.metadata;
  size_t off = 0;
  for (const auto& [name, t] : file.tensors) {
    if (!dtype_size(t.dtype)) return Status::invalid_argument(path + ": " + name + ": unsupported dtype " + t.dtype);
    if (t.bytes.size() != t.numel() * dtype_size(t.dtype))
      return Status::invalid_argument(path + ": " + name + ": " + std::to_string(t.bytes.size()) +
                                      " bytes do not match its shape");
    h[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
    off += t.bytes.size();
  }
  std::string header = h.dump();
  while (header.size() % 8) header += ' ';  // align the data section, as the reference writer does
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return Status::io(tmp + ": cannot create: " + errno_text());
  auto put = [&](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd, c, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      c += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  };
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>((uint64_t(header.size()) >> (8 * i)) & 0xff);
  bool ok = put(len, 8) && put(header.data(), header.size());
  for (const auto& [name, t] : file.tensors) ok = ok && put(t.bytes.data(), t.bytes.size());
  ok = ok && ::fsync(fd) == 0;
  const std::string err = ok ? "" : errno_text();
  if (::close(fd) != 0 && ok) return Status::io(tmp + ": close failed: " + errno_text());
  if (!ok) {
    ::unlink(tmp.c_str());
    return Status::io(tmp + ": write failed: " + err + "; " + path + " is unchanged");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string e = errno_text();
    ::unlink(tmp.c_str());
    return Status::io(path + ": rename from .tmp failed: " + e);
  }
  return Status::ok();
}

Result<StFile> read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::io(path + ": cannot open: " + errno_text());
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  uint8_t len[8];
  if (size < 8 || !in.read(reinterpret_cast<char*>(len), 8))
    return Status::io(path + ": (header): file shorter than 8 bytes");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(len[i]) << (8 * i);
  if (n > size - 8 || n > (100u << 20))
    return Status::io(path + ": (header): length " + std::to_string(n) + " exceeds the file");
  std::string header(n, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(n))) return Status::io(path + ": (header): truncated");
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(header);
  } catch (const std::exception& e) {
    return Status::io(path + ": (header): not valid JSON: " + std::string(e.what()).substr(0, 120));
  }
  if (!h.is_object()) return Status::io(path + ": (header): not a JSON object");
  const uint64_t data_size = size - 8 - n;
  StFile f;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return Status::io(path + ": __metadata__: not an object");
      for (auto m = v.begin(); m != v.end(); ++m)
        f.metadata[m.key()] = m.value().is_string() ? m.value().get<std::string>() : m.value().dump();
      continue;
    }
    try {
      StTensor t;
      t.dtype = v.at("dtype").get<std::string>();
      t.shape = v.at("shape").get<std::vector<int64_t>>();
      const auto offs = v.at("data_offsets").get<std::vector<uint64_t>>();
      if (!dtype_size(t.dtype))
        return Status::io(path + ": " + name + ": unsupported dtype " + t.dtype + " (F32, I32)");
      for (auto d : t.shape)
        if (d < 0) return Status::io(path + ": " + name + ": negative dimension");
      if (offs.size() != 2 || offs[0] > offs[1] || offs[1] > data_size)
        return Status::io(path + ": " + name + ": data_offsets outside the data section (file truncated?)");
      if (offs[1] - offs[0] != t.numel() * dtype_size(t.dtype))
        return Status::io(path + ": " + name + ": byte range does not match shape and dtype");
      ranges.emplace_back(offs[0], offs[1]);
      t.bytes.resize(offs[1] - offs[0]);
      in.seekg(static_cast<std::streamoff>(8 + n + offs[0]));
      if (!t.bytes.empty() &&
          !in.read(reinterpret_cast<char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size())))
        return Status::io(path + ": " + name + ": read failed");
      f.tensors.emplace(name, std::move(t));
    } catch (const nlohmann::json::exception& e) {
      return Status::io(path + ": " + name + ": malformed entry: " + std::string(e.what()).substr(0, 120));
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) return Status::io(path + ": (header): tensors overlap");
  return f;
}

}  // namespace mobula::io
