#!/usr/bin/env bash
# One short GPU session, in order of priority, each part stopped at its share of DEADLINE seconds:
#   1. the stage-2 step check (gpu_check.py) in fp32 and bf16, with the bf16 lane's operator profile;
#   2. the digits part of the long-run study (di, dmd, sid x baseline, fixed, adaptive x 3 seeds) in LANES
#      processes sharing the card, seeds outermost, so a cut-off study still has whole seeds;
#   3. gpu_check's bf16 + compile lane with what time is left.
# Everything it writes lands in OUT (logs, gpu_check.jsonl, digits_parts.tgz with each lane's part folder).
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.bench/gpu}
DEADLINE=${DEADLINE:-560}
LANES=${LANES:-9}
BUDGET=${BUDGET:-2000}
STUDY_UNTIL=${STUDY_UNTIL:-420}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/gpu_study}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT" "$WORK"
left() { echo $(( $1 - SECONDS )); }

{ nvidia-smi -L; nproc; "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } \
  >"$OUT/machine.txt" 2>&1
timeout 170 "$PY" benchmarks/gpu_check.py --lanes fp32,bf16 --profile bf16 \
  >"$OUT/gpu_check.jsonl" 2>"$OUT/gpu_check_profile.txt"
echo "step check done at ${SECONDS}s" >>"$OUT/machine.txt"

study=(--datasets digits --losses di,dmd,sid --methods baseline,fixed,adaptive --seeds 3 --budget "$BUDGET"
       --eval-every 200 --proxy-samples 2000 --device cuda --teacher-cache "$WORK/cache"
       --set backtracking.adaptive.cap=$(( BUDGET / 8 )))
timeout "$(left "$STUDY_UNTIL")" "$PY" benchmarks/longrun.py "${study[@]}" --teacher-only >"$WORK/teacher.log" 2>&1
for k in $(seq 1 "$LANES"); do
  timeout "$(left "$STUDY_UNTIL")" "$PY" benchmarks/longrun.py "${study[@]}" --part "$k/$LANES" \
    --out "$WORK/digits_$k" >"$WORK/digits_$k.log" 2>&1 &
done
wait
echo "study stopped at ${SECONDS}s" >>"$OUT/machine.txt"
tar czf "$OUT/digits_parts.tgz" -C "$WORK" --exclude=cache .

timeout "$(left "$DEADLINE")" "$PY" benchmarks/gpu_check.py --lanes bf16+compile >>"$OUT/gpu_check.jsonl" \
  2>"$OUT/gpu_check_compile.log"
echo "compile lane stopped at ${SECONDS}s" >>"$OUT/machine.txt"
