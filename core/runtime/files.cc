#include "core/runtime/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace mobula {

namespace fs = std::filesystem;

Status fsync_path(const fs::path& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::io("open " + path.string() + " for fsync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return Status::io("fsync " + path.string() + ": " + std::strerror(err));
  return Status::ok();
}

Status write_file_atomically(const fs::path& path, std::string_view text, bool durable,
                             std::optional<fs::perms> perms) {
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  const fs::path tmp = dir / ("." + path.filename().string() + ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.close();
    if (!out) return Status::io(tmp.string() + ": cannot write");
  }
  std::error_code ec;
  if (perms) {
    fs::permissions(tmp, *perms, ec);
    if (ec) return Status::io(tmp.string() + ": chmod: " + ec.message());
  }
  if (durable) MOBULA_RETURN_IF_ERROR(fsync_path(tmp, false));
  fs::rename(tmp, path, ec);
  if (ec) return Status::io("rename " + tmp.string() + " -> " + path.string() + ": " + ec.message());
  if (durable) return fsync_path(dir, true);
  return Status::ok();
}

}  // namespace mobula
