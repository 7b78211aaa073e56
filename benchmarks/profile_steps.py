"""torch.profiler tables of one training step, for the shapes where a DESIGN.md target does not hold:
what dominates the step, operator by operator, and a lower bound for each ratio.

The bound: an architecture needs at least the reference's step plus its *extra* matrix-product and
attention-kernel time (aten mm/bmm, the fused attention forward and backward, the LU solves), as if
every other operator it adds (elementwise algebra, copies, LayerNorms) were free.

Every case's steps are profiled interleaved with the others' (three rounds, the median step reported).
With transformers installed, GPT-2 at the heavy shape too: an upper bound on B's speed against it.

For the memory targets: the activations each architecture saves for the backward pass at the heavy,
linear and v1 shapes, in total and by the code that saved them.

    python benchmarks/profile_steps.py [--cases heavy:B,heavy:H0,heavy:H1,...]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blocks_step_time import SHAPES, train_step_fn  # noqa: E402

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


def step_for(shape: str, arch: str):
    """One training step of ``arch`` at ``shape`` (arch "gpt2": transformers' GPT-2 configured like B)."""
    fields, batch, _, _ = SHAPES[shape]
    idx = torch.randint(
        0, fields["vocab_size"], (batch, fields["block_size"]), generator=torch.Generator().manual_seed(0)
    )
    if arch == "gpt2":
        from vs_transformers import gpt2, step_fn

        return step_fn(gpt2(fields), idx, hf=True, precision="fp32")
    model = SympFormerLM(SympFormerConfig(**fields, arch=arch))
    return train_step_fn(model, idx, training_optimizer(model), "fp32")


def profile_cases(cases: list[str], rows: int, rounds: int = 3) -> dict[str, tuple[str, float, float]]:
    """{case: (markdown table, operator ms, matrix-product and attention-kernel ms)} of one training step
    each: ``rounds`` profiled steps per case, interleaved across the cases (so that drift in machine
    speed hits them alike), the step with the median operator time reported."""
    steps = {case: step_for(*case.split(":")) for case in cases}
    for step in steps.values():
        for _ in range(2):
            step()
    runs = {case: [] for case in cases}
    for _ in range(rounds):
        for case, step in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in events)
            runs[case].append((total, sum(e.self_cpu_time_total for e in events if e.key in KERNELS), events))
    results = {}
    for case in cases:
        total, kernels, events = sorted(runs[case], key=lambda run: run[0])[len(runs[case]) // 2]
        table = [
            [e.key[:60], f"{e.self_cpu_time_total / 1e3:.1f}", f"{100 * e.self_cpu_time_total / total:.1f} %", e.count]
            for e in events[:rows]
        ]
        shape, arch = case.split(":")
        name = "transformers GPT-2" if arch == "gpt2" else arch
        text = (
            f"#### `{name}` at shape `{shape}` ({total / 1e3:.0f} ms of operator time)\n\n"
            + markdown_table(["operator", "self ms", "share", "calls"], table)
            + "\n"
        )
        results[case] = (text, total / 1e3, kernels / 1e3)
    return results


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
    text = "#### Lower bounds from the profiles\n\n" + markdown_table(header, rows) + "\n"
    if "heavy:gpt2" in totals and "heavy:B" in totals:
        (gpt_total, gpt_kernels), (b_total, b_kernels) = totals["heavy:gpt2"], totals["heavy:B"]
        text += (
            "\n#### B's speed against GPT-2 at the heavy shape: an upper bound\n\n"
            "B's step takes at least its own matrix-product and attention-kernel time, so B's speed over "
            "GPT-2 is at most GPT-2's step over B's kernel time.\n\n"
            + markdown_table(
                ["", "operator ms", "kernel ms", "speed of B vs GPT-2"],
                [
                    ["transformers GPT-2", f"{gpt_total:.0f}", f"{gpt_kernels:.0f}", ""],
                    ["sympformer B", f"{b_total:.0f}", f"{b_kernels:.0f}", f"measured {gpt_total / b_total:.2f}"],
                    [
                        "B with free glue",
                        f"{b_kernels:.0f}",
                        f"{b_kernels:.0f}",
                        f"at most {gpt_total / b_kernels:.2f}",
                    ],
                ],
            )
            + "\n"
        )
    return text


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
    cases = args.cases.split(",")
    if importlib.util.find_spec("transformers") is not None and "heavy:B" in cases:
        cases.append("heavy:gpt2")  # the upper bound of B's speed against GPT-2
    profiled = profile_cases(cases, args.rows)
    tables = [text for text, _, _ in profiled.values()]
    totals = {case: (total, kernels) for case, (_, total, kernels) in profiled.items()}
    body = bounds_table(totals) + "\n" + "\n".join(tables)
    body += "".join("\n" + saved_activations(shape, archs) for shape, archs in SAVED.items())
    print(body)
    write_section(args.results, "profiles-cpu", "Profiles of one training step (CPU)", body)


if __name__ == "__main__":
    main()
