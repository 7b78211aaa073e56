r"""`particles converge`: the classical flow against the accelerated flow, in oracle calls.

Problems (each convex or bounded below, where "relative gap" has a meaning; notes §8):

quadratic    the positive control of notes §4.2: W = ½ Σ xᵀ diag(μ, 1) x, κ = 1/μ, softmax co-metric
             A = εI, B = I, N = 16, d = 2; constant friction α = 2√μ; gap W / W₀.
linear       linear attention with a convex potential: U = −½ Σ xᵀ V x, V = −diag(1, 1/κ) (negative
             definite), kernel A = I; Nesterov friction α = 3/t; gap U / U₀. The Stein metric
             degenerates as the particles contract (the flow is cubic), so convergence is algebraic.
sphere       the softmax interaction energy U = −½ Σ_i z_i with A = βI on the unit sphere S^{d−1}
             (d = 3, β = 1), the LayerNorm idealisation on which the energy is bounded below by the
             consensus value −½ N e^{β}; gap (U − U*) / (U₀ − U*). Steps are followed by the
             projection of positions onto the sphere and of momenta onto its tangent spaces.

Methods: classical Euler (h = 1/L, gradient descent) and RK4; accelerated kick–drift (h = 1/√L, the
heavy-ball step), variable-step AB2 and RK4. Each method runs all seeds as one batch; the table
gives the oracle calls to reach each gap threshold (mean, min, max over seeds) and the
accelerated/classical ratio against classical Euler.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sympformer.integrators import Damping, get_flow_scheme, get_scheme
from sympformer.particles.control import QuadraticControl
from sympformer.particles.experiments.common import output_dir, pyplot, write_csv
from sympformer.particles.linear import LinearAttention
from sympformer.particles.potentials import QuadraticPotential
from sympformer.particles.softmax import AcceleratedSoftmaxSystem, ClassicalSoftmaxFlow, SoftmaxGeometry
from sympformer.utils import atomic_write_text, markdown_table, save_figure

THRESHOLDS = (1e-2, 1e-3, 1e-4)


@dataclass
class Method:
    name: str
    accelerated: bool
    scheme: str
    step: float


@dataclass
class Problem:
    name: str
    classical: object  # field X ↦ Ẋ
    accelerated: object  # oracle (X, P) ↦ Evaluation
    damping: Damping
    gap: object  # X ↦ relative gap per seed
    x0: torch.Tensor
    methods: list[Method]
    project: object = None  # (X, P) ↦ (X, P) after every step (sphere)
    description: str = ""


def standard_methods(classical_step: float, accelerated_step: float, ab2_step: float | None = None) -> list[Method]:
    """Classical Euler and RK4 against accelerated kick–drift, (AB2) and RK4."""
    methods = [
        Method("classical Euler", False, "euler", classical_step),
        Method("classical RK4", False, "rk4", classical_step),
        Method("accelerated kick-drift", True, "kick_drift", accelerated_step),
    ]
    if ab2_step is not None:
        methods.append(Method("accelerated AB2", True, "ab2", ab2_step))
    return methods + [Method("accelerated RK4", True, "rk4", accelerated_step)]


def quadratic_problem(kappa: float, seeds: list[int], eps: float = 0.05, device="cpu") -> Problem:
    control = QuadraticControl(mu=1.0 / kappa, L=1.0, eps=eps, dense=True)
    x0 = torch.stack([control.initial_positions(s, device=device) for s in seeds])
    potential = control.potential(device=device)
    w0 = potential.value(x0)
    return Problem(
        f"quadratic κ={kappa:g}",
        control.classical(device=device),
        control.accelerated(device=device),
        control.damping(),
        lambda x: potential.value(x) / w0,
        x0,
        standard_methods(1.0, 1.0, ab2_step=0.5),
        description=(
            f"W = ½Σxᵀdiag({1 / kappa:g}, 1)x, A = {eps}·I, B = I, N = 16, α = 2√μ = {2 / math.sqrt(kappa):.3g}"
        ),
    )


def linear_problem(kappa: float, seeds: list[int], device="cpu") -> Problem:
    V = -torch.diag(torch.tensor([1.0, 1.0 / kappa], dtype=torch.float64, device=device))
    system = LinearAttention(torch.eye(2, dtype=torch.float64, device=device), V)
    x0 = torch.stack(
        [torch.randn(16, 2, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
    ).to(device)
    energy = QuadraticPotential(-V)
    u0 = energy.value(x0)
    return Problem(
        f"linear κ={kappa:g}",
        system.classical,
        system,
        Damping("log", c_log=3.0, t0=1.0),
        lambda x: energy.value(x) / u0,
        x0,
        standard_methods(0.5, 0.5),
        description=f"U = −½Σxᵀ V x, V = −diag(1, {1 / kappa:g}), A = I, N = 16, α = 3/t",
    )


def sphere_problem(seeds: list[int], beta: float = 1.0, d: int = 3, device="cpu") -> Problem:
    eye = torch.eye(d, dtype=torch.float64, device=device)
    geometry = SoftmaxGeometry(beta * eye, eye)
    classical_flow = ClassicalSoftmaxFlow(geometry)
    system = AcceleratedSoftmaxSystem(geometry)
    x0 = torch.stack(
        [torch.randn(32, d, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
    ).to(device)
    x0 = x0 / x0.norm(dim=-1, keepdim=True)
    n = x0.shape[-2]
    floor = -0.5 * n * math.exp(beta)
    u0 = classical_flow.energy(x0)

    def tangent(x, v):
        return v - (v * x).sum(-1, keepdim=True) * x

    def project(x, p):
        x = x / x.norm(dim=-1, keepdim=True)
        return x, tangent(x, p)

    return Problem(
        f"sphere β={beta:g}",
        lambda x: tangent(x, classical_flow(x)),
        system,
        Damping("constant", alpha=1.0, t0=0.0),
        lambda x: (classical_flow.energy(x) - floor) / (u0 - floor),
        x0,
        standard_methods(0.5, 0.5),
        project=project,
        description=f"U = −½Σz_i on S^{d - 1}, A = {beta}·I, B = I, N = 32, α = 1, U* = −½Ne^β",
    )


def run_method(problem: Problem, method: Method, max_calls: int, progress=None) -> dict:
    """Integrate until every seed reached the smallest threshold or the call budget is spent."""
    x = problem.x0.clone()
    p = torch.zeros_like(x)
    scheme = get_scheme(method.scheme) if method.accelerated else get_flow_scheme(method.scheme)
    calls, t, memory = 0, problem.damping.t0, None
    trace = [(0, 0.0, problem.gap(x))]
    hits = {thr: torch.full((x.shape[0],), -1, dtype=torch.long) for thr in THRESHOLDS}
    started = time.perf_counter()
    while calls + scheme.calls_per_step <= max_calls:
        if method.accelerated:
            x, p, memory = scheme.step(problem.accelerated, x, p, t, method.step, problem.damping, memory)
        else:
            x = scheme.step(problem.classical, x, method.step)
        if problem.project is not None:
            x, p = problem.project(x, p)
        calls += scheme.calls_per_step
        t += method.step
        gap = problem.gap(x)
        if not bool(torch.isfinite(gap).all()):
            break
        trace.append((calls, time.perf_counter() - started, gap))
        for thr, hit in hits.items():
            hit[(hit < 0) & (gap <= thr)] = calls
        if progress is not None:
            progress.update(scheme.calls_per_step)
        if bool((hits[THRESHOLDS[-1]] >= 0).all()):
            break
    return {"trace": trace, "hits": hits, "wall": time.perf_counter() - started}


def _stats(values: torch.Tensor) -> tuple[float, float, float] | None:
    if bool((values < 0).any()):
        return None
    v = values.double()
    return v.mean().item(), v.min().item(), v.max().item()


def run(
    out: str | Path,
    problems: list[str] = ("quadratic",),
    kappas=(10, 100, 1000),
    seeds=5,
    seed=31001,
    max_calls: int = 20000,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Run the experiment; writes converge.csv, hits.csv, converge_<problem>.png and converge.md."""
    from tqdm import tqdm

    out = output_dir(out)
    seed_list = [seed + i for i in range(seeds)]
    built: list[Problem] = []
    for name in problems:
        if name == "quadratic":
            built += [quadratic_problem(k, seed_list, device=device) for k in kappas]
        elif name == "linear":
            built += [linear_problem(k, seed_list, device=device) for k in kappas]
        elif name == "sphere":
            built.append(sphere_problem(seed_list, device=device))
        else:
            raise ValueError(f"unknown problem {name!r}; valid: quadratic, linear, sphere")
    total = sum(len(p.methods) for p in built) * max_calls
    bar = tqdm(total=total, desc="converge", unit=" call", disable=None if progress else True)
    trace_rows, hit_rows, results = [], [], {}
    for problem in built:
        for method in problem.methods:
            result = run_method(problem, method, max_calls, bar)
            results[(problem.name, method.name)] = result
            for calls, wall, gap in result["trace"][:: max(1, len(result["trace"]) // 400)]:
                trace_rows.append(
                    {
                        "problem": problem.name,
                        "method": method.name,
                        "oracle_calls": calls,
                        "wall_s": wall,
                        "gap_mean": gap.mean().item(),
                        "gap_max": gap.max().item(),
                    }
                )
            for thr, hit in result["hits"].items():
                for s, value in zip(seed_list, hit.tolist(), strict=True):
                    hit_rows.append(
                        {
                            "problem": problem.name,
                            "method": method.name,
                            "threshold": thr,
                            "seed": s,
                            "oracle_calls": value if value >= 0 else None,
                        }
                    )
    bar.close()
    write_csv(out / "converge.csv", trace_rows)
    write_csv(out / "hits.csv", hit_rows)
    summary = _summary(built, results, max_calls)
    atomic_write_text(out / "converge.md", summary["markdown"])
    for problem in built:
        _plot(problem, results, out / f"converge_{_slug(problem.name)}.png")
    return summary


def _slug(name: str) -> str:
    name = name.replace("κ=", "kappa").replace("β=", "beta")
    return "".join(c if (c.isascii() and c.isalnum()) else "_" for c in name).strip("_")


def _summary(problems: list[Problem], results: dict, max_calls: int) -> dict:
    lines = [
        "# Classical vs accelerated flows: oracle calls to reach a relative gap",
        "",
        __doc__.split("Methods:")[0].strip().split("\n\n", 1)[1],
        "",
    ]
    ratios = {}
    for problem in problems:
        lines += [f"## {problem.name}", "", problem.description, ""]
        rows = []
        reference = results[(problem.name, "classical Euler")]["hits"]
        for method in problem.methods:
            hits = results[(problem.name, method.name)]["hits"]
            row = [method.name, f"h = {method.step:g}"]
            for thr in THRESHOLDS:
                stats = _stats(hits[thr])
                row.append("not reached" if stats is None else f"{stats[0]:.0f} ({stats[1]:.0f}–{stats[2]:.0f})")
            stats = _stats(hits[1e-3])
            ref = _stats(reference[1e-3])
            if stats is not None and ref is not None and method.accelerated:
                ratio = hits[1e-3].double() / reference[1e-3].double()
                ratios[(problem.name, method.name)] = (ratio.mean().item(), ratio.min().item(), ratio.max().item())
                row.append(f"{ratio.mean().item():.3f} ({ratio.min().item():.3f}–{ratio.max().item():.3f})")
            else:
                row.append("—")
            rows.append(row)
        lines.append(
            markdown_table(
                ["method", "step", "calls to 1e-2", "calls to 1e-3", "calls to 1e-4", "÷ classical Euler at 1e-3"], rows
            )
        )
        lines.append("")
    lines.append(
        f"Budget: {max_calls} oracle calls per method; mean (min–max) over seeds; "
        '"not reached": some seed did not reach the threshold within the budget.'
    )
    return {"markdown": "\n".join(lines) + "\n", "ratios": ratios}


def _plot(problem: Problem, results: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in problem.methods:
        trace = results[(problem.name, method.name)]["trace"]
        calls = [c for c, _, _ in trace]
        walls = [w for _, w, _ in trace]
        gaps = [g.mean().item() for _, _, g in trace]
        style = "-" if method.accelerated else "--"
        axes[0].plot(calls, gaps, style, label=method.name)
        axes[1].plot(walls, gaps, style, label=method.name)
    for ax, label in zip(axes, ("oracle calls", "wall time (s)"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("relative gap (mean over seeds)")
        ax.grid(alpha=0.3, which="both")
        for thr in THRESHOLDS:
            ax.axhline(thr, color="grey", lw=0.5, ls=":")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{problem.name}: {problem.description}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
