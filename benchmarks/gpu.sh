#!/usr/bin/env bash
# The GPU subset of the benchmarks (bf16 autocast, flash SDPA), under 5 minutes on one H100/H200.
# Usage (repository root, CUDA machine): bash benchmarks/gpu.sh
# Figures go to benchmarks/RESULTS.md sections keyed "cuda" (the card's name is recorded with them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" benchmarks/blocks_step_time.py --device cuda --precision bf16 --rounds 5 --repeats 5
"$PY" benchmarks/blocks_step_time.py --device cuda --precision fp32 --rounds 3 --repeats 5 --shapes primary,heavy
"$PY" benchmarks/memory.py --device cuda --shapes heavy
if "$PY" -c "import transformers" 2>/dev/null; then
  "$PY" benchmarks/vs_transformers.py --device cuda --precision bf16 --rounds 5 --repeats 5
fi
"$PY" benchmarks/particles_scale.py --device cuda --sizes 1000,10000,100000
