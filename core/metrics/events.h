// events.jsonl: the job's event journal in its work dir, readable after the allocation is gone
// (docs/observability.md has the schema). One JSON object per line:
//   {"time": "2026-11-26T02:56:25.123Z", "event": "checkpoint_durable", "attempt": 1, "host": "n1",
//    "rank": 0, ...event fields}
// Appended with O_APPEND (one write per line, so lines from several processes do not interleave
// on a local file system) and fsync'd: an event that was logged survives a crash right after.
// Writers: the launchers (`mobula run`, `mobula step`: attempts, restarts, requeues, the end) and
// the ranks (job start, checkpoints, preemption, the watchdog). A failing append is reported by
// the caller and never stops the job.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/runtime/status.h"

namespace mobula::events {

// Field values are JSON already: use str() for strings, num() for numbers.
using Fields = std::vector<std::pair<std::string, std::string>>;
std::string str(std::string_view s);
std::string num(double x);
std::string num(long long x);
inline std::string num(int x) {
  return num(static_cast<long long>(x));
}
inline std::string num(long x) {
  return num(static_cast<long long>(x));
}

// Appends one event to DIR/events.jsonl. `rank` < 0 leaves it out (launchers). attempt comes from
// MOBULA_STEP_ATTEMPT (0 when unset), host from gethostname / SLURMD_NODENAME.
Status append(const std::string& dir, std::string_view event, const Fields& fields = {}, int rank = -1);

// Appends `line` (one JSON object, no newline) to DIR/NAME with one O_APPEND write; fsync when
// durable. For time series such as metrics.jsonl.
Status append_line(const std::string& dir, const std::string& name, std::string_view line, bool durable);

// A flat JSON object as one line in the journal's style, {"key": value, ...} (nlohmann renders each
// key and value): metrics.jsonl's lines read like events.jsonl's.
std::string json_line(const nlohmann::ordered_json& object);

// Same, and a failure is logged as a warning instead of returned (the job goes on).
void emit(const std::string& dir, std::string_view event, const Fields& fields = {}, int rank = -1);

}  // namespace mobula::events
