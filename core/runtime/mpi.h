// MPI helpers: every MPI call is checked. World communicators are switched to MPI_ERRORS_RETURN
// by Environment so failures come back as a Status with the call, the site and the MPI message.
#pragma once

#include <mpi.h>

#include <string>

#include "core/runtime/status.h"

namespace mobula {

// Formats "MPI_Xxx failed at file:line on rank R: <MPI error string>".
Status mpi_error(int rc, const char* call, const char* file, int line);

}  // namespace mobula

// Evaluates an MPI call; on failure returns a Status from the enclosing function.
#define MOBULA_MPI(call)                                                                                      \
  do {                                                                                                        \
    const int mobula_mpi_rc_ = (call);                                                                        \
    if (mobula_mpi_rc_ != MPI_SUCCESS) return ::mobula::mpi_error(mobula_mpi_rc_, #call, __FILE__, __LINE__); \
  } while (0)
