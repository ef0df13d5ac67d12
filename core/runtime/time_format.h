// Times and durations as every mobula file and line writes them: UTC in ISO 8601 (events.jsonl,
// metrics.jsonl, the job registry, checkpoint attributes) and short durations (history, report,
// progress line). The one place these formats are written and read.
#pragma once

#include <optional>
#include <string>

namespace mobula {

// Now, UTC: "2026-11-26T02:56:25.123Z"; whole seconds with millis = false: "2026-11-26T02:56:25Z".
// Thread-safe (gmtime_r).
std::string utc_now(bool millis = true);
// "2026-11-26T04:31:12.223Z" (fraction optional) -> seconds since the epoch; nullopt when it is
// not such a time.
std::optional<double> parse_utc(const std::string& s);
// Seconds on the monotonic clock (for durations; no relation to wall time).
double monotonic_seconds();
// "42.0s", "3m05s", "1h02m"; "-" for a negative or NaN duration.
std::string format_duration(double seconds);

}  // namespace mobula
