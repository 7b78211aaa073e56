"""What recomputing the momentum algebra costs and saves, per shape: each momentum architecture with
`sympformer.nn.recompute.MIN_ELEMENTS` at 0 (every region recomputed) and at its default (regions whose
activations are below 2¹⁸ elements run plainly), interleaved in one process with B, plus the bytes
autograd keeps in each mode. This is the measurement behind the default threshold.

    python benchmarks/recompute_threshold.py [--shapes primary,heavy] [--rounds 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blocks_step_time import SHAPES, train_step_fn  # noqa: E402

import sympformer.nn.recompute as recompute  # noqa: E402
from sympformer.allocator import apply_allocator_choice  # noqa: E402
from sympformer.benchmarking import interleaved_times, median, saved_storages, training_optimizer, write_section  # noqa: E402
from sympformer.nn import SympFormerConfig, SympFormerLM  # noqa: E402
from sympformer.utils import markdown_table  # noqa: E402

ARCHS = ("Y", "H0", "R2")


def with_threshold(threshold: int, fn):
    """fn() run with recompute.MIN_ELEMENTS set to ``threshold`` (the default restored afterwards)."""

    def run():
        default, recompute.MIN_ELEMENTS = recompute.MIN_ELEMENTS, threshold
        try:
            return fn()
        finally:
            recompute.MIN_ELEMENTS = default

    return run


def run(shape: str, rounds: int) -> str:
    fields, batch, _, _ = SHAPES[shape]
    idx = torch.randint(
        0, fields["vocab_size"], (batch, fields["block_size"]), generator=torch.Generator().manual_seed(0)
    )
    default = recompute.MIN_ELEMENTS
    contenders, saved = {}, {}
    for arch in ("B", *ARCHS):
        for label, threshold in (("always", 0), ("default", default)) if arch != "B" else (("—", default),):
            model = SympFormerLM(SympFormerConfig(**fields, arch=arch))
            step = train_step_fn(model, idx, training_optimizer(model), "fp32")
            contenders[(arch, label)] = with_threshold(threshold, step)
            forward = with_threshold(threshold, lambda model=model: model(idx, idx, return_logits=False))
            saved[(arch, label)] = sum(saved_storages(forward).values()) / 2**20
    times = interleaved_times(contenders, rounds=rounds, repeats=2)
    base = median(times[("B", "—")])
    rows = [
        [arch, label, f"{median(t) * 1e3:.1f}", f"{median(t) / base:.3f}", f"{saved[(arch, label)]:,.1f}"]
        for (arch, label), t in times.items()
    ]
    header = ["arch", "recomputed regions", "ms / step (median)", "× B", "saved activations (MiB)"]
    elements = batch * fields["block_size"] * fields["n_embd"]
    return (
        f"### shape `{shape}`: {fields}, batch {batch}: a (B, T, C) activation has {elements:,} elements "
        f"({'recomputed' if elements >= default else 'not recomputed'} by default)\n\n"
        + markdown_table(header, rows)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="primary,heavy")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    apply_allocator_choice()  # as the sympformer command does (SYMPFORMER_CPU_ALLOCATOR)
    body = "\n".join(run(shape, args.rounds) for shape in args.shapes.split(","))
    print(body)
    write_section(args.results, "recompute-cpu", "Recomputed momentum algebra: threshold on and off (cpu, fp32)", body)


if __name__ == "__main__":
    main()
