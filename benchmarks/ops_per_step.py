"""Operators dispatched per training step (forward, backward and optimiser), per architecture, counted
below autograd with a TorchDispatchMode on the CPU: exact and free of timing noise.

On a GPU each computing operator is at least one kernel launch. At the benchmark shapes a GPU step is
bound by launching them (an H200 step of B at the heavy shape took 9.8 ms for ~0.07 ms of arithmetic
at the card's matrix rate), so there the eager step time follows this count, not the FLOPs: it is the
CPU-side measure of what makes the GPU ratios. Views and metadata operators (no kernel) are counted
apart. A custom operator counts once (the fused loss's chunk loop runs inside one), and one operator
may launch several kernels, so the count is a proxy: compare architectures, not absolute figures.
With --gpu-section the count is set beside an earlier GPU step-time section's figures.

By default the CPU's own code runs, in float32. ``--device-paths`` counts what a GPU's bf16 step
dispatches: the code a GPU runs (``softmax_ops.CPU_KERNELS`` off: SDPA with the sentinel key, one call
per value group, the v1 oracle's two flash calls) under bf16 autocast, the GPU timings' precision, with
autocast's casts (its own section).

    python benchmarks/ops_per_step.py [--shapes primary,heavy,linear,v1] [--gpu-section blocks-{shape}-cuda-bf16]
        [--device-paths]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import options  # noqa: E402
from blocks_step_time import SHAPES, shape_step  # noqa: E402

from sympformer import softmax_ops  # noqa: E402
from sympformer.benchmarking import section_rows, table_number, write_section  # noqa: E402
from sympformer.utils import markdown_table  # noqa: E402

# operators that only make views or read metadata: no kernel on any device
NO_KERNEL = {
    "detach", "view", "_unsafe_view", "t", "transpose", "permute", "unsqueeze", "squeeze", "expand", "slice",
    "select", "split", "split_with_sizes", "chunk", "unbind", "alias", "as_strided", "reshape", "promote_types",
    "result_type", "is_same_size", "_reshape_alias", "unflatten", "flatten", "narrow", "diagonal", "lift_fresh",
    "_record_function_enter_new", "_record_function_exit",
}  # fmt: skip


class OperatorCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def operators_per_step(shape: str, arch: str, precision: str = "fp32") -> Counter[str]:
    """The operators of one training step (after a warm-up step, so that the optimiser state exists)."""
    step = shape_step(shape, arch, precision=precision)
    step()
    with OperatorCount() as count:
        step()
    return count.counts


def gpu_times(results: Path, key: str, column: int = 1) -> dict[str, float]:
    """{arch: ms per step} from a GPU section of RESULTS.md, its tables' ``column`` (0 is the arch; 1, the
    block-time sections' step time; 2, the compile sections' compiled time); empty when there is none."""
    times = {}
    for row in section_rows(results, key):
        cells = list(row.values())
        value = table_number(cells[column]) if len(cells) > column else None
        if value is not None:
            times[cells[0]] = value
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_shapes(parser, SHAPES)
    parser.add_argument(
        "--gpu-section", default="blocks-{shape}-cuda-bf16", help="RESULTS.md section with GPU step times to set beside"
    )
    options.add_results(parser)
    parser.add_argument(
        "--device-paths",
        action="store_true",
        help="count a GPU's code under bf16 autocast (the GPU timings' precision)",
    )
    args = parser.parse_args()
    softmax_ops.CPU_KERNELS = not args.device_paths
    precision = "bf16" if args.device_paths else "fp32"
    bodies = []
    for shape in args.shapes:
        archs, base = SHAPES[shape][2], SHAPES[shape][2][0]
        gpu = gpu_times(Path(args.results), args.gpu_section.format(shape=shape))
        counts = {arch: operators_per_step(shape, arch, precision) for arch in archs}
        kernels = {arch: sum(n for op, n in c.items() if op not in NO_KERNEL) for arch, c in counts.items()}
        rows = []
        for arch in archs:
            row = [arch, f"{kernels[arch]}", f"{sum(counts[arch].values()) - kernels[arch]}"]
            row.append(f"{kernels[arch] / kernels[base]:.2f}")
            if gpu:
                row += [f"{gpu[arch]:.1f}", f"{gpu[arch] / gpu[base]:.2f}"] if arch in gpu else ["—", "—"]
            rows.append(row)
            print(" | ".join(row), flush=True)
        header = ["arch", "computing operators / step", "view operators / step", f"operators × {base}"]
        header += ["GPU ms / step", f"GPU × {base}"] if gpu else []
        source = f" GPU figures: section `{args.gpu_section.format(shape=shape)}`." if gpu else ""
        bodies.append(f"### shape `{shape}`\n{source}\n\n" + markdown_table(header, rows) + "\n")
    body = "\n".join(bodies)
    print(body)
    key, title = "ops-per-step", "Operators dispatched per training step (CPU count)"
    if args.device_paths:
        key, title = (
            "ops-per-step-device-paths",
            "Operators a GPU's bf16 step dispatches (CPU count, a GPU's code paths)",
        )
    write_section(args.results, key, title, body, "cpu")


if __name__ == "__main__":
    main()
