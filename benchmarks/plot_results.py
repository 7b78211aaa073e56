"""The DESIGN.md targets at a glance: one figure per device from the figures already in RESULTS.md (no
measuring), training-step time and peak memory of every architecture against its shape's baseline, with
each target drawn on its bar (green: within, red: above; grey bars have no target).

- step time on the CPU: the block-time sections (`blocks-{shape}-cpu-fp32`, eager float32);
- step time on a GPU: the compile sections with CUDA graphs, bf16 (`compile-cuda…-reduce-overhead-bf16`),
  the GPU's recommended mode (an eager step is bound by launching kernels, and its ratios say little
  about the architectures); where a shape has none, the eager block sections (`blocks-{shape}-cuda-bf16`);
- memory: the allocator's peak, `memory-{device}` (float32).

Targets, from DESIGN.md: Y and H0 ≤ 1.10× the baseline (Y_L, H0_L likewise); at the primary shape H1
≤ 1.15× and R2 ≤ 1.25× H0; R2_L ≤ 1.5× H0_L; at the v1 shape the one-oracle schemes ≤ 1.2× B, doubling
≤ 3.5× and Strang ≤ 2.0×; memory of every momentum architecture ≤ 1.3× the baseline.

    python benchmarks/plot_results.py [--device cpu|cuda] [--out benchmarks/results-cpu.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blocks_step_time import blocks_section, compile_section  # noqa: E402

from sympformer.benchmarking import section_rows, table_number  # noqa: E402
from sympformer.nn import SympFormerConfig  # noqa: E402
from sympformer.utils import save_figure  # noqa: E402

SHAPE_NAMES = ("primary", "heavy", "linear", "v1")
BASELINES = ("B", "B_cap", "B_L")  # no target: the classical blocks
MEMORY_TARGET = 1.3


class Bar(NamedTuple):
    arch: str
    ratio: float  # × the shape's baseline (the table's first architecture)
    target: float | None  # in the same units; None: no target


def sections(device: str, shape: str, kind: str) -> list[tuple[str, str]]:
    """(RESULTS.md section, panel label) for ``kind`` "time" or "memory" at ``shape``, in order of
    preference: the first with figures is plotted. On a GPU the step times compiled with CUDA graphs
    (written by gpu.sh), else the eager ones (`make bench --device cuda` writes those)."""
    if kind == "memory":
        return [(f"memory-{device}", "peak memory × baseline")]
    if device == "cpu":
        return [(blocks_section(shape, "cpu"), "step time × baseline")]
    graphs = compile_section(shape, device, "bf16", "reduce-overhead")
    eager = blocks_section(shape, device, "bf16")
    return [(graphs, "step time × baseline (CUDA graphs, bf16)"), (eager, "step time × baseline (eager, bf16)")]


def _ratio_column(row: dict[str, str], key: str) -> str:
    """The header of the ratio against the baseline: the first "× …" column (the compile sections':
    "compiled × …")."""
    wanted = "compiled × " if key.startswith("compile-") else "× "
    return next(name for name in row if name.startswith(wanted))


def time_target(shape: str, arch: str, ratios: dict[str, float]) -> float | None:
    """``arch``'s step-time target at ``shape`` in units of the baseline, from ``ratios`` (× baseline)."""
    if arch in ("Y", "H0", "Y_L", "H0_L"):
        return 1.10
    if shape == "primary" and arch in ("H1", "R2") and "H0" in ratios:
        return {"H1": 1.15, "R2": 1.25}[arch] * ratios["H0"]
    if arch == "R2_L" and "H0_L" in ratios:
        return 1.5 * ratios["H0_L"]
    if shape == "v1" and arch.startswith("v1_"):
        if arch in ("v1_doubling", "v1_strang"):
            return {"v1_doubling": 3.5, "v1_strang": 2.0}[arch]
        one_oracle = SympFormerConfig(arch=arch).oracle_calls_per_layer == 1
        return 1.2 if one_oracle else None
    return None


def bars(results: Path, device: str, shape: str, kind: str) -> tuple[list[Bar], str]:
    """The bars of one panel, ``kind`` "time" or "memory" at ``shape``, and its label (:func:`sections`);
    no bars without figures."""
    candidates = sections(device, shape, kind)
    for key, label in candidates:
        rows = section_rows(results, key, shape)
        if rows:
            return _bars(rows, _ratio_column(rows[0], key), shape, kind), label
    return [], candidates[0][1]


def _bars(rows: list[dict[str, str]], column: str, shape: str, kind: str) -> list[Bar]:
    ratios = {row["arch"]: table_number(row.get(column, "")) for row in rows}
    ratios = {arch: ratio for arch, ratio in ratios.items() if ratio is not None}
    if kind == "memory":
        return [Bar(arch, r, None if arch in BASELINES else MEMORY_TARGET) for arch, r in ratios.items()]
    return [Bar(arch, r, time_target(shape, arch, ratios)) for arch, r in ratios.items()]


def plot(results: Path, device: str, out: Path) -> int:
    """Draw the figure; returns the number of panels with figures (0: nothing written)."""
    panels = {(kind, shape): bars(results, device, shape, kind) for kind in ("time", "memory") for shape in SHAPE_NAMES}
    shapes = [shape for shape in SHAPE_NAMES if panels["time", shape][0] or panels["memory", shape][0]]
    if not shapes:
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tallest = max(len(panels[kind, shape][0]) for kind in ("time", "memory") for shape in shapes)
    fig, axes = plt.subplots(
        2, len(shapes), figsize=(3.6 * len(shapes), 1.2 + 0.5 * tallest), squeeze=False, constrained_layout=True
    )
    for column, shape in enumerate(shapes):
        for row, kind in enumerate(("time", "memory")):
            data, label = panels[kind, shape]
            _panel(axes[row][column], data, f"{shape}: {label}")
    fig.suptitle(f"sympformer against the DESIGN.md targets ({device}; tick: target; green within, red above)")
    save_figure(fig, out)
    plt.close(fig)
    return sum(1 for data, _ in panels.values() if data)


def _panel(ax, data: list[Bar], title: str) -> None:
    ax.set_title(title, fontsize=9)
    if not data:
        ax.text(0.5, 0.5, "no figures", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    positions = range(len(data))
    colours = ["0.7" if b.target is None else ("tab:green" if b.ratio <= b.target else "tab:red") for b in data]
    ax.barh(positions, [b.ratio for b in data], color=colours)
    for y, b in zip(positions, data, strict=True):
        ax.text(b.ratio, y, f" {b.ratio:.2f}", va="center", fontsize=7)
        if b.target is not None:
            ax.plot([b.target, b.target], [y - 0.45, y + 0.45], color="black", linewidth=1.5)
    ax.axvline(1.0, color="0.4", linewidth=0.8, linestyle=":")
    ax.set_yticks(list(positions), [b.arch for b in data], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.18 * max(max(b.ratio for b in data), max((b.target or 0) for b in data)))
    ax.tick_params(axis="x", labelsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--out", default=None, help="default: results-<device>.png beside RESULTS.md")
    args = parser.parse_args()
    results = Path(args.results)
    out = Path(args.out) if args.out else results.with_name(f"results-{args.device}.png")
    drawn = plot(results, args.device, out)
    if not drawn:
        raise SystemExit(f"{results} has no {args.device} step-time or memory sections to plot")
    print(f"{out}: {drawn} panels")


if __name__ == "__main__":
    main()
