r"""Elliptically contoured laws: sampling, mean and scatter estimates, and preservation checks.

x = m + Σ^{1/2} r u, u uniform on the sphere S^{d−1} and r ≥ 0 from the radial law (the density
generator). Gaussian: r² ~ χ²_d. Multivariate t with ν degrees of freedom: x = m + Σ^{1/2} g √(ν/w),
g ~ N(0, I), w ~ χ²_ν. Any radial law: pass a function (n, generator) ↦ radii.

An affine map x ↦ P x + r sends an elliptical law (m, Σ, g) to (P m + r, P Σ Pᵀ, g): linear attention
flows and all the schemes preserve the family because each step is affine in the particles given the
moments (notes §3.2). :func:`affine_residual` tests that for any flow without knowing its equations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _custom_radii(law, n: int, generator, dtype) -> Tensor:
    if not callable(law):
        raise ValueError(f"unknown radial law {law!r}; use 'gaussian', 't' or a function (n, generator) -> radii")
    radii = torch.as_tensor(law(n, generator), dtype=dtype)
    if radii.shape != (n,) or bool((radii < 0).any()):
        raise ValueError("a radial law must return n non-negative radii")
    return radii


def sample_elliptical(
    n: int,
    mean,
    scatter,
    radial: str | Callable = "gaussian",
    nu: float = 5.0,
    generator: torch.Generator | None = None,
    dtype=None,
) -> Tensor:
    """n samples (n, d) of the elliptical law with location ``mean``, scatter ``scatter`` and ``radial``."""
    dtype = dtype or torch.get_default_dtype()
    mean = torch.as_tensor(mean, dtype=dtype)
    scatter = torch.as_tensor(scatter, dtype=dtype)
    d = mean.shape[0]
    if scatter.shape != (d, d):
        raise ValueError(f"scatter must be ({d}, {d}) to match the mean, got {tuple(scatter.shape)}")
    root = torch.linalg.cholesky(scatter)
    g = torch.randn(n, d, generator=generator, dtype=dtype)
    if radial == "gaussian":
        directions = g
    elif radial == "t":
        if not nu > 0:
            raise ValueError(f"the t law needs nu > 0 (got {nu})")
        w = 2 * torch._standard_gamma(torch.full((n,), nu / 2, dtype=dtype), generator=generator)  # χ²_ν
        directions = g * torch.sqrt(nu / w).unsqueeze(-1)
    else:
        u = g / g.norm(dim=-1, keepdim=True)
        directions = u * _custom_radii(radial, n, generator, dtype).unsqueeze(-1)
    return mean + directions @ root.mT


def sample_mean(x: Tensor) -> Tensor:
    return x.mean(-2)


def sample_scatter(x: Tensor, radial_second_moment: float | None = None) -> Tensor:
    """The sample covariance, divided by E[r²]/d when the radial law's E[r²] is given (then it
    estimates the scatter Σ itself: Cov = (E[r²]/d) Σ)."""
    centred = x - x.mean(-2, keepdim=True)
    cov = centred.mT @ centred / (x.shape[-2] - 1)
    if radial_second_moment is not None:
        cov = cov * x.shape[-1] / radial_second_moment
    return cov


def tyler_scatter(x: Tensor, center: Tensor | None = None, iterations: int = 200, tol: float = 1e-12) -> Tensor:
    """Tyler's M-estimator of the scatter shape (trace d), robust to the radial law (heavy tails)."""
    n, d = x.shape[-2:]
    u = x - (x.mean(-2) if center is None else center)
    shape = torch.eye(d, dtype=x.dtype)
    for _ in range(iterations):
        weights = 1.0 / (u @ torch.linalg.inv(shape) * u).sum(-1)
        new = d / n * (u * weights.unsqueeze(-1)).mT @ u
        new = new * d / torch.trace(new)
        if (new - shape).abs().max() < tol:
            return new
        shape = new
    return shape


def affine_fit(x0: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares affine map with xt ≈ x0 Pᵀ + r: returns (P, r)."""
    z = torch.cat([x0, x0.new_ones(x0.shape[-2], 1)], dim=-1)
    solution = torch.linalg.lstsq(z, xt).solution
    return solution[:-1].mT, solution[-1]


def affine_residual(x0: Tensor, xt: Tensor) -> float:
    """max |xt − (x0 Pᵀ + r)| / max |xt| for the best affine map: ~1e-15 when the flow moved the
    cloud by an affine map (so every elliptical law stays elliptical), O(1) otherwise."""
    P, r = affine_fit(x0, xt)
    return ((xt - (x0 @ P.mT + r)).abs().max() / xt.abs().max()).item()


def predicted_law(representation: Tensor, mean0: Tensor, scatter0: Tensor) -> tuple[Tensor, Tensor]:
    """(m_t, Σ_t) = (P m₀ + r, P Σ₀ Pᵀ) for an affine representation R = [Pᵀ; rᵀ]."""
    P, r = representation[:-1].mT, representation[-1]
    return P @ mean0 + r, P @ scatter0 @ P.mT


def ellipse_outline(mean: Tensor, scatter: Tensor, radius: float = 2.0, points: int = 200) -> Tensor:
    """Points (points, 2) on {m + radius Σ^{1/2} u : |u| = 1} for a 2-D law (for plots)."""
    angles = torch.linspace(0, 2 * torch.pi, points, dtype=scatter.dtype)
    circle = torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    return mean + radius * circle @ torch.linalg.cholesky(scatter).mT
