r"""`particles svgd`: linear attention is the Stein variational flow of a potential energy.

ẋ_i = (1/N) Σ_j (x_iᵀ A x_j) V x_j (linear attention) and ẋ_i = −(1/N) Σ_j k(x_i, x_j) ∇U(x_j) with the
bilinear kernel k(x, y) = xᵀ A y and U(x) = −½ xᵀ V x (the Stein flow of ∫U dρ, no repulsion) are
integrated from the same start with RK4; their trajectories coincide to rounding. For contrast, the
SVGD flow of KL(ρ‖e^{−U}) with the same kernel adds the repulsion (1/N) Σ_j ∇_{x_j} k(x_i, x_j) = Aᵀ x_i
and moves differently.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sympformer.integrators import get_flow_scheme, integrate_flow, mesh
from sympformer.particles.experiments.common import output_dir, pyplot, write_csv
from sympformer.particles.linear import LinearAttention
from sympformer.particles.stein import BilinearKernel, stein_potential_flow, svgd_flow
from sympformer.utils import atomic_write_text, save_figure


def run(
    out: str | Path, n: int = 12, steps: int = 300, seed: int = 0, device: str = "cpu", progress: bool = True
) -> dict:
    out = output_dir(out)
    f64 = dict(dtype=torch.float64, device=device)
    A = torch.tensor([[0.5, 0.1], [0.1, 0.3]], **f64)
    V = -torch.tensor([[1.0, 0.2], [0.2, 0.5]], **f64)
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
    x0 = x0 + torch.tensor([1.0, 0.5], **f64)
    linear = LinearAttention(A, V)
    potential = linear.potential()
    flows = {
        "linear attention": linear.classical,
        "Stein flow of U (bilinear kernel)": stein_potential_flow(BilinearKernel(A), potential),
        "SVGD of KL (bilinear kernel, with repulsion)": svgd_flow(BilinearKernel(A), potential),
    }
    times = mesh(0.0, 6.0, steps)
    rk4 = get_flow_scheme("rk4")
    paths = {
        name: torch.stack(integrate_flow(rk4, flow, x0, times, record=True).x).cpu() for name, flow in flows.items()
    }
    x0 = x0.cpu()
    names = list(flows)
    deviation = (paths[names[0]] - paths[names[1]]).abs().amax(dim=(1, 2))
    contrast = (paths[names[0]] - paths[names[2]]).abs().amax(dim=(1, 2))
    write_csv(
        out / "svgd.csv",
        [
            {"t": t, "max_deviation_stein": d.item(), "max_deviation_svgd_kl": c.item()}
            for t, d, c in zip(times, deviation, contrast, strict=True)
        ],
    )
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    styles = {
        names[0]: dict(color="C0", lw=2.5, alpha=0.5),
        names[1]: dict(color="k", lw=0.8, ls="--"),
        names[2]: dict(color="C3", lw=0.8),
    }
    for name, path in paths.items():
        for i in range(n):
            axes[0].plot(path[:, i, 0], path[:, i, 1], label=name if i == 0 else None, **styles[name])
    axes[0].scatter(x0[:, 0], x0[:, 1], s=12, color="k", zorder=3, label="start")
    axes[0].set_title("trajectories (linear attention and the Stein flow overlap)", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[0].set_aspect("equal", "datalim")
    axes[1].semilogy(times, deviation.clamp_min(1e-17), label="linear attention − Stein flow of U")
    axes[1].semilogy(times, contrast.clamp_min(1e-17), label="linear attention − SVGD of KL")
    axes[1].set_xlabel("t")
    axes[1].set_ylabel("max |difference|")
    axes[1].grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "svgd.png")
    plt.close(fig)
    text = (
        f"# Linear attention = Stein variational flow\n\n{__doc__.split(chr(10) * 2, 1)[1].strip()}\n\n"
        f"Maximum deviation over the run: {deviation.max().item():.2e} (Stein flow of U), "
        f"{contrast.max().item():.2e} (SVGD of KL, a different flow).\n\n![trajectories](svgd.png)\n"
    )
    atomic_write_text(out / "svgd.md", text)
    return {"max_deviation": deviation.max().item(), "svgd_contrast": contrast.max().item(), "markdown": text}
