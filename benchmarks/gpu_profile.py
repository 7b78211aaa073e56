"""Where a GPU training step's time goes: the step's wall time against the time its kernels keep the GPU
busy (torch.profiler's CUDA kernel, copy and fill records, summed), and how many it launches.

At these shapes a step is a few hundred small kernels: where the kernels' sum is far under the wall
time, the step is bound by launching them (Python, dispatch and launch latency), not by the GPU's
arithmetic or memory. Then an architecture's cost against B is its count of operations rather than
their size, and the remedies are fusion (torch.compile) and launch replay (CUDA graphs), not faster
kernels. The "kernels × ref" column is the ratio a launch-free step would approach.

Steps are timed interleaved in one process (median); kernels are summed over three profiled steps.
With --compile-mode the models are compiled first (reduce-overhead: CUDA graphs, whose kernels the
profiler still records one by one): what is left of an architecture's cost once launches are gone, and
which kernels carry it. B_cap (B with H0's learned velocity tables) separates the tables' share of H0's.
Kernels are also summed by kind (inductor's generated Triton kernels, attention, matrix products, the
optimizer, copies and fills, other ATen kernels), from their names (`KERNEL_KINDS`).

    python benchmarks/gpu_profile.py [--cases primary:B,primary:H0,...] [--precision bf16]
    python benchmarks/gpu_profile.py --compile-mode reduce-overhead --cases primary:B,primary:B_cap,primary:H0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import options  # noqa: E402
from blocks_step_time import SHAPES, shape_step  # noqa: E402

from sympformer.benchmarking import interleaved_times, median, write_section  # noqa: E402
from sympformer.utils import markdown_table  # noqa: E402

CASES = "primary:B,primary:B_cap,primary:H0,primary:R2,heavy:B,heavy:H0,heavy:R2,v1:B,v1:v1_fe,v1:v1_pe,v1:v1_strang"
WARMUP = 3  # steps before timing: compilation, and CUDA-graph recording, take the first two
PROFILED_STEPS = 3


TOP_KERNELS = 4


def kernel_seconds(events) -> tuple[dict[str, float], dict[str, int]]:
    """({kernel, copy or fill name: seconds summed over its launches}, {name: launches}) from profiler
    events. Only the device's own records count: not the CPU's, and not the user annotations the profiler
    also draws on the GPU timeline (``Optimizer.step#AdamW.step`` spans the optimizer's kernels, which are
    counted themselves; the first H200 profile summed it with them)."""
    seconds: dict[str, float] = {}
    launches: dict[str, int] = {}
    for e in events:
        if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False):
            seconds[e.name] = seconds.get(e.name, 0.0) + (e.time_range.end - e.time_range.start) * 1e-6
            launches[e.name] = launches.get(e.name, 0) + 1
    return seconds, launches


# what made a kernel, by its name; the first match wins: inductor names its Triton kernels after the
# operators they fuse (an attention's input preparation may be "triton_…_attention…"), and the attention
# libraries' kernels name their GEMM tiles too ("fmha_cutlassF…", cuDNN's "…sdpa_sm90_…wgmma…")
KERNEL_KINDS = (
    ("generated", ("triton",)),  # inductor's fused kernels
    ("attention", ("flash", "fmha", "sdpa", "attention", "efficient")),
    ("matrix products", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk")),
    ("optimizer", ("multi_tensor_apply", "adam")),
    ("copies and fills", ("memcpy", "memset", "direct_copy", "fill")),
)
OTHER_KIND = "other ATen"


def kernel_kind(name: str) -> str:
    """The kind of a kernel (KERNEL_KINDS), else OTHER_KIND: softmax, LayerNorm, reductions, elementwise."""
    lowered = name.lower()
    return next((kind for kind, marks in KERNEL_KINDS if any(m in lowered for m in marks)), OTHER_KIND)


def by_kind(seconds: dict[str, float], launches: dict[str, int]) -> dict[str, tuple[int, float]]:
    """{kind: (launches, seconds)} summed over the kernels of each kind."""
    totals: dict[str, tuple[int, float]] = {}
    for name, time in seconds.items():
        kind = kernel_kind(name)
        count, total = totals.get(kind, (0, 0.0))
        totals[kind] = (count + launches[name], total + time)
    return totals


class DeviceWork(NamedTuple):
    """Per step, over PROFILED_STEPS: device seconds, launches, the TOP_KERNELS longest kernels, and
    {kind: (launches, seconds)}."""

    seconds: float
    launches: float
    top: list[tuple[str, float]]
    kinds: dict[str, tuple[float, float]]


def device_work(step) -> DeviceWork:
    """What one step keeps the device busy with (:class:`DeviceWork`), profiled over PROFILED_STEPS."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_STEPS):
            step()
        torch.cuda.synchronize()
    seconds, launches = kernel_seconds(prof.events())
    top = sorted(seconds.items(), key=lambda item: -item[1])[:TOP_KERNELS]
    n = PROFILED_STEPS
    kinds = {kind: (count / n, time / n) for kind, (count, time) in by_kind(seconds, launches).items()}
    return DeviceWork(sum(seconds.values()) / n, sum(launches.values()) / n, [(k, t / n) for k, t in top], kinds)


def report(cases: list[str], wall: dict[str, float], work: dict[str, DeviceWork], what: str) -> str:
    """The section's tables: per case its wall and kernel time against its shape's first case, its kernels by
    kind, and its longest kernels (``what``: the precision and mode, for the first line)."""
    reference = {}
    for case in cases:
        reference.setdefault(case.split(":")[0], case)
    rows = []
    for case in cases:
        ref = reference[case.split(":")[0]]
        kernels, launches, ref_kernels = work[case].seconds, work[case].launches, work[ref].seconds
        rows.append(
            [
                case,
                f"{wall[case] * 1e3:.1f}",
                f"{kernels * 1e3:.2f}",
                f"{kernels / wall[case]:.0%}",
                f"{launches:.0f}",
                f"{wall[case] / wall[ref]:.2f}",
                f"{kernels / ref_kernels:.2f}",
            ]
        )
    header = ["case", "wall ms / step", "kernel ms / step", "GPU busy", "kernels / step", "wall × ref", "kernels × ref"]
    body = f"{what}; the first case of each shape is its reference.\n\n" + markdown_table(header, rows)
    kinds = [kind for kind, _ in KERNEL_KINDS] + [OTHER_KIND]
    kind_rows = [
        [case, *(f"{n:.0f} / {t * 1e3:.3f}" for n, t in (work[case].kinds.get(k, (0, 0.0)) for k in kinds))]
        for case in cases
    ]
    body += "\n\nKernels by kind, launches / ms per step (names matched as in `KERNEL_KINDS`):\n\n"
    body += markdown_table(["case", *kinds], kind_rows)
    top_rows = [[case, name[:90], f"{seconds * 1e3:.3f}"] for case in cases for name, seconds in work[case].top]
    body += f"\n\nThe {TOP_KERNELS} longest kernels of each case (summed over their launches in a step):\n\n"
    return body + markdown_table(["case", "kernel", "ms / step"], top_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_device(parser, "cuda", cuda_only="gpu_profile.py profiles CUDA kernels (on CPU: profile_steps.py)")
    options.add_cases(parser, SHAPES, CASES, "shape:arch,…; the first of each shape is its reference")
    options.add_precision(parser, "bf16")
    options.add_rounds(parser, 3)
    options.add_compile_mode(
        parser, "--compile-mode", "compile the models with this torch.compile mode first (default: eager)"
    )
    options.add_results(parser)
    args = parser.parse_args()
    cases = args.cases
    steps = {case: shape_step(*case.split(":"), args.device, args.precision, args.compile_mode) for case in cases}
    wall = {case: median(t) for case, t in interleaved_times(steps, args.rounds, 5, args.device, WARMUP).items()}
    work = {case: device_work(steps[case]) for case in cases}
    how = "eager" if args.compile_mode is None else f"compiled ({args.compile_mode})"
    body = report(cases, wall, work, f"{args.precision}, {how}")
    print(body)
    mode = "" if args.compile_mode is None else f", compiled {args.compile_mode}"
    write_section(
        args.results,
        f"gpu-profile-{args.precision}" + ("" if args.compile_mode is None else f"-{args.compile_mode}"),
        f"GPU step profile: wall time against kernel time ({args.device}, {args.precision}{mode})",
        body,
        args.device,
    )


if __name__ == "__main__":
    main()
