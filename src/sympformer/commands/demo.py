"""`sympformer demo`: the main job, run by `make demo`.

The demo runs, in order, every stage that the package implements today and says which parts of the
full demo are still to come. It never prints a result it did not compute.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sympformer import __version__

# (name, function(out_dir) -> list of summary lines). Filled as the package grows.
Stage = tuple[str, Callable[[Path], list[str]]]


def stages() -> list[Stage]:
    return []


PENDING = [
    "causality audit of every architecture (issue 07)",
    "B vs B_cap vs Y vs H0 vs R2 language-model comparison on the embedded corpus (issue 09)",
]


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"sympformer {__version__} demo · torch {torch.__version__} · output in {out}/")
    summary: list[str] = []
    for name, stage in stages():
        print(f"\n== {name}")
        start = time.perf_counter()
        lines = stage(out)
        for line in lines:
            print(f"   {line}")
        summary.append(f"- **{name}** ({time.perf_counter() - start:.1f} s)")
        summary.extend(f"  - {line}" for line in lines)
    if not summary:
        print("\nNo demo stage is implemented yet.")
    if PENDING:
        print("\nNot yet part of the demo (still to be built):")
        for item in PENDING:
            print(f"  - {item}")
    (out / "demo.md").write_text("# sympformer demo\n\n" + "\n".join(summary) + "\n")
    print(f"\nSummary written to {out / 'demo.md'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the main job on the embedded default corpus (what `make demo` runs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.set_defaults(handler=run)
