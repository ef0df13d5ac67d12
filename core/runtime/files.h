// Replacing files so that a reader (or a crash) sees the old content or the new, never half of it.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "core/runtime/status.h"

namespace mobula {

// Writes `text` to DIR/.NAME.tmp (mode `perms` if given), then renames it to `path` (DIR/NAME).
// `durable`: fsync the file before the rename and the directory after it.
Status write_file_atomically(const std::filesystem::path& path, std::string_view text, bool durable = false,
                             std::optional<std::filesystem::perms> perms = std::nullopt);

// fsync of a file, or of a directory (its entries, e.g. after a rename).
Status fsync_path(const std::filesystem::path& path, bool directory);

}  // namespace mobula
