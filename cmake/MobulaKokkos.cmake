# Kokkos and Kokkos Kernels behind two stable targets: mobula::kokkos and mobula::kokkoskernels.
#
# Debian 12 ships Kokkos 3.4.1 through Trilinos (libtrilinos-kokkos-dev) with a broken CMake config:
#  * Kokkos::kokkos points INTERFACE_INCLUDE_DIRECTORIES at <prefix>/include, but the headers live
#    in <prefix>/include/trilinos (Kokkos_INCLUDE_DIRS has the right path);
#  * the kokkos-kernels target is called trilinos_kokkoskernels, not Kokkos::kokkoskernels.
# Both are repaired here and only here. An upstream Kokkos 4.x install (e.g. with the CUDA backend
# on a cluster, found through Kokkos_ROOT) provides correct targets and passes through untouched.

find_package(Kokkos REQUIRED)
find_package(KokkosKernels QUIET)

add_library(mobula_kokkos INTERFACE)
add_library(mobula::kokkos ALIAS mobula_kokkos)
add_library(mobula_kokkoskernels INTERFACE)
add_library(mobula::kokkoskernels ALIAS mobula_kokkoskernels)

# --- core -----------------------------------------------------------------------------------------
set(_kk_inc "")
if(TARGET Kokkos::kokkos)
  get_target_property(_kk_inc Kokkos::kokkos INTERFACE_INCLUDE_DIRECTORIES)
endif()
set(_kk_broken FALSE)
foreach(_d IN LISTS _kk_inc)
  if(NOT _d MATCHES "^\\$<" AND NOT EXISTS "${_d}/Kokkos_Core.hpp")
    set(_kk_broken TRUE)
  endif()
endforeach()

if(TARGET Kokkos::kokkos AND NOT _kk_broken)
  target_link_libraries(mobula_kokkos INTERFACE Kokkos::kokkos)
else()
  # Trilinos-flavoured install: rebuild the interface from the package variables.
  set(_kk_dirs "")
  foreach(_d IN LISTS Kokkos_INCLUDE_DIRS)
    get_filename_component(_d "${_d}" REALPATH)
    list(APPEND _kk_dirs "${_d}")
  endforeach()
  find_path(MOBULA_KOKKOS_INCLUDE_DIR Kokkos_Core.hpp HINTS ${_kk_dirs} PATH_SUFFIXES trilinos REQUIRED)
  message(STATUS "Kokkos: repairing the imported target (headers in ${MOBULA_KOKKOS_INCLUDE_DIR})")
  target_include_directories(mobula_kokkos SYSTEM INTERFACE ${MOBULA_KOKKOS_INCLUDE_DIR})
  foreach(_lib trilinos_kokkoscore trilinos_kokkoscontainers trilinos_kokkosalgorithms)
    if(TARGET ${_lib})
      target_link_libraries(mobula_kokkos INTERFACE ${_lib})
    endif()
  endforeach()
endif()

# --- kernels --------------------------------------------------------------------------------------
if(TARGET Kokkos::kokkoskernels)
  target_link_libraries(mobula_kokkoskernels INTERFACE Kokkos::kokkoskernels mobula::kokkos)
elseif(TARGET trilinos_kokkoskernels)
  target_link_libraries(mobula_kokkoskernels INTERFACE trilinos_kokkoskernels mobula::kokkos)
else()
  message(FATAL_ERROR "Kokkos Kernels not found: install libtrilinos-kokkos-kernels-dev or set KokkosKernels_ROOT")
endif()

# Version for `mobula version` and the configure summary.
find_file(_kk_cfg NAMES KokkosCore_config.h
          HINTS ${MOBULA_KOKKOS_INCLUDE_DIR} ${_kk_inc} PATH_SUFFIXES trilinos NO_CACHE)
set(MOBULA_KOKKOS_VERSION "unknown")
if(_kk_cfg)
  file(STRINGS "${_kk_cfg}" _kk_ver REGEX "#define KOKKOS_VERSION [0-9]+")
  string(REGEX REPLACE ".*KOKKOS_VERSION ([0-9]+).*" "\\1" _kk_num "${_kk_ver}")
  if(_kk_num)
    math(EXPR _maj "${_kk_num} / 10000")
    math(EXPR _min "${_kk_num} / 100 % 100")
    math(EXPR _pat "${_kk_num} % 100")
    set(MOBULA_KOKKOS_VERSION "${_maj}.${_min}.${_pat}")
  endif()
elseif(Kokkos_VERSION)
  set(MOBULA_KOKKOS_VERSION "${Kokkos_VERSION}")
endif()
