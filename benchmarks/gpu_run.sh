#!/usr/bin/env bash
# One short GPU run (DEADLINE seconds, about 8 minutes) that times the stage-2 step of the ADM ImageNet-64
# configuration (gpu_check.py), in order of priority, each part in a process of its own, time-boxed:
#   1. this checkout's code in bf16 (with its operator profile) and fp32;
#   2. bf16 at batch 64;
#   3. another tree's code (BASELINE_SRC, e.g. the last measured commit from `git archive`) in fp32 and bf16:
#      the "before", on the same card as the "after";
#   4. bf16 at batch 128, and bf16 with cuDNN's algorithm search off (what autotuning alone is worth);
#   5. bf16 + compile with what is left.
# Everything lands in OUT: machine.txt (card, CPUs, torch, when each part ended), gpu_check.jsonl (one line a
# lane, each with its label), gpu_check_profile.txt, gpu_check.log.
#   git archive <commit> src | tar -x -C .bench/baseline
#   BASELINE_SRC=.bench/baseline/src BASELINE_LABEL=<commit> LABEL=<this commit> OUT=/tmp/gpu \
#     bash benchmarks/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.bench/gpu}
DEADLINE=${DEADLINE:-480}
PY=${PYTHON:-python3}
LABEL=${LABEL:-$(git rev-parse --short HEAD 2>/dev/null || echo checkout)}
BASELINE_SRC=${BASELINE_SRC:-}
BASELINE_LABEL=${BASELINE_LABEL:-baseline}
EXTRA=${EXTRA:-}  # options put before every part's own, e.g. EXTRA="--tiny --iterations 1" for a dry run on the CPU
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

# seconds for a part: its cap, or what is left of DEADLINE if that is less
box() { local left=$(( DEADLINE - SECONDS )); (( left < $1 )) && echo $(( left > 1 ? left : 1 )) || echo "$1"; }
# check CAP STDERR_FILE ARGS...: one gpu_check process, its lines appended to gpu_check.jsonl
check() {
  local cap=$1 err=$2; shift 2
  timeout "$(box "$cap")" "$PY" benchmarks/gpu_check.py $EXTRA "$@" >>"$OUT/gpu_check.jsonl" 2>>"$err"
  echo "[$*] rc $? at ${SECONDS}s" >>"$OUT/machine.txt"
}

{ nvidia-smi -L; echo "nproc $(nproc)"; "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
  echo "code $LABEL, baseline ${BASELINE_SRC:-none} ($BASELINE_LABEL)"; } >"$OUT/machine.txt" 2>&1

# cuDNN's algorithm search makes a lane's first steps slow (9 s for bf16, 55 s for fp32 at batch 32 on an H200)
check 90 "$OUT/gpu_check_profile.txt" --lanes bf16 --profile bf16 --label "$LABEL"
check 120 "$OUT/gpu_check.log" --lanes fp32 --label "$LABEL"
check 60 "$OUT/gpu_check.log" --lanes bf16 --batch 64 --label "$LABEL"
if [[ -n "$BASELINE_SRC" ]]; then
  check 110 "$OUT/gpu_check.log" --lanes fp32,bf16 --src "$BASELINE_SRC" --label "$BASELINE_LABEL"
fi
check 70 "$OUT/gpu_check.log" --lanes bf16 --batch 128 --label "$LABEL"
check 60 "$OUT/gpu_check.log" --lanes bf16 --cudnn-benchmark off --label "$LABEL"
check "$DEADLINE" "$OUT/gpu_check.log" --lanes bf16+compile --iterations 5 --label "$LABEL"
