"""The linear family's two targets against each other: what H1_L and R2_L's connection proxy keeps for
the backward pass, and what recomputing it instead costs (the paper's linear shape, CPU).

DESIGN.md asks for R2_L's training step within 1.5× H0_L's and for every momentum architecture's peak
memory within 1.3× its baseline's (B_L). The proxy (`nn/linear_attention.py`) keeps its ridge inverses
(float64), both solves' results and the inputs of its four prefix-linear passes. Three ways to run it:

- `kept` (the default code);
- `recomputed`: `PrefixLinearAttention._connection` as a `torch.utils.checkpoint` region, so that only
  its inputs (q, k and the direction, kept anyway) are kept and the whole proxy runs again in the
  backward pass;
- `recomputed+rebuilt`: as `recomputed`, and `recompute.MIN_ELEMENTS` set to 0, so that R2_L's momentum
  W = β₁ v + g₁ F and its V_a and increment are rebuilt as they are at the large shapes (at the linear
  shape they are below the size threshold and kept). H1_L has nothing that the threshold rebuilds, so its
  two recomputed rows run the same code: their difference gauges the run's noise.

B_L and H0_L have no connection and run once. For each: the training-step time (all contenders
interleaved in one process), the peak allocated memory (each in a fresh process, by `memory.py`'s
accounting) and the bytes autograd keeps for the backward pass.

    python benchmarks/linear_connection.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import options  # noqa: E402
import torch  # noqa: E402
from blocks_step_time import SHAPES, shape_batch, train_step_fn  # noqa: E402
from memory import measure  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

from sympformer.allocator import apply_allocator_choice  # noqa: E402
from sympformer.benchmarking import interleaved_times, median, saved_storages, training_optimizer, write_section  # noqa: E402
from sympformer.nn import SympFormerConfig, SympFormerLM, recompute  # noqa: E402
from sympformer.nn.linear_attention import PrefixLinearAttention  # noqa: E402
from sympformer.utils import markdown_table  # noqa: E402

SHAPE = "linear"
MODES = ("kept", "recomputed", "recomputed+rebuilt")
CASES = [("B_L", "kept"), ("H0_L", "kept")] + [(arch, mode) for arch in ("H1_L", "R2_L") for mode in MODES]
KEPT_CONNECTION = PrefixLinearAttention._connection


def recomputed_connection(self: PrefixLinearAttention, q, k, u):
    """The proxy as a checkpoint region under autograd (only q, k, u kept), else as it is."""
    if not torch.is_grad_enabled():
        return KEPT_CONNECTION(self, q, k, u)
    return checkpoint(functools.partial(KEPT_CONNECTION, self), q, k, u, use_reentrant=False, preserve_rng_state=False)


def use_mode(mode: str):
    """Run the linear connection (and R2_L's rebuilding) as ``mode`` from now on; returns what undoes it."""
    before = PrefixLinearAttention._connection, recompute.MIN_ELEMENTS
    PrefixLinearAttention._connection = KEPT_CONNECTION if mode == "kept" else recomputed_connection
    if mode == "recomputed+rebuilt":
        recompute.MIN_ELEMENTS = 0

    def undo() -> None:
        PrefixLinearAttention._connection, recompute.MIN_ELEMENTS = before

    return undo


def in_mode(mode: str, fn):
    """fn, run with the linear connection as ``mode`` each time it is called."""

    def run():
        undo = use_mode(mode)
        try:
            return fn()
        finally:
            undo()

    return run


def run(rounds: int) -> str:
    fields, batch, _, _ = SHAPES[SHAPE]
    idx = shape_batch(SHAPE)
    contenders, saved = {}, {}
    for arch, mode in CASES:
        model = SympFormerLM(SympFormerConfig(**fields, arch=arch))
        contenders[(arch, mode)] = in_mode(mode, train_step_fn(model, idx, training_optimizer(model), "fp32"))
        forward = in_mode(mode, lambda model=model: model(idx, idx, return_logits=False))
        saved[(arch, mode)] = sum(saved_storages(forward).values()) / 2**20
    times = interleaved_times(contenders, rounds=rounds, repeats=1)
    prelude = "from linear_connection import use_mode\nuse_mode(sys.argv.pop())\n"
    peaks = {}
    for arch, mode in CASES:
        found = measure(fields, batch, arch, "cpu", prelude=prelude, extra_args=(mode,))
        peaks[(arch, mode)] = found["allocated_mb"] if found else float("nan")
    h0, base = median(times[("H0_L", "kept")]), peaks[("B_L", "kept")]
    rows = [
        [
            arch,
            mode if arch in ("H1_L", "R2_L") else "—",
            f"{median(t) * 1e3:.1f}",
            f"{median(t) / h0:.3f}",
            f"{peaks[(arch, mode)]:,.1f}",
            f"{peaks[(arch, mode)] / base:.3f}",
            f"{saved[(arch, mode)]:,.1f}",
        ]
        for (arch, mode), t in times.items()
    ]
    header = ["arch", "connection", "ms / step (median)", "× H0_L", "allocated peak (MiB)", "× B_L"]
    header.append("saved activations (MiB)")
    return f"### shape `{SHAPE}`: {fields}, batch {batch}, fp32\n\n" + markdown_table(header, rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_rounds(parser, 7)
    options.add_results(parser)
    args = parser.parse_args()
    apply_allocator_choice()  # as the sympformer command does (SYMPFORMER_CPU_ALLOCATOR)
    body = run(args.rounds)
    print(body)
    title = "The linear connection kept or recomputed (cpu, fp32)"
    write_section(args.results, "linear-connection-cpu", title, body)


if __name__ == "__main__":
    main()
