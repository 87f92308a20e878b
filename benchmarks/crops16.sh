#!/usr/bin/env bash
# The crops16 study (benchmarks/CROPS16.md): baseline and DisBack on 16x16 photo crops with the same tuning
# budget, one lane of one torch thread beside other work. Every part writes its runs to its own folder under
# benchmarks/crops16/ as each run ends (a re-run skips the runs already written), so a part cut short loses only
# the run in progress.
#   bash benchmarks/crops16.sh tune          # 4 settings x 2 methods, seed 0 (the tuning budget, equal for both)
#   bash benchmarks/crops16.sh seeds M:SETS  # method M (baseline | fixed) at its chosen settings, seeds 0-2 (seed 0 from tune)
#   bash benchmarks/crops16.sh merge         # reports: benchmarks/crops16/tune/ (grid) and crops16/study/ (seeds)
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
  seeds)
    [ $# -ge 2 ] || { echo "usage: $0 seeds METHOD:'--set k=v ...' (METHOD: baseline | fixed)" >&2; exit 2; }
    IFS=: read -r method sets <<<"$2"
    # Seed 0 of the chosen setting is its tuning run: those rows start the part, which then skips that seed.
    # shellcheck disable=SC2086
    [ -f "$OUT/seeds_$method/curves.csv" ] || "$PY" - "$OUT" "$method" $sets <<'EOF'
import sys
from pathlib import Path

import pandas as pd

out, method, sets = Path(sys.argv[1]), sys.argv[2], [a for a in sys.argv[3:] if a != "--set"]
recipe = ",".join(sorted(sets) + ["budget=500"])
for curves in sorted(out.glob("tune_*/curves.csv")):
    rows = pd.read_csv(curves)
    rows = rows[(rows["method"] == method) & (rows["recipe"] == recipe) & (rows["seed"] == 0)]
    if not rows.empty:
        (out / f"seeds_{method}").mkdir(exist_ok=True)
        rows.to_csv(out / f"seeds_{method}" / "curves.csv", index=False)
        (out / f"seeds_{method}" / "teachers.json").write_text((curves.parent / "teachers.json").read_text())
EOF
    # shellcheck disable=SC2086
    "$PY" benchmarks/longrun.py "${RUN[@]}" --methods "$method" --seeds 3 --out "$OUT/seeds_$method" $sets \
      >>"$OUT/seeds_$method.log" 2>&1 ;;
  merge)  # the tuning grid (seed 0) and the chosen settings (3 seeds), two reports
    "$PY" benchmarks/longrun.py --merge "$(ls -d "$OUT"/tune_*/ | paste -sd, -)" --out "$OUT/tune"
    "$PY" benchmarks/longrun.py --merge "$(ls -d "$OUT"/seeds_*/ | paste -sd, -)" --out "$OUT/study" ;;
  *) echo "usage: $0 tune | seeds METHOD:'--set k=v ...' | merge" >&2; exit 2 ;;
esac
