"""torch.profiler tables of one training step, for the shapes where a DESIGN.md target does not hold:
what dominates the step, operator by operator, and a lower bound for each ratio.

The bound: an architecture needs at least the reference's step plus its *extra* matrix-product and
attention-kernel time (aten mm/bmm, the fused attention forward and backward, the LU solves), as if
every other operator it adds (elementwise algebra, copies, LayerNorms) were free.

For the memory targets: the activations each architecture saves for the backward pass at the heavy,
linear and v1 shapes, in total and by the code that saved them.

    python benchmarks/profile_steps.py [--cases heavy:B,heavy:H0,heavy:H1,...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blocks_step_time import SHAPES  # noqa: E402

from sympformer.allocator import apply_allocator_choice  # noqa: E402
from sympformer.benchmarking import saved_bytes_by_site, training_optimizer, write_section  # noqa: E402
from sympformer.nn import SympFormerConfig, SympFormerLM  # noqa: E402
from sympformer.utils import markdown_table

KERNELS = (
    "aten::mm",
    "aten::bmm",
    "aten::addmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::linalg_lu_factor_ex",
    "aten::linalg_lu_solve",
)
BOUNDS = [  # (case, reference case): ratios with a DESIGN.md target
    ("heavy:H1", "heavy:H0"),
    ("linear:R2_L", "linear:H0_L"),
    ("v1:v1_fe", "v1:B"),
    ("v1:v1_pe", "v1:B"),
    ("v1:v1_doubling", "v1:B"),
]


def profile_case(shape: str, arch: str, rows: int) -> tuple[str, float, float]:
    """(markdown table, operator ms, matrix-product and attention-kernel ms) of one training step (the
    median of three by operator time)."""
    fields, batch, _, _ = SHAPES[shape]
    model = SympFormerLM(SympFormerConfig(**fields, arch=arch))
    optimizer = training_optimizer(model)
    idx = torch.randint(
        0, fields["vocab_size"], (batch, fields["block_size"]), generator=torch.Generator().manual_seed(0)
    )

    def step():
        optimizer.zero_grad(set_to_none=True)
        _, loss = model(idx, idx, return_logits=False)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    runs = []  # three profiled steps; the one with the median operator time is reported
    for _ in range(3):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        runs.append((total, sum(e.self_cpu_time_total for e in events if e.key in KERNELS), events))
    total, kernels, events = sorted(runs, key=lambda run: run[0])[1]
    table = [
        [e.key[:60], f"{e.self_cpu_time_total / 1e3:.1f}", f"{100 * e.self_cpu_time_total / total:.1f} %", e.count]
        for e in events[:rows]
    ]
    text = (
        f"#### `{arch}` at shape `{shape}` ({total / 1e3:.0f} ms of operator time)\n\n"
        + markdown_table(["operator", "self ms", "share", "calls"], table)
        + "\n"
    )
    return text, total / 1e3, kernels / 1e3


def bounds_table(totals: dict[str, tuple[float, float]]) -> str:
    rows = []
    for case, reference in BOUNDS:
        if case in totals and reference in totals:
            (total, kernels), (ref_total, ref_kernels) = totals[case], totals[reference]
            bound = ref_total + kernels - ref_kernels
            rows.append(
                [
                    f"{case} vs {reference}",
                    f"{total / ref_total:.2f}",
                    f"{kernels:.0f} vs {ref_kernels:.0f}",
                    f"{bound / ref_total:.2f}",
                ]
            )
    header = ["ratio", "measured (operator time)", "kernel ms (mm, bmm, attention, LU)", "lower bound"]
    return "#### Lower bounds from the profiles\n\n" + markdown_table(header, rows) + "\n"


def saved_activations(shape: str, archs: list[str], top: int = 10) -> str:
    """Bytes that autograd keeps for the backward pass (distinct storages) per architecture, in total
    and by the code that saved them: the activation part of the training memory, free of allocator
    effects, and what dominates it."""
    fields, batch, _, _ = SHAPES[shape]
    idx = torch.randint(
        0, fields["vocab_size"], (batch, fields["block_size"]), generator=torch.Generator().manual_seed(0)
    )
    by_site = {}
    for arch in archs:
        model = SympFormerLM(SympFormerConfig(**fields, arch=arch))
        by_site[arch] = saved_bytes_by_site(lambda model=model: model(idx, idx, return_logits=False))
    mib = {arch: sum(sites.values()) / 2**20 for arch, sites in by_site.items()}
    totals = [[arch, f"{mib[arch]:,.1f}", f"{mib[arch] / mib[archs[0]]:.2f}"] for arch in archs]
    largest = sorted(
        {site for sites in by_site.values() for site in sites},
        key=lambda site: -max(sites.get(site, 0) for sites in by_site.values()),
    )
    rows = [[f"`{site}`", *(f"{by_site[arch].get(site, 0) / 2**20:,.1f}" for arch in archs)] for site in largest[:top]]
    rest = [sum(v for site, v in by_site[arch].items() if site not in largest[:top]) / 2**20 for arch in archs]
    rows.append(["everything else", *(f"{v:,.1f}" for v in rest)])
    return (
        f"#### Activations saved for the backward pass, shape `{shape}`\n\n"
        + markdown_table(["arch", "MiB", f"× {archs[0]}"], totals)
        + "\nBy the code that saved them (MiB; a recomputed region's inputs count for its caller):\n\n"
        + markdown_table(["saved in", *archs], rows)
        + "\n"
    )


SAVED = {"heavy": ["B", "H0", "H1", "R2"], "linear": ["B_L", "H0_L", "R2_L"], "v1": ["B", "v1_fe", "v1_pe"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = sorted({case for pair in BOUNDS for case in pair} | {"heavy:B"})
    parser.add_argument("--cases", default=",".join(default))
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    apply_allocator_choice()  # as the sympformer command does (SYMPFORMER_CPU_ALLOCATOR)
    tables, totals = [], {}
    for case in args.cases.split(","):
        text, total, kernels = profile_case(*case.split(":"), args.rows)
        tables.append(text)
        totals[case] = (total, kernels)
    body = bounds_table(totals) + "\n" + "\n".join(tables)
    body += "".join("\n" + saved_activations(shape, archs) for shape, archs in SAVED.items())
    print(body)
    write_section(args.results, "profiles-cpu", "Profiles of one training step (CPU)", body)


if __name__ == "__main__":
    main()
