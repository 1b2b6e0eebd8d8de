#!/usr/bin/env bash
# Whole-process time of `python -m ta_train +hw=a100 model=qwen7b --cfg job` (composition only, no
# torch import), best and median of N runs. Usage: bench/compose_time.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
N=${1:-10}
times=()
for _ in $(seq "$N"); do
  s=$(date +%s.%N)
  "$PY" -m ta_train +hw=a100 model=qwen7b --cfg job > /dev/null
  e=$(date +%s.%N)
  times+=("$(echo "$e - $s" | bc)")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "runs=%d best=%.3fs median=%.3fs worst=%.3fs\n", NR, a[1], a[int((NR+1)/2)], a[NR]}'
