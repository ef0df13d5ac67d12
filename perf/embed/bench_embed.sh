#!/usr/bin/env bash
# JIT embedding: trainer throughput and stall fraction for 1, 2, 3 embed ranks, and jit vs inline
# vs offline on the same total rank count, one embed rank slowed down (pull balancing):
#   perf/embed/bench_embed.sh [build-dir] [extra --set args...]
# Runs examples/latent-pretrain.toml ROUNDS times per configuration (interleaved) and prints the
# median training samples/s and stall fraction (time the trainers waited for data / wall time of
# the training loop), from summary.json. Offline also prints its precompute time. The dataset is
# generated once and shared by every run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${1:-$ROOT/build}"
shift || true
ROUNDS="${ROUNDS:-3}"
MOBULA="$BUILD/launch/mobula"
[[ -x "$MOBULA" ]] || { echo "bench_embed: $MOBULA not built" >&2; exit 2; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
COMMON=(--set job.steps="${STEPS:-120}" --set data.dir="$WORK/data" --set checkpoint.every=0 "$@")
declare -A RESULT
run() {  # name, args...
  local name=$1; shift
  local dir="$WORK/$name-$r"
  local t0; t0=$(date +%s.%N)
  "$MOBULA" run "$ROOT/examples/latent-pretrain.toml" "${COMMON[@]}" --set job.workdir="$dir" "$@" > "$dir.log" 2>&1 ||
    { echo "bench_embed: $name failed:" >&2; tail -20 "$dir.log" >&2; exit 1; }
  local t1; t1=$(date +%s.%N)
  RESULT[$name]+="$(/usr/bin/python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("%.2f:%.4f:%.2f:%d" % (s["samples_per_s"], s["stall_fraction"], float(sys.argv[3])-float(sys.argv[2]), s["trainers"]))' "$dir/summary.json" "$t0" "$t1") "
}
for r in $(seq "$ROUNDS"); do
  run "jit-1T-1E" --set roles.trainer.ranks=1 --set roles.embed.ranks=1
  run "jit-1T-2E" --set roles.trainer.ranks=1 --set roles.embed.ranks=2
  run "jit-1T-3E" --set roles.trainer.ranks=1 --set roles.embed.ranks=3
  MOBULA_FAULT_EMBED_DELAY_MS="${SLOW_MS:-30}" run "jit-1T-2E-slow" --set roles.trainer.ranks=1 --set roles.embed.ranks=2
  run "inline-2T" --set roles.trainer.ranks=2 --set roles.embed.ranks=0 --set latent.mode=inline
  run "offline-2T" --set roles.trainer.ranks=2 --set roles.embed.ranks=0 --set latent.mode=offline
done
echo "# bench_embed: examples/latent-pretrain.toml ${COMMON[*]}, $ROUNDS rounds, medians; $(nproc) cores"
printf '%-16s %12s %14s %10s %12s\n' config "samples/s" "per trainer" stall "job wall s"
for name in jit-1T-1E jit-1T-2E jit-1T-3E jit-1T-2E-slow inline-2T offline-2T; do
  /usr/bin/python3 - "$name" ${RESULT[$name]} <<'PY'
import statistics, sys
rows = [tuple(map(float, x.split(":"))) for x in sys.argv[2:]]
med = lambda i: statistics.median(r[i] for r in rows)
print("%-16s %12.1f %14.1f %9.1f%% %12.2f" % (sys.argv[1], med(0), med(0) / med(3), 100 * med(1), med(2)))
PY
done
# jit vs inline on the same 2 ranks: total throughput, and per trainer rank (the expensive resource
# the issue's claim is about: embed ranks are meant to be cheaper ones).
/usr/bin/python3 - ${RESULT[jit-1T-1E]} -- ${RESULT[inline-2T]} <<'PY'
import statistics, sys
a = sys.argv[1:]
k = a.index("--")
med = lambda xs: statistics.median(float(x.split(":")[0]) for x in xs)
jit, inl = med(a[:k]), med(a[k + 1:])
print("jit(1T+1E) / inline(2T): %.2fx total samples/s, %.2fx per trainer rank" % (jit / inl, 2 * jit / inl))
PY
