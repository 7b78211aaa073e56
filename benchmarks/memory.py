"""Peak training memory of every architecture family against B (target ≤ 1.3× for the momentum
architectures, DESIGN.md). One warm-up training step (so that the optimiser state exists), then one
measured step; on CPU each architecture in a fresh process.

- On CPU, *allocated*: the peak of the bytes held by PyTorch's CPU allocator (the profiler's allocation
  and free events of both steps, summed in time order, plus the parameters made before them), the
  CPU counterpart of `torch.cuda.max_memory_allocated`; free of allocator caching and fragmentation.
  The peak falls in the measured step, which starts with the optimiser state the warm-up made.
  *RSS*: the process's peak resident set above its own baseline (model built, before the first
  step), which includes them (noisy, shown for reference).
- On a GPU, `torch.cuda.max_memory_allocated` over the measured step (parameters, AdamW state and
  gradients included). There every architecture of a shape runs in ONE child process, one after
  another, with no CUDA start each: the previous model and its optimiser are freed first, and what
  the process itself keeps (cuBLAS workspaces, made at the first products of a throwaway run) is
  subtracted from every peak; anything an architecture leaves behind is reported.

Every architecture is measured twice: as configured by default, and with
`activation_checkpointing: true` (each block recomputed in the backward pass; B too, for the ratio).

`--device-paths` (CPU): the CPU takes the code a GPU takes instead of its own kernels
(`softmax_ops.CPU_KERNELS = False`: SDPA with the sentinel key, one SDPA call per value group, the v1
oracle's two flash calls), an estimate of a GPU run's float32 peaks where none is at hand. Against
the H200's figures (2026-11-28) it read B 180.3 against 182.3 MiB and H0 201.2 against 202.3 at the
heavy shape; with the v1 oracle's calls kept (as they were then) the one-call v1 schemes 1.59–1.68× B
against the H200's 1.81–1.97×, so there it estimates low. At the primary shape the GPU's peaks are
dominated by what B itself holds there (658 MiB), and the ratios are not comparable.

    python benchmarks/memory.py [--device cpu] [--shapes primary,heavy,linear,v1] [--device-paths]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import options  # noqa: E402
from blocks_step_time import SHAPES, with_benchmarks_on_path  # noqa: E402

from sympformer.benchmarking import write_section  # noqa: E402
from sympformer.utils import markdown_table

CHILD = r"""
import json, resource, sys, torch
from blocks_step_time import train_step_fn
from sympformer.allocator import apply_allocator_choice
from sympformer.benchmarking import peak_allocated, training_optimizer
from sympformer.nn import SympFormerConfig, SympFormerLM
apply_allocator_choice()
fields, batch, arch, device = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
model = SympFormerLM(SympFormerConfig(**fields, arch=arch)).to(device)
optimizer = training_optimizer(model)
idx = torch.randint(0, fields["vocab_size"], (batch, fields["block_size"]), device=device)
rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
step = train_step_fn(model, idx, optimizer, "fp32")
# both steps under the profiler, so that every block freed in the measured step was allocated where the
# profiler saw it (it drops the frees of older blocks: the warm-up's gradients, which zero_grad frees);
# the warm-up makes the optimiser state
top = peak_allocated(lambda: (step(), step()))
allocated = sum(p.untyped_storage().nbytes() for p in model.parameters()) + top
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_base
print(json.dumps({"allocated_mb": allocated / 2**20, "rss_mb": rss / 2**20}))
"""


CUDA_CHILD = r"""
import gc, json, sys, torch
from blocks_step_time import train_step_fn
from sympformer.benchmarking import training_optimizer
from sympformer.nn import SympFormerConfig, SympFormerLM
runs, batch, device = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
fields = runs[0][0]
idx = torch.randint(0, fields["vocab_size"], (batch, fields["block_size"]), device=device)
def peak(fields, arch):
    model = SympFormerLM(SympFormerConfig(**fields, arch=arch)).to(device)
    step = train_step_fn(model, idx, training_optimizer(model), "fp32")
    step()
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    step(); torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - held) / 2**20
# the process's own blocks (cuBLAS workspaces, made at a handle's first product and kept) come to exist
# in a throwaway run of the first architecture, and are not counted in any peak; a block a later
# architecture leaves behind is one more of them, since its model and optimiser are gone (reported)
held = 0
peak(*runs[0])
gc.collect()
held = torch.cuda.memory_allocated()
for fields, arch in runs:
    try:
        print(json.dumps({"arch": arch, "allocated_mb": peak(fields, arch)}), flush=True)
    except Exception as error:
        print(json.dumps({"arch": arch, "error": repr(error)[:300]}), flush=True)
    gc.collect()
    if torch.cuda.memory_allocated() != held:
        print(f"{arch}: {(torch.cuda.memory_allocated() - held) / 2**20:+.2f} MiB held after it", file=sys.stderr)
        held = torch.cuda.memory_allocated()
"""


def measure_cuda(runs: list[tuple[dict, str]], batch: int, device: str) -> list[dict | None]:
    """{"allocated_mb", "rss_mb": nan} of each (fields, arch), all in one child process (see the docstring)."""
    result = subprocess.run(
        [sys.executable, "-c", with_benchmarks_on_path(CUDA_CHILD), json.dumps(runs), str(batch), device],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0 or result.stderr.strip():
        print(result.stderr[-2000:], file=sys.stderr)
    measured = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    for m in measured:
        if "error" in m:
            print(f"{m['arch']}: {m['error']}", file=sys.stderr)
    found = [
        {"allocated_mb": m["allocated_mb"], "rss_mb": float("nan")} if "error" not in m else None for m in measured
    ]
    return found + [None] * (len(runs) - len(found))


def measure(
    fields: dict, batch: int, arch: str, device: str, prelude: str = "", extra_args: tuple[str, ...] = ()
) -> dict | None:
    """{"allocated_mb", "rss_mb"} of one architecture (fields may set activation_checkpointing).
    ``prelude``: code the child runs first, with sys imported and this folder on its path (it may pop
    ``extra_args``, which follow the child's own arguments), e.g. to swap a variant in."""
    code = with_benchmarks_on_path(prelude + CHILD)
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(fields), str(batch), arch, device, *extra_args],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_device(parser)
    options.add_shapes(parser, SHAPES)
    options.add_results(parser)
    parser.add_argument(
        "--device-paths",
        action="store_true",
        help="on the CPU, run the code a GPU runs instead of the CPU's own kernels (an estimate of a GPU's peaks)",
    )
    args = parser.parse_args()
    if args.device_paths and args.device != "cpu":
        parser.error("--device-paths is for the CPU (a GPU takes those paths by itself)")
    prelude = "import sympformer.softmax_ops\nsympformer.softmax_ops.CPU_KERNELS = False\n" if args.device_paths else ""
    sections, failed = [], []
    for shape in args.shapes:
        fields, batch, archs, _ = SHAPES[shape]
        checkpointed = {**fields, "activation_checkpointing": True}
        if args.device.startswith("cuda"):
            found = measure_cuda([(f, arch) for f in (fields, checkpointed) for arch in archs], batch, args.device)
            plain, recomputing = (
                dict(zip(archs, found[: len(archs)], strict=True)),
                dict(zip(archs, found[len(archs) :], strict=True)),
            )
        else:
            plain = {arch: measure(fields, batch, arch, args.device, prelude) for arch in archs}
            recomputing = {arch: measure(checkpointed, batch, arch, args.device, prelude) for arch in archs}

        def cells(m: dict | None, base: dict | None, key: str = "allocated_mb") -> list[str]:
            if m is None:
                return ["failed", "—"]
            if math.isnan(m[key]):  # RSS is not measured on a GPU
                return ["—", "—"]
            return [f"{m[key]:,.1f}", f"{m[key] / base[key]:.2f}" if base else "—"]

        b = archs[0]
        rows = [
            [
                arch,
                *cells(plain[arch], plain[b]),
                *cells(plain[arch], plain[b], "rss_mb"),
                *cells(recomputing[arch], recomputing[b]),
                cells(recomputing[arch], plain[b])[1],
            ]
            for arch in archs
        ]
        header = ["arch", "allocated peak (MiB)", f"× {b}", "RSS peak (MiB)", f"× {b}"]
        header += ["checkpointed: allocated (MiB)", f"× checkpointed {b}", f"× plain {b}"]
        text = f"### shape `{shape}`: {fields}, batch {batch}\n\n" + markdown_table(header, rows) + "\n"
        print(text, flush=True)
        sections.append(text)
        failed += [arch for arch in archs if plain[arch] is None or recomputing[arch] is None]
    device = args.device.split(":")[0]
    key, title = f"memory-{device}", f"Peak training memory ({args.device})"
    if args.device_paths:
        key, title = "memory-cpu-device-paths", "Peak training memory with a GPU's code paths (cpu)"
    write_section(args.results, key, title, "\n".join(sections), args.device)
    if failed:
        sys.exit(f"not measured: {', '.join(failed)}")


if __name__ == "__main__":
    main()
