#!/usr/bin/env bash
# The GPU subset of the benchmarks (bf16 autocast, flash SDPA), meant to take under 5 minutes on one
# H100/H200: by the step times of the H200 runs of 2026-11-28 the default steps took 4.7–5.1 minutes
# with the eager kernel profile among them (an estimate: the training check's two runs from four that
# took 115 s); that profile (measured twice: the eager step is launch-bound) is now optional. The
# default set has not yet run as a whole; the last line gives the total time.
# Usage (repository root, CUDA machine): bash benchmarks/gpu.sh
# Figures go to benchmarks/RESULTS.md sections keyed "cuda" (the card's name is recorded with them).
# Correctness first (benchmarks/gpu_check.py); every later step runs even if one fails, and the
# summary at the end says which failed. With OUT set (a folder), the log and RESULTS.md are copied
# there after every step, so that an interrupted run still leaves what it measured.
# The sympformer package need not be installed: src/ is put on the path where it is not.
#   ONLY=memory,profile   just those steps (names: the first word after `step` or `optional` below)
#   DRY=1                 list the steps and their commands without running them
#   ALL=1                 the optional steps too (fp32 timings, the eager and the compiled kernel profiles,
#                         compilation at the other shapes and in fp32 without CUDA graphs, two more training
#                         runs, the particle lab; ~8 minutes more)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" -c "import sympformer" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LOG=${OUT:+$OUT/gpu.log}
LOG=${LOG:-/dev/null}
failed=()

run_step() {  # run_step NAME SECONDS COMMAND...: run with a time limit, log, keep going
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  if [ -n "${DRY:-}" ]; then echo "$name ($limit s): $*"; return; fi
  echo "=== $name ($(date -u +%H:%M:%S))" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
  [ -z "${OUT:-}" ] || cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
}
named() { [[ ",${ONLY:-}," == *",$1,"* ]]; }
step() { if [ -z "${ONLY:-}" ] || named "$1"; then run_step "$@"; fi; }  # by default
optional() { if named "$1" || { [ -z "${ONLY:-}" ] && [ -n "${ALL:-}" ]; }; then run_step "$@"; fi; }  # when asked

# short training runs through the command line on the device, bf16 (TRAIN_DEVICE=cpu ONLY=train tries
# them on a machine without a GPU): train_check R2, then resumed; train_more v1_pe, and R2 compiled with
# CUDA graphs and two micro-batches per update (as the paper presets accumulate). Each command starts
# torch on the device, ~15 s on the H200.
train_common() {
  TRAIN_TMP=$(mktemp -d)
  COMMON=(--config configs/cpu-mini.yaml --set "data.corpus=files:src/sympformer/**/*.py"
    --set data.tokenizer=bytes --set "data.dir=$TRAIN_TMP/data" --set model.vocab_size=256
    --set "train.device=${TRAIN_DEVICE:-cuda}" --set train.precision=bf16 --set train.eval_interval=50 --quiet)
}
train_check() {
  train_common
  "$PY" -m sympformer train "${COMMON[@]}" --set model.arch=R2 --set train.max_steps=100 --out "$TRAIN_TMP/r2" &&
    "$PY" -m sympformer train "${COMMON[@]}" --set model.arch=R2 --set train.max_steps=150 --out "$TRAIN_TMP/r2" --resume
}
train_more() {
  train_common
  "$PY" -m sympformer train "${COMMON[@]}" --set model.arch=v1_pe --set train.max_steps=50 --out "$TRAIN_TMP/v1" &&
    "$PY" -m sympformer train "${COMMON[@]}" --set model.arch=R2 --set train.max_steps=60 --set train.compile=true \
      --set train.compile_mode="${TRAIN_COMPILE_MODE:-reduce-overhead}" --set train.grad_accum=2 \
      --out "$TRAIN_TMP/r2-graphs"
}

[ -n "${DRY:-}" ] || nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv | tee -a "$LOG"
[ -n "${DRY:-}" ] || "$PY" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" |
  tee -a "$LOG"
step correctness 90 "$PY" benchmarks/gpu_check.py --device cuda
step blocks-bf16 120 "$PY" benchmarks/blocks_step_time.py --device cuda --precision bf16 --rounds 3 --repeats 5
optional blocks-fp32 60 "$PY" benchmarks/blocks_step_time.py --device cuda --precision fp32 --rounds 3 --repeats 5 \
  --shapes primary,heavy
step memory 90 "$PY" benchmarks/memory.py --device cuda
if [ -n "${DRY:-}" ] || "$PY" -c "import transformers" 2>/dev/null; then
  step vs-transformers-bf16 45 "$PY" benchmarks/vs_transformers.py --device cuda --precision bf16 --rounds 5 --repeats 5
  optional vs-transformers-fp32 45 "$PY" benchmarks/vs_transformers.py --device cuda --precision fp32 --rounds 5 \
    --repeats 5
elif [ -z "${ONLY:-}" ]; then
  failed+=("vs transformers (transformers is not installed)")
fi
optional particles 60 "$PY" benchmarks/particles_scale.py --device cuda --sizes 1000,10000,100000 --dense-limit-gb 40
optional profile 60 "$PY" benchmarks/gpu_profile.py --precision bf16
# what is left once launches are gone (compiled with CUDA graphs): by kind, whether H0's excess over B is
# inductor's generated kernels or library calls, and B_cap's share of it
optional profile-graphs 180 "$PY" benchmarks/gpu_profile.py --precision bf16 --compile-mode reduce-overhead \
  --cases primary:B,primary:B_cap,primary:H0,primary:R2,v1:B,v1:v1_fe
# and where R2_L's 1.54× H0_L with graphs goes (its ridge solves, float64 chunk inverses, more prefix passes)
optional profile-graphs-linear 150 "$PY" benchmarks/gpu_profile.py --precision bf16 --compile-mode reduce-overhead \
  --cases linear:H0_L,linear:R2_L
export PY
export -f train_common train_check train_more
step train 90 bash -c train_check
optional train-more 120 bash -c train_more
# compiled with CUDA graphs (a launch-bound step replayed at once), bf16 like the block timings
graphs=(--device cuda --precision bf16 --mode reduce-overhead)
step compile 120 "$PY" benchmarks/compile.py "${graphs[@]}" --archs B,H0,R2
optional compile-heavy 120 "$PY" benchmarks/compile.py "${graphs[@]}" --archs B,H0,R2 --shape heavy
optional compile-v1 150 "$PY" benchmarks/compile.py "${graphs[@]}" --archs B,v1_fe,v1_pe --shape v1
optional compile-linear 120 "$PY" benchmarks/compile.py "${graphs[@]}" --archs B_L,H0_L,R2_L --shape linear
optional compile-fp32 120 "$PY" benchmarks/compile.py --device cuda --archs B,H0,R2
[ -n "${DRY:-}" ] || echo "total: $SECONDS s" | tee -a "$LOG"
echo "failed steps: ${#failed[@]}" | tee -a "$LOG"
for f in "${failed[@]}"; do echo "  $f" | tee -a "$LOG"; done
[ "${#failed[@]}" -eq 0 ]
