// Logging: spdlog to stdout, every line tagged "[role r/R host]" once the layout is known
// ("[rank r/N host]" before). Thread-safe (spdlog's _mt sink).
#pragma once

#include <spdlog/spdlog.h>

#include <string>

#include "core/runtime/status.h"

namespace mobula {

// Installs the default logger with the given tag, e.g. "trainer 0/2 n1".
void set_log_tag(const std::string& tag);
// Level from MOBULA_LOG_LEVEL (trace|debug|info|warn|error), default info.
void init_logging(const std::string& tag);
// Also writes every line to `path` (appended; directories created). Call once, at start.
Status add_log_file(const std::string& path);
// To the log files only, not the console: per-step lines while `mobula run` draws a progress line on
// its terminal (MOBULA_PROGRESS_LINE=1, set by the launcher).
void log_to_files(spdlog::level::level_enum level, const std::string& msg);
bool console_progress();  // MOBULA_PROGRESS_LINE=1

}  // namespace mobula
