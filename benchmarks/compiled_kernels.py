"""Kernels per compiled training step, counted by torch.compile's inductor on the CPU, beside the step
times of the GPU compile sections (compiled with CUDA graphs, bf16).

Compiled and replayed as CUDA graphs, a GPU step launches no operator from Python: what is left is its
kernels, and at the benchmark shapes most of them are tiny (elementwise work and reductions over a few
MiB), each with a fixed cost on the device. Inductor writes one kernel per fused group of operations;
its count here is for the CPU backend (C++ loops), whose fusion may differ from the GPU backend's
(Triton; not compared), so it is a proxy for the GPU's: compare architectures, not absolute figures.
Matrix products and attention are library calls, not counted. A step's forward and backward graphs are
compiled on its first call; the count is read after it (the optimiser's step runs eagerly).

    python benchmarks/compiled_kernels.py [--cases heavy:B,heavy:H0,...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch._inductor.metrics as inductor_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
import options  # noqa: E402
from blocks_step_time import SHAPES, compile_section, shape_step  # noqa: E402
from ops_per_step import gpu_times  # noqa: E402

from sympformer.benchmarking import write_section  # noqa: E402
from sympformer.utils import markdown_table  # noqa: E402

# the architectures of the GPU compile sections (compile-cuda-…-reduce-overhead-bf16), and B_cap
CASES = (
    "primary:B,primary:B_cap,primary:H0,primary:R2,heavy:B,heavy:B_cap,heavy:H0,heavy:R2,"
    "linear:B_L,linear:H0_L,linear:R2_L,v1:B,v1:v1_fe,v1:v1_pe"
)
COMPILED_COLUMN, RATIO_COLUMN = 2, 5  # the compile sections' "compiled ms / step" and "compiled × <first arch>"


def generated_kernels(shape: str, arch: str) -> int:
    """Kernels inductor generates for one compiled training step (forward and backward) of ``arch``."""
    torch._dynamo.reset()
    inductor_metrics.reset()
    shape_step(shape, arch, compile_mode="default")()
    return inductor_metrics.generated_kernel_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_cases(parser, SHAPES, CASES, "shape:arch,…; the first of each shape is its reference")
    options.add_results(parser)
    args = parser.parse_args()
    cases = [case.split(":") for case in args.cases]
    counts = {}
    for shape, arch in cases:
        counts[shape, arch] = generated_kernels(shape, arch)
        print(f"{shape}:{arch} {counts[shape, arch]} kernels", flush=True)
    bodies = []
    for shape in dict.fromkeys(shape for shape, _ in cases):
        archs = [arch for s, arch in cases if s == shape]
        base = archs[0]
        key = compile_section(shape, "cuda", "bf16", "reduce-overhead")
        gpu = gpu_times(Path(args.results), key, COMPILED_COLUMN)
        # the section's own ratios (from unrounded times), valid where its first architecture is this base
        ratio = gpu_times(Path(args.results), key, RATIO_COLUMN) if next(iter(gpu), None) == base else {}
        rows = []
        for arch in archs:
            row = [arch, f"{counts[shape, arch]}", f"{counts[shape, arch] / counts[shape, base]:.2f}"]
            if gpu:
                row += [f"{gpu[arch]:.1f}", f"{ratio[arch]:.2f}"] if arch in gpu and arch in ratio else ["—", "—"]
            rows.append(row)
        header = ["arch", "generated kernels / step", f"× {base}"]
        header += ["GPU compiled ms / step", f"GPU × {base}"] if gpu else []
        source = f" GPU figures: section `{key}`." if gpu else ""
        bodies.append(f"### shape `{shape}`\n{source}\n\n" + markdown_table(header, rows) + "\n")
    body = "\n".join(bodies)
    print(body)
    write_section(
        args.results, "compiled-kernels", "Kernels per compiled training step (CPU inductor count)", body, "cpu"
    )


if __name__ == "__main__":
    main()
