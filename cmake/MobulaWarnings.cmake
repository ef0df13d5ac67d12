# Warnings (errors with MOBULA_WERROR) and sanitizers for project targets only.
# Third-party headers come in as SYSTEM includes, so their warnings never fail our build.

add_library(mobula_build_flags INTERFACE)
add_library(mobula::build_flags ALIAS mobula_build_flags)
target_compile_options(mobula_build_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast
    -Wcast-align -Woverloaded-virtual -Wimplicit-fallthrough
    # GCC 12 at -O3 reports false -Wrestrict positives inside libstdc++ std::string (GCC PR 105329).
    -Wno-restrict>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${MOBULA_WERROR}>>:-Werror>)

# Math functions do not set errno (project code never reads it): a sqrt in a loop is then one
# instruction, not a branch to libm for negative inputs, so such loops vectorize (AdamW's update).
# Results are the same: only errno is not written.
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(mobula_build_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-fno-math-errno>)
endif()

# HPC habit: build on (a node like) the machine that runs it. OpenBLAS dispatches at run time
# anyway; this is for mobula's own kernels (layernorm, GELU, decode attention, small-M matmuls).
if(MOBULA_NATIVE)
  target_compile_options(mobula_build_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
  # GCC (12 here) with IPA register allocation leaves out the vzeroupper before a call to a function
  # of the same file (std::sort's introsort clone) and then takes the AVX upper state for clean: the
  # libm calls that follow run with dirty 256/512-bit uppers, and Intel CPUs pay the AVX-SSE
  # transition on every legacy-SSE instruction (glibc's exp wrapper). The sampler's token choice took
  # 27 us a row instead of 4 on an Intel Xeon (exp: 190 ns a call instead of 6), 30 % of sampling.
  # AMD CPUs have no such penalty. -fno-ipa-ra keeps the vzeroupper (docs/perf.md, 2026-12-06).
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
    target_compile_options(mobula_build_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-fno-ipa-ra>)
  endif()
endif()

if(MOBULA_SANITIZE)
  target_compile_options(mobula_build_flags INTERFACE
    -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(mobula_build_flags INTERFACE -fsanitize=address,undefined)
endif()

# mobula_target(<name> [SOURCES ...]) applies the project flags to a target.
function(mobula_target_flags tgt)
  target_link_libraries(${tgt} PRIVATE mobula::build_flags)
endfunction()
