#include "core/runtime/log.h"

#include <spdlog/sinks/stdout_sinks.h>

#include <cstdlib>

namespace mobula {

void set_log_tag(const std::string& tag) {
  // '%' in a tag (host names never have one) would be read as a pattern flag.
  std::string safe;
  for (char c : tag) safe += (c == '%') ? '_' : c;
  spdlog::set_pattern("[%H:%M:%S.%e] [" + safe + "] %l: %v");
}

void init_logging(const std::string& tag) {
  auto logger = spdlog::stdout_logger_mt("mobula");
  spdlog::set_default_logger(logger);
  spdlog::level::level_enum lvl = spdlog::level::info;
  if (const char* v = std::getenv("MOBULA_LOG_LEVEL"); v && *v) lvl = spdlog::level::from_str(v);
  spdlog::set_level(lvl);
  spdlog::flush_on(spdlog::level::trace);  // lines from many ranks interleave; never hold them back
  set_log_tag(tag);
}

}  // namespace mobula
