r"""Comparison reports from run folders: tables, paired statistics, plots.

Layout read: DIR/runs/<arch>-s<seed>/{summary.json, metrics.csv, dynamics.csv, config.json}. Every
number in the report is computed from those files; `sympformer report DIR` rebuilds it at any time.

Per architecture: final validation NLL (the final checkpoint, not the best), mean (sample SD) over
seeds, parameters, median step time, tokens/s, attention evaluations per token. Against the
reference architecture: paired differences (same seed = same data order and shared initial weights)
with two-sided paired t-tests, 95 % intervals and Holm's correction over the family; loss at equal
tokens and at equal wall-clock; learned per-layer dynamics. Worse results are reported as plainly as
better ones.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sympformer.analysis.stats import holm, mean_sd, paired_t_test
from sympformer.utils import atomic_write_text, markdown_table, save_figure

ALPHA = 0.05


@dataclass
class Run:
    arch: str
    seed: int
    path: Path
    summary: dict
    metrics: list[dict] = field(default_factory=list)
    dynamics: list[dict] = field(default_factory=list)

    def val_curve(self) -> list[tuple[int, float, float]]:
        """(tokens, wall seconds, val loss) at every evaluation."""
        return [
            (int(r["tokens"]), float(r["wall_s"] or 0.0), float(r["val_loss"]))
            for r in self.metrics
            if r.get("val_loss")
        ]


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def collect_runs(directory: str | Path) -> list[Run]:
    """Finished runs (with summary.json) under DIR/runs/."""
    runs = []
    for summary_path in sorted(Path(directory).glob("runs/*/summary.json")):
        folder = summary_path.parent
        summary = json.loads(summary_path.read_text())
        runs.append(
            Run(
                summary["arch"],
                int(summary["seed"]),
                folder,
                summary,
                _read_csv(folder / "metrics.csv"),
                _read_csv(folder / "dynamics.csv"),
            )
        )
    return runs


def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    points = sorted(points)
    if not points or x < points[0][0] or x > points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def paired_family(by_arch: dict, archs: list[str], reference: str) -> list[dict]:
    """Paired t-tests of every architecture against ``reference`` over their common seeds, with Holm's
    correction over this family of comparisons."""
    comparisons = []
    for arch in archs:
        if arch == reference:
            continue
        common = sorted(set(by_arch[arch]) & set(by_arch[reference]))
        entry = {"arch": arch, "reference": reference, "pairs": len(common)}
        if len(common) >= 2:
            a = [by_arch[arch][s].summary["final_val_loss"] for s in common]
            b = [by_arch[reference][s].summary["final_val_loss"] for s in common]
            test = paired_t_test(a, b)
            entry.update(
                mean_difference=test.mean_difference,
                ci_low=test.ci_low,
                ci_high=test.ci_high,
                t=test.t,
                df=test.df,
                p=test.p,
                wins=sum(x < y for x, y in zip(a, b, strict=True)),
            )
        comparisons.append(entry)
    tested = [c for c in comparisons if "p" in c]
    for entry, adjusted in zip(tested, holm([c["p"] for c in tested]), strict=True):
        entry["p_holm"] = adjusted
        if adjusted < ALPHA:
            entry["verdict"] = "better" if entry["mean_difference"] < 0 else "WORSE"
        else:
            entry["verdict"] = "no significant difference"
    return comparisons


def analyse(runs: list[Run], reference: str, order: list[str] | None = None) -> dict:
    """All numbers of the report as a JSON-ready dict."""
    by_arch: dict[str, dict[int, Run]] = defaultdict(dict)
    for run in runs:
        by_arch[run.arch][run.seed] = run
    archs = [a for a in (order or sorted(by_arch)) if a in by_arch]
    if reference not in by_arch:
        raise ValueError(f"the reference architecture {reference!r} has no finished run; present: {', '.join(archs)}")
    table = {}
    for arch in archs:
        seeds = by_arch[arch]
        losses = [seeds[s].summary["final_val_loss"] for s in sorted(seeds)]
        mean, sd = mean_sd(losses)
        first = next(iter(seeds.values())).summary
        step_times = [r.summary["step_time_s_median"] for r in seeds.values() if r.summary.get("step_time_s_median")]
        table[arch] = {
            "seeds": sorted(seeds),
            "final_val_loss": losses,
            "mean": mean,
            "sd": sd,
            "parameters": first["parameters"],
            "step_time_s": sum(step_times) / len(step_times) if step_times else None,
            "tokens_per_s": sum(r.summary["tokens_per_s"] for r in seeds.values()) / len(seeds),
            "attention_calls_per_token": first.get("attention_calls_per_token"),
            "tokens": first["tokens"],
            "wall_time_s": sum(r.summary["wall_time_s"] for r in seeds.values()) / len(seeds),
        }
    comparisons = paired_family(by_arch, archs, reference)
    # the parameter-matched control is the fair reference for the momentum architectures
    control = (
        paired_family(by_arch, [a for a in archs if a != "B"], "B_cap")
        if ("B_cap" in archs and reference != "B_cap")
        else []
    )
    # equal tokens: the validation points shared by all runs
    token_marks = sorted(set.intersection(*[{t for t, _, _ in r.val_curve()} for r in runs])) if runs else []
    marks = [m for m in token_marks if m > 0]
    picks = sorted({marks[len(marks) // 4], marks[len(marks) // 2], marks[-1]}) if marks else []
    equal_tokens = {
        arch: {
            str(m): mean_sd([next(v for t, _, v in r.val_curve() if t == m) for r in by_arch[arch].values()])[0]
            for m in picks
        }
        for arch in archs
    }
    # every run has a value at the shortest run's last evaluation
    budget = min(r.val_curve()[-1][1] for r in runs if r.arch in archs)
    equal_wall = {}
    for arch in archs:
        values = [_interpolate([(w, v) for _, w, v in r.val_curve()], budget) for r in by_arch[arch].values()]
        values = [v for v in values if v is not None]
        equal_wall[arch] = sum(values) / len(values) if values else None
    return {
        "reference": reference,
        "archs": archs,
        "table": table,
        "comparisons": comparisons,
        "control_comparisons": control,
        "equal_tokens": equal_tokens,
        "equal_wall_clock": {"seconds": budget, "val_loss": equal_wall},
    }


def _comparison_section(comparisons: list[dict], ref: str, note: str) -> list[str]:
    rows = []
    for c in comparisons:
        if "p" not in c:
            rows.append([c["arch"], "—", "—", "—", "—", "—", f"{c['pairs']} pair(s): too few for a test"])
            continue
        rows.append(
            [
                c["arch"],
                f"{c['mean_difference']:+.4f}",
                f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]",
                f"{c['p']:.3g}",
                f"{c['p_holm']:.3g}",
                f"{c['wins']}/{c['pairs']}",
                c["verdict"],
            ]
        )
    tested = len([r for r in rows if r[3] != "—"])
    return [
        f"## Paired differences against {ref} (arch − {ref}; negative = lower loss)",
        "",
        *([note, ""] if note else []),
        "Two-sided paired t-tests over seeds (same seed = same data order and initial weights), 95 % "
        f'intervals, Holm correction over the {tested} comparisons, α = {ALPHA}. "WORSE" marks an adverse result.',
        "",
        markdown_table(["arch", "mean Δ NLL", "95 % CI", "p", "p (Holm)", "wins", "verdict"], rows),
        "",
    ]


def _fmt(value, spec=".4f") -> str:
    return "—" if value is None else format(value, spec)


def render_markdown(result: dict, title: str, context: str = "") -> str:
    ref = result["reference"]
    lines = [f"# {title}", ""]
    if context:
        lines += [context, ""]
    rows = []
    for arch in result["archs"]:
        row = result["table"][arch]
        rows.append(
            [
                arch,
                f"{row['mean']:.4f} ({row['sd']:.4f})",
                len(row["seeds"]),
                f"{row['parameters']:,}",
                _fmt(row["step_time_s"] and row["step_time_s"] * 1e3, ".1f"),
                f"{row['tokens_per_s']:,.0f}",
                row["attention_calls_per_token"],
            ]
        )
    lines += [
        "## Final validation NLL (final checkpoint)",
        "",
        markdown_table(
            ["arch", "val NLL mean (SD)", "seeds", "parameters", "ms / step", "tokens / s", "attention calls / token"],
            rows,
        ),
        "",
    ]
    lines += _comparison_section(result["comparisons"], ref, "")
    if result.get("control_comparisons"):
        lines += _comparison_section(
            result["control_comparisons"],
            "B_cap",
            "B_cap is B with the momentum models' extra embedding table and no momentum: the difference "
            "against it is what momentum adds at equal parameters (up to the few hundred block scalars).",
        )
    marks = sorted({m for v in result["equal_tokens"].values() for m in v}, key=int)
    rows = [[arch, *[_fmt(result["equal_tokens"][arch].get(m)) for m in marks]] for arch in result["archs"]]
    lines += [
        "## Validation NLL at equal tokens (mean over seeds)",
        "",
        markdown_table(["arch", *[f"{int(m):,} tokens" for m in marks]], rows),
        "",
    ]
    wall = result["equal_wall_clock"]
    rows = [[arch, _fmt(wall["val_loss"][arch])] for arch in result["archs"]]
    lines += [
        f"## Validation NLL at equal wall-clock ({wall['seconds']:.1f} s of training, the shortest run)",
        "",
        markdown_table(["arch", "val NLL (interpolated between evaluations)"], rows),
        "",
        "![loss against tokens](loss_vs_tokens.png)",
        "",
        "![loss against wall-clock](loss_vs_wall.png)",
        "",
        "![learned dynamics](dynamics.png)",
        "",
    ]
    return "\n".join(lines)


def _plots(runs: list[Run], result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {arch: f"C{i}" for i, arch in enumerate(result["archs"])}
    for index, label, name in (
        (0, "tokens", "loss_vs_tokens.png"),
        (1, "training wall-clock (s)", "loss_vs_wall.png"),
    ):
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for run in runs:
            curve = [(p[index], p[2]) for p in run.val_curve() if p[0] > 0]
            if curve:
                first = run.seed == min(r.seed for r in runs if r.arch == run.arch)
                ax.plot(
                    *zip(*curve, strict=True),
                    color=colors[run.arch],
                    alpha=0.8,
                    lw=1.2,
                    label=run.arch if first else None,
                )
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation NLL (nats / token)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_title(f"validation loss against {label} (one line per seed)", fontsize=10)
        fig.tight_layout()
        save_figure(fig, out / name)
        plt.close(fig)
    # learned per-layer dynamics at the end of training, mean over seeds
    finals: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if not run.dynamics:
            continue
        last = max(int(r["step"]) for r in run.dynamics)
        for r in run.dynamics:
            if int(r["step"]) == last:
                finals[(run.arch, r["name"])][int(r["layer"])].append(float(r["value"]))
    names = sorted({name for _, name in finals})
    if not names:
        return
    cols = min(4, len(names))
    rows_n = -(-len(names) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 2.8 * rows_n), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for (arch, scalar), layers in finals.items():
            if scalar == name:
                xs = sorted(layers)
                ax.plot(xs, [sum(layers[x]) / len(layers[x]) for x in xs], "o-", color=colors[arch], label=arch)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("learned scalars at the end of training (mean over seeds)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out / "dynamics.png")
    plt.close(fig)


def build_report(
    directory: str | Path,
    reference: str = "B",
    order: list[str] | None = None,
    title: str = "Architecture comparison",
    context: str = "",
) -> dict:
    """Analyse the finished runs under DIR and write report.md, report.json and the plots there."""
    directory = Path(directory)
    runs = collect_runs(directory)
    if not runs:
        raise ValueError(f"no finished run under {directory}/runs/ (each needs a summary.json)")
    result = analyse(runs, reference, order)
    _plots(runs, result, directory)
    markdown = render_markdown(result, title, context)
    atomic_write_text(directory / "report.md", markdown)
    atomic_write_text(directory / "report.json", json.dumps(result, indent=2) + "\n")
    result["markdown"] = markdown
    return result
