// What this binary was built with and what it finds at run time (for `mobula version` and the
// job-start event). Local; callable before MPI_Init.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace mobula {

// (component, description) pairs in display order.
std::vector<std::pair<std::string, std::string>> core_build_info();

}  // namespace mobula
