r"""`particles animate`: classical and accelerated particles side by side, as a GIF (Pillow writer).

The quadratic positive control (κ = 100, ε = 0.2, N = 16): classical gradient flow with Euler
(h = 1) on the left, the accelerated flow with kick–drift (h = 1, α = 2√μ) on the right, one frame per
oracle call, with the particles' recent trails and the relative gap in the titles.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sympformer.integrators import get_flow_scheme, get_scheme
from sympformer.particles.control import QuadraticControl
from sympformer.particles.experiments.common import output_dir, pyplot, write_csv
from sympformer.utils import atomic_write_text


def run(
    out: str | Path,
    calls: int = 120,
    kappa: float = 100.0,
    seed: int = 31001,
    fps: int = 15,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    from matplotlib.animation import FuncAnimation, PillowWriter
    from tqdm import tqdm

    out = output_dir(out)
    control = QuadraticControl(mu=1.0 / kappa, eps=0.2, dense=True)
    x0 = control.initial_positions(seed, device=device)
    classical_flow, accelerated_system = control.classical(device=device), control.accelerated(device=device)
    classical, accelerated = [x0], [x0]
    x, y, p, memory, t = x0, x0, torch.zeros_like(x0), None, 0.0
    euler, kick_drift = get_flow_scheme("euler"), get_scheme("kick_drift")
    for _ in range(calls):
        x = euler.step(classical_flow, x, 1.0)
        y, p, memory = kick_drift.step(accelerated_system, y, p, t, 1.0, control.damping(), memory)
        t += 1.0
        classical.append(x)
        accelerated.append(y)
    gaps = [
        (control.relative_gap(a, x0).item(), control.relative_gap(b, x0).item())
        for a, b in zip(classical, accelerated, strict=True)
    ]
    write_csv(
        out / "animate.csv",
        [{"oracle_calls": k, "gap_classical": a, "gap_accelerated": b} for k, (a, b) in enumerate(gaps)],
    )
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    limit = 1.1 * x0.abs().max().item()
    artists = []
    for ax, name in zip(axes, ("classical (Euler)", "accelerated (kick–drift)"), strict=True):
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit * 0.35, limit * 0.35)
        ax.set_xlabel("x₁ (slow direction, μ)")
        ax.set_ylabel("x₂ (fast, L)")
        ax.grid(alpha=0.3)
        trail = [ax.plot([], [], "-", color="C0", alpha=0.3, lw=0.8)[0] for _ in range(x0.shape[0])]
        points = ax.scatter(x0[:, 0], x0[:, 1], s=18, color="C3" if "acc" in name else "C0")
        artists.append((ax, name, trail, points))
    bar = tqdm(total=calls + 1, desc="animate", disable=None if progress else True)

    def frame(k):
        for (ax, name, trail, points), history, gap in zip(artists, (classical, accelerated), gaps[k], strict=True):
            recent = torch.stack(history[max(0, k - 25) : k + 1])
            for i, line in enumerate(trail):
                line.set_data(recent[:, i, 0], recent[:, i, 1])
            points.set_offsets(history[k].numpy())
            ax.set_title(f"{name}\noracle calls {k}, gap {gap:.1e}", fontsize=9)
        bar.update(1)
        return []

    animation = FuncAnimation(fig, frame, frames=calls + 1, blit=False)
    tmp = out / "animate.tmp.gif"
    animation.save(tmp, writer=PillowWriter(fps=fps))
    tmp.replace(out / "animate.gif")
    bar.close()
    plt.close(fig)
    text = (
        f"# Classical vs accelerated particles\n\n{__doc__.split(chr(10) * 2, 1)[1].strip()}\n\n"
        f"After {calls} oracle calls the relative gap is {gaps[-1][0]:.2e} (classical) and "
        f"{gaps[-1][1]:.2e} (accelerated).\n\n![animation](animate.gif)\n"
    )
    atomic_write_text(out / "animate.md", text)
    return {"final_gaps": gaps[-1], "markdown": text}
