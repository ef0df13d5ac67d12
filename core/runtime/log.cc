#include "core/runtime/log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <cstdlib>
#include <filesystem>

namespace mobula {

namespace {
std::string g_pattern = "[%H:%M:%S.%e] %l: %v";
}  // namespace

void set_log_tag(const std::string& tag) {
  // '%' in a tag (host names never have one) would be read as a pattern flag.
  std::string safe;
  for (char c : tag) safe += (c == '%') ? '_' : c;
  g_pattern = "[%H:%M:%S.%e] [" + safe + "] %l: %v";
  spdlog::set_pattern(g_pattern);
}

Status add_log_file(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (ec) return Status::io("log file " + path + ": " + ec.message());
  try {
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
    sink->set_pattern(g_pattern);
    spdlog::default_logger()->sinks().push_back(std::move(sink));
  } catch (const spdlog::spdlog_ex& e) {
    return Status::io("log file " + path + ": " + e.what());
  }
  return Status::ok();
}

void log_to_files(spdlog::level::level_enum level, const std::string& msg) {
  auto logger = spdlog::default_logger();
  if (!logger->should_log(level)) return;
  const spdlog::details::log_msg m(spdlog::source_loc{}, logger->name(), level, msg);
  const auto& sinks = logger->sinks();
  for (size_t i = 1; i < sinks.size(); ++i) {  // sinks[0] is the console (init_logging)
    sinks[i]->log(m);
    sinks[i]->flush();
  }
}

bool console_progress() {
  const char* v = std::getenv("MOBULA_PROGRESS_LINE");  // set by `mobula run` for its ranks
  return v && std::string(v) == "1";
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
