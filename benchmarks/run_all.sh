#!/usr/bin/env bash
# The whole convergence benchmark as one command, on a 2-core machine: two lanes of one torch thread each,
# then one merged report in benchmarks/ (RESULTS.md, results.json, curves.csv).
#   bash benchmarks/run_all.sh [SEEDS]        (default 5; teachers are cached in .bench/cache)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-5}
PY=${PYTHON:-.venv/bin/python}
CACHE=.bench/cache
WORK=.bench/convergence
mkdir -p "$CACHE" "$WORK"
export OMP_NUM_THREADS=1
start=$(date +%s)
lane() {  # one lane: its parts one after another
  for part in "$@"; do
    IFS=: read -r name data losses <<<"$part"
    "$PY" benchmarks/convergence.py --datasets "$data" --losses "$losses" --seeds "$SEEDS" --threads 1 \
      --teacher-cache "$CACHE" --out "$WORK/$name" >"$WORK/$name.log" 2>&1
  done
}
LANE_A=(ring:ring:di,dmd digits_di:digits:di)  # name:data set:losses, about equal work per lane
LANE_B=(grid:grid:di,dmd digits_dmd:digits:dmd)
lane "${LANE_A[@]}" &
lane "${LANE_B[@]}" &
wait
minutes=$(( ($(date +%s) - start) / 60 ))
cmds="" folders=""
for part in "${LANE_A[@]}" "${LANE_B[@]}"; do
  IFS=: read -r name data losses <<<"$part"
  cmds+="python benchmarks/convergence.py --datasets $data --losses $losses --seeds $SEEDS --threads 1;"
  folders+="${folders:+,}$WORK/$name"
done
"$PY" benchmarks/convergence.py --merge "$folders" --merge-commands "$cmds" --merge-minutes "$minutes" --out benchmarks
echo "convergence benchmark: $minutes min -> benchmarks/RESULTS.md"
