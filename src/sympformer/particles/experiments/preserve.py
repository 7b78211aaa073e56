r"""`particles preserve`: elliptical preservation under accelerated linear attention, with the
oracle-predicted ellipses drawn over the particle clouds, against a counter-example.

Cases (d = 2, N particles, Nesterov friction α = 3/t, RK4 over [1, 4], initial velocities
y₀ = L x₀ + c):
    gaussian   accelerated linear attention from a Gaussian cloud
    t          the same from a heavy-tailed multivariate t cloud (ν = 3)
    softmax    accelerated softmax attention from the Gaussian cloud: NOT an affine flow, the shape
               is not kept (the counter-example)
For the linear cases the matrix-ODE oracle (the same scheme on the affine representation, notes §3.3)
predicts the law at every time: mean P m₀ + r and scatter P Σ₀ Pᵀ; the error is the largest distance
between the particles and their predicted positions. The affine residual (best affine map from the
start, no oracle needed) measures preservation for any flow.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sympformer.integrators import Damping, get_scheme, integrate, mesh
from sympformer.particles.elliptical import (
    affine_fit,
    affine_residual,
    ellipse_outline,
    predicted_law,
    sample_elliptical,
    sample_mean,
    sample_scatter,
)
from sympformer.particles.experiments.common import output_dir, pyplot, write_csv
from sympformer.particles.linear import LinearAttention, MomentLinearAttention
from sympformer.particles.softmax import AcceleratedSoftmaxSystem, SoftmaxGeometry
from sympformer.utils import atomic_write_text, markdown_table, save_figure


def run(
    out: str | Path,
    n: int = 600,
    steps: int = 240,
    seed: int = 0,
    snapshots: int = 4,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    from tqdm import tqdm

    out = output_dir(out)
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, device=device)
    scatter0 = torch.tensor([[1.0, 0.6], [0.6, 0.8]], **f64)
    mean0 = torch.tensor([0.5, -0.3], **f64)
    clouds = {  # sampled on the CPU (seeded), then moved
        "gaussian": sample_elliptical(n, mean0.cpu(), scatter0.cpu(), "gaussian", generator=g, dtype=torch.float64),
        "t": sample_elliptical(n, mean0.cpu(), scatter0.cpu(), "t", nu=3.0, generator=g, dtype=torch.float64),
    }
    clouds = {name: cloud.to(device) for name, cloud in clouds.items()}
    clouds["softmax"] = clouds["gaussian"]
    A = torch.tensor([[0.3, 0.05], [0.05, 0.2]], **f64)
    V = -torch.tensor([[1.0, 0.3], [0.3, 0.6]], **f64)
    L = torch.tensor([[0.0, 0.4], [-0.4, 0.0]], **f64)
    c = torch.tensor([0.2, 0.0], **f64)
    damping = Damping("log", c_log=3.0, t0=1.0)
    times = mesh(1.0, 4.0, steps)
    rk4 = get_scheme("rk4")
    linear = LinearAttention(A, V)
    softmax = AcceleratedSoftmaxSystem(SoftmaxGeometry(A, torch.eye(2, **f64)), dense=True)
    rows, runs = [], {}
    for case in tqdm(clouds, desc="preserve", disable=None if progress else True):  # None: no bar off a terminal
        x0 = clouds[case].to(device)
        y0 = x0 @ L.T + c
        system = softmax if case == "softmax" else linear
        particles = integrate(rk4, system, x0, y0, times, damping, record=True)
        representation = None
        if case != "softmax":
            moments = MomentLinearAttention(A, V, MomentLinearAttention.augmented_moment(x0))
            representation = integrate(
                rk4,
                moments,
                MomentLinearAttention.identity_representation(2, **f64),
                MomentLinearAttention.affine_representation(L, c),
                times,
                damping,
                record=True,
            )
        for k in range(0, len(times), max(1, steps // 60)):
            xt = particles.x[k]
            row = {
                "case": case,
                "t": times[k],
                "affine_residual": affine_residual(x0, xt) if k else 0.0,
                "oracle_error": None,
            }
            if representation is not None:
                predicted = MomentLinearAttention.particles(x0, representation.x[k])
                row["oracle_error"] = ((xt - predicted).abs().max() / xt.abs().max()).item()
            rows.append(row)
        runs[case] = (particles, representation)
    write_csv(out / "preserve.csv", rows)
    worst = {case: max((r["oracle_error"] or 0.0) for r in rows if r["case"] == case) for case in clouds}
    residual = {case: max(r["affine_residual"] for r in rows if r["case"] == case) for case in clouds}
    _plot(runs, clouds, times, snapshots, rows, out / "preserve.png")
    table = markdown_table(
        ["case", "max error vs matrix-ODE oracle", "max affine residual", "elliptical law kept"],
        [
            [
                case,
                f"{worst[case]:.1e}" if case != "softmax" else "— (no oracle)",
                f"{residual[case]:.1e}",
                "yes" if residual[case] < 1e-10 else "no",
            ]
            for case in clouds
        ],
    )
    text = "# Elliptical preservation\n\n" + __doc__.split("\n\n", 1)[1].strip() + "\n\n" + table + "\n\n"
    text += "![clouds and predicted ellipses](preserve.png)\n"
    atomic_write_text(out / "preserve.md", text)
    return {"oracle_error": worst, "affine_residual": residual, "markdown": text}


def _plot(runs, clouds, times, snapshots, rows, path: Path) -> None:
    plt = pyplot()
    cases = list(clouds)
    picks = [round(i * (len(times) - 1) / (snapshots - 1)) for i in range(snapshots)]
    fig, axes = plt.subplots(len(cases), snapshots + 1, figsize=(3.1 * (snapshots + 1), 3.0 * len(cases)))
    for r, case in enumerate(cases):
        particles, representation = runs[case]
        x0 = particles.x[0].cpu()
        for col, k in enumerate(picks):
            ax = axes[r, col]
            xt = particles.x[k].cpu()
            ax.scatter(xt[:, 0], xt[:, 1], s=3, alpha=0.5, color="C0" if case != "softmax" else "C3")
            if representation is not None:  # the oracle's prediction of the law
                mean, scatter = predicted_law(representation.x[k].cpu(), sample_mean(x0), sample_scatter(x0))
                label = "oracle 2σ ellipse"
            else:  # the law an affine (shape-keeping) flow would have given, fitted to the cloud
                P, shift = affine_fit(x0, xt)
                mean, scatter = P @ sample_mean(x0) + shift, P @ sample_scatter(x0) @ P.T
                label = "best affine image"
            outline = ellipse_outline(mean, scatter)
            ax.plot(outline[:, 0], outline[:, 1], "k-", lw=1.2, label=label)
            ax.set_title(f"{case}, t = {times[k]:.2f}", fontsize=9)
            ax.set_aspect("equal", "datalim")
            if col == 0:
                ax.legend(fontsize=7, loc="lower left")
        ax = axes[r, -1]
        ts = [row["t"] for row in rows if row["case"] == case][1:]
        ax.semilogy(
            ts, [max(row["affine_residual"], 1e-17) for row in rows if row["case"] == case][1:], label="affine residual"
        )
        if representation is not None:
            ax.semilogy(
                ts,
                [max(row["oracle_error"], 1e-17) for row in rows if row["case"] == case][1:],
                label="error vs oracle",
            )
        ax.set_ylim(1e-17, 1)
        ax.set_title("preservation error", fontsize=9)
        ax.set_xlabel("t")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
