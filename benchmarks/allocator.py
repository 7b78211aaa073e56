"""Training-step time with glibc's default malloc thresholds against `sympformer.tune_cpu_allocator`
(freed blocks stay in the process; `src/sympformer/allocator.py`). The setting is per process and
cannot be undone, so each measurement is a fresh process, and the two settings alternate
(system, tuned, system, tuned, ...) so that a drift of the machine's speed hits both alike. Each
process times a baseline and momentum architectures interleaved (as blocks_step_time.py does) and
counts the minor page faults per step.

    python benchmarks/allocator.py [--shapes primary,heavy,linear,v1] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import options  # noqa: E402
from blocks_step_time import SHAPES, with_benchmarks_on_path  # noqa: E402

from sympformer.allocator import ENV  # noqa: E402
from sympformer.benchmarking import median, write_section  # noqa: E402
from sympformer.utils import markdown_table  # noqa: E402

ARCHS = {"primary": ["B", "H0", "R2"], "heavy": ["B", "H0"], "linear": ["B_L", "H0_L", "R2_L"], "v1": ["B", "v1_fe"]}

CHILD = r"""
import json, resource, sys, torch
from blocks_step_time import shape_step
from sympformer.allocator import apply_allocator_choice
from sympformer.benchmarking import interleaved_times, median
tuned = apply_allocator_choice()
archs = sys.argv[2].split(",")
steps = {}
for arch in archs:
    steps[arch] = shape_step(sys.argv[1], arch)
    steps[arch]()
faults = {}
for arch in archs:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    steps[arch]()
    faults[arch] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
times = interleaved_times(steps, rounds=3, repeats=2, device="cpu")
print(json.dumps({"tuned": tuned, "ms": {a: median(t) * 1e3 for a, t in times.items()}, "faults": faults}))
"""


def measure(shape: str, archs: list[str], mode: str) -> dict:
    env = {**os.environ, ENV: mode}
    result = subprocess.run(
        [sys.executable, "-c", with_benchmarks_on_path(CHILD), shape, ",".join(archs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{shape} ({mode}) failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(shape: str, pairs: int) -> str:
    archs = ARCHS[shape]
    runs: dict[str, list[dict]] = {"system": [], "tuned": []}
    for _ in range(pairs):
        for mode in runs:
            runs[mode].append(measure(shape, archs, mode))
            print(f"  {shape} {mode}: {runs[mode][-1]['ms']}", flush=True)
    if not all(r["tuned"] for r in runs["tuned"]):
        raise RuntimeError("tune_cpu_allocator() did not take effect on this machine (not Linux/glibc?)")
    ms = {mode: {a: median([r["ms"][a] for r in rs]) for a in archs} for mode, rs in runs.items()}
    faults = {mode: {a: median([r["faults"][a] for r in rs]) for a in archs} for mode, rs in runs.items()}
    base = archs[0]
    rows = [
        [
            arch,
            f"{ms['system'][arch]:.1f}",
            f"{ms['tuned'][arch]:.1f}",
            f"{ms['system'][arch] / ms['tuned'][arch]:.2f}",
            f"{faults['system'][arch]:,.0f}",
            f"{faults['tuned'][arch]:,.0f}",
            f"{ms['system'][arch] / ms['system'][base]:.3f}",
            f"{ms['tuned'][arch] / ms['tuned'][base]:.3f}",
        ]
        for arch in archs
    ]
    header = [
        "arch",
        "system ms / step",
        "tuned ms / step",
        "speed-up",
        "page faults / step, system",
        "tuned",
        f"× {base}, system",
        "tuned",
    ]
    fields, batch, _, _ = SHAPES[shape]
    return f"### shape `{shape}`: {fields}, batch {batch}\n\n" + markdown_table(header, rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_shapes(parser, ARCHS)
    options.add_count(parser, "--pairs", 3, "processes per setting, alternating")
    options.add_results(parser)
    args = parser.parse_args()
    body = (
        f"Median over {args.pairs} processes per setting (each: medians of 3 interleaved rounds of 2 steps).\n\n"
        + "\n".join(run(shape, args.pairs) for shape in args.shapes)
    )
    print(body)
    write_section(args.results, "allocator-cpu", "CPU allocator: glibc defaults against tune_cpu_allocator", body)


if __name__ == "__main__":
    main()
