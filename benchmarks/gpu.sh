#!/usr/bin/env bash
# The GPU subset of the benchmarks (bf16 autocast, flash SDPA), about 5 minutes on one H100/H200.
# Usage (repository root, CUDA machine): bash benchmarks/gpu.sh
# Figures go to benchmarks/RESULTS.md sections keyed "cuda" (the card's name is recorded with them).
# Correctness first (benchmarks/gpu_check.py); every later step runs even if one fails, and the
# summary at the end says which failed. With OUT set (a folder), the log and RESULTS.md are copied
# there after every step, so that an interrupted run still leaves what it measured.
# The sympformer package need not be installed: src/ is put on the path where it is not.
# ONLY=memory,profile runs just those steps (names: the first word after "step" below).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" -c "import sympformer" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LOG=${OUT:+$OUT/gpu.log}
LOG=${LOG:-/dev/null}
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, keep going (skipped if ONLY omits NAME)
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  [[ -z "${ONLY:-}" || ",$ONLY," == *",$name,"* ]] || return 0
  echo "=== $name ($(date -u +%H:%M:%S))" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
  [ -z "${OUT:-}" ] || cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv | tee -a "$LOG"
"$PY" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" | tee -a "$LOG"
step correctness 90 "$PY" benchmarks/gpu_check.py --device cuda
step blocks-bf16 150 "$PY" benchmarks/blocks_step_time.py --device cuda --precision bf16 --rounds 5 --repeats 5
step blocks-fp32 60 "$PY" benchmarks/blocks_step_time.py --device cuda --precision fp32 --rounds 3 --repeats 5 \
  --shapes primary,heavy
step memory 90 "$PY" benchmarks/memory.py --device cuda
if "$PY" -c "import transformers" 2>/dev/null; then
  step vs-transformers-bf16 45 "$PY" benchmarks/vs_transformers.py --device cuda --precision bf16 --rounds 5 --repeats 5
  step vs-transformers-fp32 45 "$PY" benchmarks/vs_transformers.py --device cuda --precision fp32 --rounds 5 --repeats 5
else
  [[ -n "${ONLY:-}" ]] || failed+=("vs transformers (transformers is not installed)")
fi
step particles 60 "$PY" benchmarks/particles_scale.py --device cuda --sizes 1000,10000,100000 --dense-limit-gb 40
step profile 60 "$PY" benchmarks/gpu_profile.py --precision bf16
step compile 120 "$PY" benchmarks/compile.py --device cuda --archs B,H0,R2
step compile-cudagraphs 120 "$PY" benchmarks/compile.py --device cuda --archs B,H0,R2 --mode reduce-overhead
echo "failed steps: ${#failed[@]}" | tee -a "$LOG"
for f in "${failed[@]}"; do echo "  $f" | tee -a "$LOG"; done
[ "${#failed[@]}" -eq 0 ]
