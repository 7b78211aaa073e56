"""`torch.compile` on and off: training-step time at one of the step-time benchmark's shapes (default:
B, H0 and R2 at the paper's primary shape), eager and compiled models interleaved in one process
after warm-up (the compile time is reported separately).

    python benchmarks/compile.py [--device cpu] [--archs B,H0,R2] [--shape primary]
    python benchmarks/compile.py --shape v1 --archs B,v1_fe,v1_pe
    python benchmarks/compile.py --device cuda --precision bf16 --mode reduce-overhead   # CUDA graphs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import options  # noqa: E402
from blocks_step_time import SHAPES, compile_section, shape_step  # noqa: E402

from sympformer.allocator import apply_allocator_choice  # noqa: E402
from sympformer.benchmarking import interleaved_times, median, synchronize, write_section  # noqa: E402
from sympformer.utils import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_device(parser)
    options.add_archs(parser, "B,H0,R2", "comma-separated; the first is the reference (default: %(default)s)")
    parser.add_argument("--shape", default="primary", choices=sorted(SHAPES), help="(default: %(default)s)")
    options.add_rounds(parser, 5)
    options.add_compile_mode(
        parser, "--mode", "torch.compile's mode (reduce-overhead: CUDA graphs, which replay a step's launches)"
    )
    options.add_precision(parser)
    options.add_results(parser)
    args = parser.parse_args()
    apply_allocator_choice()  # as the sympformer command does (SYMPFORMER_CPU_ALLOCATOR)
    fields, batch, _, _ = SHAPES[args.shape]
    contenders, compile_seconds = {}, {}
    for arch in args.archs:
        contenders[f"{arch} eager"] = shape_step(args.shape, arch, args.device, args.precision)
        contenders[f"{arch} compiled"] = shape_step(
            args.shape, arch, args.device, args.precision, args.mode or "default"
        )
        start = time.perf_counter()
        contenders[f"{arch} compiled"]()  # triggers the compilation
        synchronize(args.device)
        compile_seconds[arch] = time.perf_counter() - start
    times = interleaved_times(contenders, rounds=args.rounds, repeats=2, device=args.device)
    rows = []
    first = args.archs[0]
    for arch in args.archs:
        eager, compiled = median(times[f"{arch} eager"]), median(times[f"{arch} compiled"])
        ratios = (eager / median(times[f"{first} eager"]), compiled / median(times[f"{first} compiled"]))
        rows.append(
            [
                arch,
                f"{eager * 1e3:.1f}",
                f"{compiled * 1e3:.1f}",
                f"{eager / compiled:.2f}",
                f"{ratios[0]:.2f}",
                f"{ratios[1]:.2f}",
                f"{compile_seconds[arch]:.0f}",
            ]
        )
    header = ["arch", "eager ms / step", "compiled ms / step", "speed-up", f"eager × {first}", f"compiled × {first}"]
    body = f"shape `{args.shape}`: {fields}, batch {batch}, {args.precision}\n\n" + markdown_table(
        [*header, "compile time (s)"], rows
    )
    print(body)
    device = args.device.split(":")[0]
    mode = args.mode if args.mode not in (None, "default") else None
    precision = "" if args.precision == "fp32" else f"-{args.precision}"
    key = compile_section(args.shape, device, args.precision, args.mode)
    title = f"torch.compile on and off, shape `{args.shape}` ({args.device}" + (f", mode {mode}" if mode else "")
    title += f", {args.precision})" if precision else ")"
    write_section(args.results, key, title, body, args.device)


if __name__ == "__main__":
    main()
