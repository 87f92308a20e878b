#!/usr/bin/env bash
# The GPU work of the text-to-image and natural-image issues, in order of priority, for a lent card: each part a
# process of its own, time-boxed so the whole fits one 10-minute command (DEADLINE seconds, default 560).
#   bash benchmarks/gpu_session.sh            # 1-3: the step figures (about 7 minutes), then 4 with what is left
#   bash benchmarks/gpu_session.sh crops32    # 4 only: the crops32 run; call again to continue it (it resumes)
#  1. stage 2's step on an SD-1.5-size UNet (random weights, bf16, guidance 1.75): whole and LoRA, batch 4/8/16;
#     SDXL-size with LoRA + gradient checkpointing at batch 4 (does it fit?) and whole at batch 2 (expected OOM);
#  2. the ADM ImageNet-64 DMD step: bf16 at batch 64 (target: 35 % of the dense bf16 peak), fp32 and bf16 at 32;
#  3. bf16 + compile, the lane that has never finished;
#  4. crops32 end to end (data, teacher, stages 1 and 2, evaluation): `kedro run --env crops32`, killed at the
#     deadline and continued by the next call from its newest training state.
# Everything lands in OUT: machine.txt, t2i_step.jsonl, gpu_check.jsonl, *.log, crops32/ (metrics, history).
# A dry run on the CPU: EXTRA_T2I="--size tiny --batch 2 --iterations 1" EXTRA="--tiny --iterations 1" \
#   SKIP_CROPS=1 bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.bench/gpu_session}
DEADLINE=${DEADLINE:-560}
VENV=$([[ -x .venv/bin/python ]] && echo .venv/bin/ || echo "")  # this project's venv, else what is on PATH
PY=${PYTHON:-${VENV}python3}
KEDRO=${KEDRO:-${VENV}kedro}
LABEL=${LABEL:-$(git rev-parse --short HEAD 2>/dev/null || echo checkout)}
EXTRA=${EXTRA:-}
EXTRA_T2I=${EXTRA_T2I:-}
export PYTHONUNBUFFERED=1 KEDRO_DISABLE_TELEMETRY=1 DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
mkdir -p "$OUT"
box() { local left=$(( DEADLINE - SECONDS )); (( left < $1 )) && echo $(( left > 1 ? left : 1 )) || echo "$1"; }
part() {  # part CAP OUTFILE COMMAND...: one time-boxed process, stdout appended to OUTFILE, its end noted
  local cap=$1 file=$2; shift 2
  timeout "$(box "$cap")" "$@" >>"$OUT/$file" 2>>"$OUT/${file%.*}.log"
  echo "[$*] rc $? at ${SECONDS}s" >>"$OUT/machine.txt"
}
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; echo "nproc $(nproc)"; echo "code $LABEL"
  "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
} >>"$OUT/machine.txt" 2>&1

if [[ "${1:-all}" == all ]]; then
  # shellcheck disable=SC2086
  part 150 t2i_step.jsonl "$PY" benchmarks/t2i_step.py --size sd15 --lanes full,lora --batch 4,8,16 \
    --label "$LABEL" $EXTRA_T2I
  # shellcheck disable=SC2086
  part 90 t2i_step.jsonl "$PY" benchmarks/t2i_step.py --size sdxl --lanes lora+gc --batch 4 --label "$LABEL" \
    $EXTRA_T2I
  # shellcheck disable=SC2086
  part 60 t2i_step.jsonl "$PY" benchmarks/t2i_step.py --size sdxl --lanes full --batch 2 --label "$LABEL" $EXTRA_T2I
  # shellcheck disable=SC2086
  part 80 gpu_check.jsonl "$PY" benchmarks/gpu_check.py --lanes bf16 --batch 64 --label "$LABEL" $EXTRA
  # shellcheck disable=SC2086
  part 120 gpu_check.jsonl "$PY" benchmarks/gpu_check.py --lanes fp32,bf16 --batch 32 --label "$LABEL" $EXTRA
  # shellcheck disable=SC2086
  part 150 gpu_check.jsonl "$PY" benchmarks/gpu_check.py --lanes bf16+compile --iterations 5 --label "$LABEL" $EXTRA
fi
if [[ -z "${SKIP_CROPS:-}" ]] && (( SECONDS < DEADLINE - 60 )); then
  [[ -f data/01_raw/crops32/crops.json ]] || part 60 crops32.log "$PY" -m disback_pipeline.crops data/01_raw/crops32 \
    --resolution 32
  part "$DEADLINE" crops32.log "$KEDRO" run --pipelines=distill --env crops32
  mkdir -p "$OUT/crops32"
  cp -r data/crops32/08_reporting "$OUT/crops32/" 2>/dev/null
  ls -l data/crops32/09_training_state/* >"$OUT/crops32/states.txt" 2>&1
fi
