"""How a ratio moves with the machine's phase: B and v1_fe at the v1 shape, one after the other, round by
round in one process, so that a change of phase (a quiet machine against a contended one) shows as a
change in both step times and in their ratio. The machine this project runs on has such phases: they last
seconds to minutes, switch inside one process, and slow B's kernel-bound step more than v1_fe's partly
elementwise one, so every ratio in RESULTS.md is quoted as a range (see its summary).

    python benchmarks/phases.py [--rounds 40] [--archs B,v1_fe] [--shape v1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import options  # noqa: E402
from blocks_step_time import SHAPES, shape_batch, train_step_fn  # noqa: E402

from sympformer.allocator import apply_allocator_choice  # noqa: E402
from sympformer.benchmarking import training_optimizer, write_section  # noqa: E402
from sympformer.nn import SympFormerConfig, SympFormerLM  # noqa: E402
from sympformer.utils import markdown_table  # noqa: E402


def phase_rounds(shape: str, archs: list[str], rounds: int, steps: int = 2) -> list[dict[str, float]]:
    """Per round, the mean step time (ms) of every architecture over ``steps`` steps, the architectures
    taking turns in a fixed order (one warm-up step each before the first round)."""
    fields, idx = SHAPES[shape][0], shape_batch(shape)
    step_fns = {}
    for arch in archs:
        torch.manual_seed(0)
        model = SympFormerLM(SympFormerConfig(**fields, arch=arch))
        step_fns[arch] = train_step_fn(model, idx, training_optimizer(model), "fp32")
        step_fns[arch]()
    times = []
    for _ in range(rounds):
        row = {}
        for arch, step in step_fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            row[arch] = 1e3 * (time.perf_counter() - start) / steps
        times.append(row)
    return times


def render(times: list[dict[str, float]], archs: list[str], group: int = 5) -> str:
    """Medians over consecutive groups of ``group`` rounds, the ratio of the second architecture to the
    first in each, and the range over the whole run."""
    base, other = archs[0], archs[1]
    rows = []
    for start in range(0, len(times), group):
        chunk = times[start : start + group]
        med = {arch: statistics.median(row[arch] for row in chunk) for arch in archs}
        label = f"{start + 1}–{start + len(chunk)}"
        rows.append([label, *(f"{med[arch]:.0f}" for arch in archs), f"{med[other] / med[base]:.2f}"])
    ratios = [row[other] / row[base] for row in times]
    header = ["rounds", *(f"{arch} ms / step" for arch in archs), f"{other} / {base}"]
    spread = (
        f"\nOver the {len(times)} rounds: {base} {min(r[base] for r in times):.0f}–{max(r[base] for r in times):.0f} "
        f"ms, {other} {min(r[other] for r in times):.0f}–{max(r[other] for r in times):.0f} ms, "
        f"ratio per round {min(ratios):.2f}–{max(ratios):.2f}.\n"
    )
    return markdown_table(header, rows) + "\n" + spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_rounds(parser, 40)
    options.add_archs(
        parser, "B,v1_fe", "two or more, comma-separated; ratios are of the second to the first (default: %(default)s)"
    )
    parser.add_argument("--shape", default="v1", choices=sorted(SHAPES), help="(default: %(default)s)")
    options.add_results(parser)
    args = parser.parse_args()
    archs = args.archs
    if len(archs) < 2:
        parser.error("--archs needs at least two architectures")
    apply_allocator_choice()
    times = phase_rounds(args.shape, archs, args.rounds)
    fields, batch, _, _ = SHAPES[args.shape]
    body = f"### shape `{args.shape}`: {fields}, batch {batch}, fp32\n\n" + render(times, archs)
    print(body)
    write_section(args.results, f"phases-{args.shape}-cpu", "The machine's phases: step times round by round", body)


if __name__ == "__main__":
    main()
