#!/usr/bin/env bash
# The crops16 study (benchmarks/CROPS16.md): baseline and DisBack on 16x16 photo crops with the same tuning
# budget, one lane of one torch thread beside other work. Every part writes its runs to its own folder under
# benchmarks/crops16/ as each run ends (a re-run skips the runs already written), so a part cut short loses only
# the run in progress.
#   bash benchmarks/crops16.sh tune          # 4 settings x 2 methods, seed 0 (the tuning budget, equal for both)
#   bash benchmarks/crops16.sh seeds M:SETS  # method M (baseline | fixed) at its chosen settings, seeds 0-2
#   bash benchmarks/crops16.sh long M:SETS   # the same at 3x the budget (1,500 iterations), seeds 0-1
#   bash benchmarks/crops16.sh merge         # a report a part: benchmarks/crops16/report_{tune,seeds,long}/
# The data: python -m disback_pipeline.crops data/01_raw/crops16 (the crops16 environment's defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CACHE=.bench/crops16
OUT=benchmarks/crops16
mkdir -p "$CACHE" "$OUT"
export OMP_NUM_THREADS=1
RUN=(--datasets crops16 --losses di --budget 500 --eval-every 100 --teacher-cache "$CACHE" --select)
# The grid both methods are tuned over: the two rates and fake-score step counts that moved the digits results
# most (LONGRUN.md), the same four settings for each, the best chosen by the kept student's FID at seed 0.
GRID=("1.0e-4:1" "2.0e-4:1" "1.0e-4:2" "2.0e-4:2")
case "${1:-tune}" in
  tune)
    for g in "${GRID[@]}"; do
      IFS=: read -r lr r <<<"$g"
      "$PY" benchmarks/longrun.py "${RUN[@]}" --methods baseline,fixed --seeds 1 --out "$OUT/tune_lr${lr}_r${r}" \
        --set backtracking.lr_generator="$lr" --set backtracking.lr_fake="$lr" --set backtracking.fake_steps="$r" \
        >>"$OUT/tune_lr${lr}_r${r}.log" 2>&1
    done ;;
  seeds|long)
    [ $# -ge 2 ] || { echo "usage: $0 $1 METHOD:'--set k=v ...' (METHOD: baseline | fixed)" >&2; exit 2; }
    IFS=: read -r method sets <<<"$2"
    part=(--seeds 3)
    [ "$1" = long ] && part=(--seeds 2 --budget 1500 --eval-every 250)
    # shellcheck disable=SC2086
    "$PY" benchmarks/longrun.py "${RUN[@]}" "${part[@]}" --methods "$method" --out "$OUT/${1}_$method" $sets \
      >>"$OUT/${1}_$method.log" 2>&1 ;;
  merge)  # one report a part: the tuning grid, the chosen settings' seeds, the long runs
    for part in tune seeds long; do
      if ls -d "$OUT/${part}"_*/ >/dev/null 2>&1; then
        "$PY" benchmarks/crops16_report.py "$OUT/${part}"_*/ --out "$OUT/report_$part"
      fi
    done ;;
  *) echo "usage: $0 tune | seeds METHOD:'--set k=v ...' | long METHOD:'--set k=v ...' | merge" >&2; exit 2 ;;
esac
