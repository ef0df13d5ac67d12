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

# HPC habit: build on (a node like) the machine that runs it. OpenBLAS dispatches at run time
# anyway; this is for mobula's own kernels (layernorm, GELU, decode attention, small-M matmuls).
if(MOBULA_NATIVE)
  target_compile_options(mobula_build_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
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
