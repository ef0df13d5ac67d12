#!/usr/bin/env bash
# mobula developer entry point. The README's two commands are `./dev.sh test` and `./dev.sh demo`.
#   ./dev.sh deps     install missing Debian 12 packages (idempotent; skips apt when all present)
#   ./dev.sh build    configure + build into ${MOBULA_BUILD_DIR:-build}
#   ./dev.sh test     deps -> build -> start local Slurm test cluster -> ctest -> stop cluster
#   ./dev.sh demo     deps -> build -> run the demo job on local ranks
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="${MOBULA_BUILD_DIR:-$ROOT/build}"

PACKAGES=(
  build-essential cmake ninja-build pkg-config git clang-format procps util-linux hostname
  openmpi-bin libopenmpi-dev libpmix-dev
  libhdf5-openmpi-dev hdf5-tools
  libucx-dev
  libtrilinos-kokkos-dev libtrilinos-kokkos-kernels-dev libopenblas-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  slurm-wlm slurm-client munge
  libtomlplusplus-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libxxhash-dev
  libcpp-httplib-dev libhiredis-dev redis-server chromium python3-prometheus-client libpng-dev libjpeg62-turbo-dev
  libsqlite3-dev libssl-dev
)

deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    echo "deps: all ${#PACKAGES[@]} packages present"
    return 0
  fi
  echo "deps: installing ${missing[*]}"
  local SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
}

build() {
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
    cmake -S "$ROOT" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE="${MOBULA_BUILD_TYPE:-RelWithDebInfo}" ${MOBULA_CMAKE_ARGS:-}
  fi
  cmake --build "$BUILD" -j "${MOBULA_JOBS:-$(nproc)}"
}

test_all() {
  deps
  build
  local cluster="$ROOT/slurm/local-cluster.sh"
  export MOBULA_SLURM_DIR="${MOBULA_SLURM_DIR:-$BUILD/slurm-cluster}"
  # Stop the cluster whatever happens from here on (failure, Ctrl-C).
  trap '"$ROOT/slurm/local-cluster.sh" stop "$MOBULA_SLURM_DIR" || true' EXIT
  "$cluster" start "$MOBULA_SLURM_DIR"
  # The slurm-labelled tests fail (instead of skipping) when the cluster is not reachable.
  export SLURM_CONF="$MOBULA_SLURM_DIR/slurm.conf" MOBULA_REQUIRE_SLURM=1
  # The Redis tests start private redis-server instances; here they fail (instead of skipping)
  # when it is missing.
  export MOBULA_REQUIRE_REDIS=1
  local rc=0
  (cd "$BUILD" && ctest --output-on-failure -j "${MOBULA_TEST_JOBS:-2}" "$@") || rc=$?
  trap - EXIT
  "$cluster" stop "$MOBULA_SLURM_DIR" || rc=$((rc ? rc : 1))
  return "$rc"
}

demo() {
  deps
  build
  "$BUILD/launch/mobula" run "$ROOT/examples/grpo-addition.toml" "$@"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  deps) deps ;;
  build) build ;;
  test) test_all "$@" ;;
  demo) demo "$@" ;;
  *) echo "usage: $0 {deps|build|test|demo} [args]" >&2; exit 2 ;;
esac
