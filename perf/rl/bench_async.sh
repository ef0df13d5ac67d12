#!/usr/bin/env bash
# GRPO throughput, one-step-off async vs synchronous, same spec, same ranks, same run:
#   perf/rl/bench_async.sh [build-dir] [extra --set args...]
# Runs examples/grpo-addition.toml (warm start shortened: it is not what is measured) with
# rl.max_staleness = 0 and 1, `rounds` times each, interleaved, and prints the median RL
# completion tokens/s (summary.json) of each and the ratio async / sync.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${1:-$ROOT/build}"
shift || true
ROUNDS="${ROUNDS:-3}"
MOBULA="$BUILD/launch/mobula"
[[ -x "$MOBULA" ]] || { echo "bench_async: $MOBULA not built" >&2; exit 2; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# 1 trainer + 1 rollout: one rank per core, so the overlap has a core to run on (3 ranks on 2
# cores would measure oversubscription instead).
COMMON=(--set roles.trainer.ranks=1 --set rl.warm_start_steps=100 --set job.steps=40 --set rl.group_size=16
  --set rl.prompts_per_step=32 "$@")
declare -a SYNC ASYNC
for r in $(seq "$ROUNDS"); do
  for mode in 0 1; do
    dir="$WORK/m$mode-r$r"
    "$MOBULA" run "$ROOT/examples/grpo-addition.toml" "${COMMON[@]}" --set rl.max_staleness=$mode \
      --set job.workdir="$dir" > "$dir.log" 2>&1 || { echo "bench_async: run failed, see below" >&2; tail -20 "$dir.log" >&2; exit 1; }
    tps=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["tokens_per_s"])' "$dir/summary.json")
    if [[ $mode == 0 ]]; then SYNC+=("$tps"); else ASYNC+=("$tps"); fi
  done
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms=$(median "${SYNC[@]}"); ma=$(median "${ASYNC[@]}")
echo "# bench_async: examples/grpo-addition.toml ${COMMON[*]}, $ROUNDS rounds interleaved, medians"
printf 'sync   (max_staleness 0)  %8.0f completion tokens/s   runs: %s\n' "$ms" "${SYNC[*]}"
printf 'async  (max_staleness 1)  %8.0f completion tokens/s   runs: %s\n' "$ma" "${ASYNC[*]}"
awk -v a="$ma" -v s="$ms" 'BEGIN { printf "ratio  async/sync %.2f\n", a / s }'
