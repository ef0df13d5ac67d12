#include "core/metrics/events.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "core/runtime/environment.h"
#include "core/runtime/log.h"
#include "core/runtime/time_format.h"

namespace mobula::events {

std::string str(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string num(double x) {
  if (!std::isfinite(x)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}

std::string num(long long x) {
  return std::to_string(x);
}

namespace {
std::string host() {
  if (const char* n = std::getenv("SLURMD_NODENAME"); n && *n) return n;  // emulated nodes share a host
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "?";
  return buf;
}
}  // namespace

Status append_line(const std::string& dir, const std::string& name, std::string_view text, bool durable) {
  std::string line(text);
  line += "\n";
  const std::string path = dir + "/" + name;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return Status::io("open " + path + ": " + std::strerror(errno));
  Status st = Status::ok();
  const ssize_t w = ::write(fd, line.data(), line.size());  // one write: O_APPEND keeps lines whole
  if (w != static_cast<ssize_t>(line.size()))
    st = Status::io("write " + path + ": " + (w < 0 ? std::strerror(errno) : "short write"));
  else if (durable && ::fsync(fd) != 0)
    st = Status::io("fsync " + path + ": " + std::strerror(errno));
  ::close(fd);
  return st;
}

Status append(const std::string& dir, std::string_view event, const Fields& fields, int rank) {
  std::string line = "{\"time\": " + str(utc_now()) + ", \"event\": " + str(event) +
                     ", \"attempt\": " + num(env_long("MOBULA_STEP_ATTEMPT", 0)) + ", \"host\": " + str(host());
  if (rank >= 0) line += ", \"rank\": " + num(rank);
  for (const auto& [k, v] : fields) line += ", " + str(k) + ": " + v;
  line += "}";
  return append_line(dir, "events.jsonl", line, /*durable=*/true);
}

void emit(const std::string& dir, std::string_view event, const Fields& fields, int rank) {
  const Status st = append(dir, event, fields, rank);
  if (!st.is_ok()) spdlog::warn("event {} not recorded: {}", event, st.message());
}

std::string json_line(const nlohmann::ordered_json& object) {
  std::string s = "{";
  for (const auto& [key, value] : object.items()) {
    if (s.size() > 1) s += ", ";
    s += nlohmann::ordered_json(key).dump() + ": " + value.dump();
  }
  return s + "}";
}

}  // namespace mobula::events
