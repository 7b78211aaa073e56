"""`sympformer demo`: the main job, run by `make demo` (about 6 minutes on 2 CPU cores, offline).

1. particle acceleration: classical vs accelerated flows on the quadratic positive control
   (κ = 10, 100, 1000), oracle calls to reach a relative gap of 1e-2, 1e-3, 1e-4;
2. elliptical preservation: accelerated linear attention against its matrix-ODE oracle, and the
   softmax counter-example;
3. causality audit of every architecture, including the leaky v1 witness that must fail it;
4. a language-model comparison on the embedded Shakespeare corpus (small BPE, the cpu-mini preset
   with a smaller budget): B vs the parameter-matched B_cap vs Y vs H0 vs R2 over 3 seeds, with
   paired statistics, ending with the printed table and runs/demo/report files.

Rerunning skips the language-model runs that already finished.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sympformer import __version__
from sympformer.utils import atomic_write_text

DEMO_ARCHS = ["B", "B_cap", "Y", "H0", "R2"]


def stage_particles(out: Path, progress: bool) -> list[str]:
    from sympformer.particles.experiments import converge

    summary = converge.run(
        out / "particles" / "converge",
        problems=["quadratic"],
        kappas=[10, 100, 1000],
        seeds=5,
        max_calls=20000,
        progress=progress,
    )
    lines = []
    for kappa in (10, 100, 1000):
        mean, low, high = summary["ratios"][(f"quadratic κ={kappa}", "accelerated kick-drift")]
        lines.append(
            f"quadratic κ = {kappa}: accelerated (kick-drift) / classical (Euler) oracle calls to a gap of "
            f"1e-3 = {mean:.3f} (seeds {low:.3f}–{high:.3f})"
        )
    lines.append(f"details: {out / 'particles' / 'converge' / 'converge.md'}")
    return lines


def stage_preserve(out: Path, progress: bool) -> list[str]:
    from sympformer.particles.experiments import preserve

    result = preserve.run(out / "particles" / "preserve", progress=progress)
    error = max(result["oracle_error"]["gaussian"], result["oracle_error"]["t"])
    return [
        f"accelerated linear attention vs the matrix-ODE oracle (Gaussian and t clouds): max error {error:.1e}",
        f"softmax attention (counter-example): affine residual {result['affine_residual']['softmax']:.2e} "
        "(the elliptical shape is not kept)",
        f"picture: {out / 'particles' / 'preserve' / 'preserve.png'}",
    ]


def stage_audit(out: Path, progress: bool) -> list[str]:
    from sympformer.audit import audit_arch
    from sympformer.nn import ARCHS, CAUSAL_ARCHS

    lines, report, unexpected = [], ["# Causality audit", ""], []
    for arch in ARCHS:
        result = audit_arch(arch)
        report.append(f"- {result.line()}")
        if result.passed != (arch in CAUSAL_ARCHS):
            unexpected.append(arch)
    atomic_write_text(out / "audit.md", "\n".join(report) + "\n")
    passed = sum(1 for line in report if ": PASS" in line)
    lines.append(
        f"{passed} of {len(ARCHS)} architectures pass all three checks; "
        f"the research witness v1_global_euler leaks, as it must"
    )
    if unexpected:
        raise SystemExit(f"causality audit: unexpected result for {', '.join(unexpected)} (see {out / 'audit.md'})")
    lines.append(f"details: {out / 'audit.md'}")
    return lines


def stage_compare(out: Path, progress: bool, steps: int, seeds: int, overrides: list[str]) -> list[str]:
    from sympformer.analysis.compare import preset_path, run_comparison
    from sympformer.train import load

    config = load(preset_path("cpu-mini"), [f"train.max_steps={steps}", "train.eval_interval=50", *overrides])
    result = run_comparison(
        config,
        DEMO_ARCHS,
        seeds,
        out / "compare",
        reference="B",
        include_cap=False,
        progress=progress,
        log=lambda m: print(f"   {m}", flush=True),
        title="Demo: B vs B_cap vs Y vs H0 vs R2 on Shakespeare (cpu-mini, small budget)",
    )
    table = (
        result["markdown"].split("## Final validation NLL (final checkpoint)", 1)[1].split("## Validation NLL at")[0]
    )
    return [line for line in table.strip().splitlines()] + [f"report: {out / 'compare' / 'report.md'}"]


def run(args: argparse.Namespace) -> int:
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    print(f"sympformer {__version__} demo · torch {torch.__version__} · output in {out}/", flush=True)
    stages = [
        ("Particle acceleration (quadratic positive control)", lambda: stage_particles(out, progress)),
        ("Elliptical preservation", lambda: stage_preserve(out, progress)),
        ("Causality audit of every architecture", lambda: stage_audit(out, progress)),
        ("Language-model comparison", lambda: stage_compare(out, progress, args.steps, args.seeds, args.set)),
    ]
    summary = ["# sympformer demo", ""]
    started = time.perf_counter()
    for name, stage in stages:
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        lines = stage()
        for line in lines:
            print(f"   {line}")
        summary += [f"## {name} ({time.perf_counter() - t0:.0f} s)", "", *lines, ""]
    atomic_write_text(out / "demo.md", "\n".join(summary) + "\n")
    print(
        f"\nDone in {time.perf_counter() - started:.0f} s. Summary: {out / 'demo.md'}; "
        f"comparison report: {out / 'compare' / 'report.md'}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job: particle acceleration, preservation, causality audit, LM comparison",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per language-model run (default: 300)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per architecture (default: 3)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override the comparison config (cpu-mini preset), e.g. --set data.dir=...",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)
