"""`make bench`: every benchmark in one go, each writing its section of benchmarks/RESULTS.md.

    python benchmarks/run_all.py [--device cpu|cuda] [--quick]

Order: block step times (every architecture family, two softmax shapes, the linear and v1 shapes;
then the heavy and v1 shapes with activation checkpointing), peak memory (both modes; on CPU also with
a GPU's code paths, an estimate of a GPU's peaks), B against
transformers' GPT-2, torch.compile on/off (primary and v1 shapes; on CPU also H0, H1 and R2 at the
heavy shape, where H1/R2's eager value groups take a materialised pass), the particle-lab scale, and
profiles of the steps whose targets do not hold, with lower bounds, the kernel micro-benchmarks
behind the attention code's choices, the operators a step dispatches (the CPU's code in float32, a
GPU's in bf16) and the kernels inductor generates, and on CPU the C library's allocator settings against
`tune_cpu_allocator`, the momentum algebra fused, checkpointed and plain, the linear connection kept
or recomputed, and B against v1_fe round by round (the machine's phases); last, the figure of the
targets (results-<device>.png, from RESULTS.md). Every script honours SYMPFORMER_CPU_ALLOCATOR as the
`sympformer` command does. About 36 minutes on 2 CPU cores; --quick
runs fewer rounds and the smaller particle sizes.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import options
import torch

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device", default=None, type=options.device_name, help="cpu or cuda (default: cuda when available)"
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = ["--device", args.device] if args.device else []
    on_cpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
    rounds = ["--rounds", "3" if args.quick else "7"]
    jobs = [
        ["blocks_step_time.py", *device, *rounds, "--repeats", "1" if args.quick else "2"],
        [
            "blocks_step_time.py",
            *device,
            *rounds,
            "--repeats",
            "1",
            "--shapes",
            "heavy,v1",
            "--activation-checkpointing",
        ],
        ["memory.py", *device],
        ["compile.py", *device, "--rounds", "3" if args.quick else "5"],
        ["compile.py", *device, "--rounds", "3", "--shape", "v1", "--archs", "B,v1_fe,v1_pe"],
        ["particles_scale.py", "--sizes", "1000,10000" if args.quick else "1000,10000,100000"],
        ["profile_steps.py"],
        ["kernels.py"],
        ["ops_per_step.py"],
        ["ops_per_step.py", "--device-paths"],
        ["compiled_kernels.py"],
    ]
    if on_cpu:  # memory with a GPU's code paths; compiled H1/R2 at the heavy shape; glibc's defaults against
        # tune_cpu_allocator (fresh processes); the momentum algebra three ways; the linear connection kept or
        # recomputed
        jobs.insert(3, ["memory.py", "--device-paths"])
        jobs.append(["compile.py", "--rounds", "3", "--shape", "heavy", "--archs", "H0,H1,R2"])
        jobs.append(["allocator.py", "--pairs", "2" if args.quick else "3"])
        jobs.append(["momentum_algebra.py", *rounds])
        jobs.append(["linear_connection.py", *rounds])
        jobs.append(["phases.py", "--rounds", "20" if args.quick else "40"])
    if importlib.util.find_spec("transformers") is not None:
        jobs.insert(2, ["vs_transformers.py", *device, *rounds])
        if on_cpu:  # and with both models on the tuned allocator (no page faults for GPT-2's logits)
            jobs.insert(3, ["vs_transformers.py", *device, *rounds, "--allocator", "tuned"])
    else:
        print("transformers is not installed: skipping the GPT-2 comparison (pip install -e '.[bench]')")
    jobs.append(["plot_results.py", "--device", "cpu" if on_cpu else "cuda"])
    failures = 0
    for job in jobs:
        started = time.perf_counter()
        print(f"\n=== {' '.join(job)}", flush=True)
        result = subprocess.run([sys.executable, str(HERE / job[0]), *job[1:]], cwd=HERE)
        failures += result.returncode != 0
        print(f"=== {job[0]}: {'ok' if result.returncode == 0 else 'FAILED'} in {time.perf_counter() - started:.0f} s")
    print(f"\nresults: {HERE / 'RESULTS.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
