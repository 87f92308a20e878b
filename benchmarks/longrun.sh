#!/usr/bin/env bash
# The long-run study as one command on a 2-core machine: two lanes of one torch thread, each running its
# share of every part, then one merged report in benchmarks/longrun/ (longrun.json, LONGRUN_TABLES.md,
# longrun.png, longrun_curves.csv). Parts are resumable: a re-run skips the runs already written.
#   bash benchmarks/longrun.sh [PARTS...]     (default: every part below, in order)
# A part is NAME:DATASETS:LOSSES:SEEDS:BUDGET:EVAL_EVERY[:--set stage.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CACHE=.bench/cache
WORK=.bench/longrun
mkdir -p "$CACHE" "$WORK"
export OMP_NUM_THREADS=1
ALL=("ring:ring:di,dmd,sid:3:8000:250")
# Robustness map (ring, SiD, baseline and fixed DisBack, 2 seeds, 2000 iterations): learning rate x s_init,
# the aggressive corner first.
for lr in 1.0e-3 5.0e-4 2.0e-4; do
  for s in 2.5 1.0 0.5; do
    ALL+=("robust_lr${lr}_s${s}:ring:sid:2:2000:250:--set backtracking.lr_generator=$lr --set backtracking.lr_fake=$lr --set backtracking.s_init=$s --methods baseline,fixed")
  done
done
ALL+=("grid:grid:di,dmd,sid:3:8000:250" "digits:digits:di,dmd,sid:3:5000:250")
if [ $# -gt 0 ]; then PARTS=("$@"); else PARTS=("${ALL[@]}"); fi
run_lane() {  # $1 = k of 2
  for part in "${PARTS[@]}"; do
    IFS=: read -r name data losses seeds budget every extra <<<"$part"
    # each data set's teacher is trained once (by whichever lane comes first) and cached for both
    flock "$CACHE/$data.lock" "$PY" benchmarks/longrun.py --datasets "$data" --teacher-only \
      --teacher-cache "$CACHE" >>"$WORK/teacher_$data.log" 2>&1
    # shellcheck disable=SC2086
    "$PY" benchmarks/longrun.py --datasets "$data" --losses "$losses" --seeds "$seeds" --budget "$budget" \
      --eval-every "$every" --part "$1/2" --teacher-cache "$CACHE" --out "$WORK/${name}_$1" $extra \
      >>"$WORK/${name}_$1.log" 2>&1
  done
}
run_lane 1 & run_lane 2 & wait
folders=$(ls -d "$WORK"/*_[12] 2>/dev/null | paste -sd, -)
"$PY" benchmarks/longrun.py --merge "$folders" --out benchmarks/longrun
echo "long-run study merged into benchmarks/longrun/"
