# Test registration helpers. Every test carries labels so a slice can be run:
#   ctest -L unit | mpi | slurm | fault | gpu
#
# mobula_add_unit_test(<name> SOURCES ... [LIBS ...] [LABELS ...] [TIMEOUT s])
#   one process; label `unit` is added.
# mobula_add_mpi_test(<name> SOURCES ... [LIBS ...] [NP 1 2 4] [LABELS ...] [TIMEOUT s])
#   one ctest entry per rank count, named <name>.np<N>, run through mpiexec; label `mpi` added.
#   Running as root and more ranks than cores are handled here, once.

find_package(GTest REQUIRED)


# Flags every local mpiexec call needs: oversubscription (2 cores, up to 4+ ranks), no binding
# (ranks would otherwise share a core when oversubscribed), and the shared-memory single-copy
# mechanism off (CMA needs ptrace permissions containers often deny).
set(MOBULA_MPIEXEC_LOCAL_FLAGS --oversubscribe --bind-to none
    --mca btl_vader_single_copy_mechanism none)
# MOBULA_HOME: the jobs that tests run with `mobula run` register in the build tree, not in ~/.mobula.
set(MOBULA_TEST_ENV OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
    OMPI_MCA_rmaps_base_oversubscribe=1 MOBULA_HOME=${CMAKE_BINARY_DIR}/test-mobula-home)

add_library(mobula_test_main STATIC ${PROJECT_SOURCE_DIR}/tests/support/test_main.cc)
target_link_libraries(mobula_test_main PUBLIC GTest::gtest GTest::gmock mobula_core)
mobula_target_flags(mobula_test_main)

function(_mobula_test_target name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE mobula_test_main ${T_LIBS})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  mobula_target_flags(${name})
endfunction()

function(mobula_add_unit_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  _mobula_test_target(${name} SOURCES ${T_SOURCES} LIBS ${T_LIBS})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS "unit;${T_LABELS}" TIMEOUT ${T_TIMEOUT}
                       ENVIRONMENT "${MOBULA_TEST_ENV}")
endfunction()

# ARGS: arguments for the test binary (e.g. --gtest_filter=-Cases.RunElsewhere*).
function(mobula_add_mpi_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS;NP;ARGS" ${ARGN})
  _mobula_test_target(${name} SOURCES ${T_SOURCES} LIBS ${T_LIBS})
  if(NOT T_NP)
    set(T_NP 1 2 4)
  endif()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 180)
  endif()
  foreach(np IN LISTS T_NP)
    add_test(NAME ${name}.np${np}
             COMMAND ${MOBULA_MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} ${np} ${MOBULA_MPIEXEC_LOCAL_FLAGS}
                     ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${name}> ${MPIEXEC_POSTFLAGS} ${T_ARGS})
    set_tests_properties(${name}.np${np} PROPERTIES LABELS "mpi;${T_LABELS}" TIMEOUT ${T_TIMEOUT}
                         PROCESSORS ${np} ENVIRONMENT "${MOBULA_TEST_ENV}")
  endforeach()
endfunction()

# One more ctest entry for an mpi test binary: only the gtest cases matching FILTER, in a process of
# their own (for cases that must not share MPI state with others), at each NP. LABELS add to "mpi".
function(mobula_add_mpi_test_case target case)
  cmake_parse_arguments(T "" "TIMEOUT;FILTER" "LABELS;NP" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 180)
  endif()
  foreach(np IN LISTS T_NP)
    add_test(NAME ${target}.${case}.np${np}
             COMMAND ${MOBULA_MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} ${np} ${MOBULA_MPIEXEC_LOCAL_FLAGS}
                     ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${target}> ${MPIEXEC_POSTFLAGS} --gtest_filter=${T_FILTER})
    set_tests_properties(${target}.${case}.np${np} PROPERTIES LABELS "mpi;${T_LABELS}" TIMEOUT ${T_TIMEOUT}
                         PROCESSORS ${np} ENVIRONMENT "${MOBULA_TEST_ENV}")
  endforeach()
endfunction()

# A single-process gtest that drives the `mobula` executable (`mobula run` starts mpiexec itself):
# MOBULA_EXE and MOBULA_TEST_SOURCE_DIR are defined, mobula is built first, 2 processors reserved.
function(mobula_add_launcher_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  _mobula_test_target(${name} SOURCES ${T_SOURCES} LIBS ${T_LIBS})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  target_compile_definitions(${name} PRIVATE MOBULA_EXE="$<TARGET_FILE:mobula>"
                             MOBULA_TEST_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  add_dependencies(${name} mobula)
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT} PROCESSORS 2
                       ENVIRONMENT "${MOBULA_TEST_ENV}")
endfunction()
