r"""The quadratic positive control (notes §4.2): a convex, bounded-below setting in which the
accelerated flow must beat the classical one.

    potential   W(X) = ½ Σ_i x_iᵀ H x_i,   H = diag(μ, L)  (condition number κ = L/μ)
    geometry    softmax co-metric with A = ε I, B = I: K_i(X) = I / z_i(X)
    classical   ẋ_i = −∇w(x_i) / z_i
    accelerated H(X, Y) = ½ Σ_i |y_i|² / z_i + W(X), constant damping α = 2√μ, Y₀ = 0
    start       x_i = (0.5 g_i1, 0.5 √(μ/L) g_i2), g ~ N(0, I), N = 16 particles in d = 2

With ε = 0 both flows are linear with closed forms (used by the tests); with ε > 0 the metric term
couples the particles. The relative gap W(X_t) / W(X_0) is the convergence measure (min W = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sympformer.integrators.damping import Damping
from sympformer.particles.potentials import QuadraticPotential
from sympformer.particles.softmax import AcceleratedSoftmaxSystem, ClassicalSoftmaxFlow, SoftmaxGeometry


@dataclass(frozen=True)
class QuadraticControl:
    mu: float = 0.01
    L: float = 1.0
    eps: float = 0.05
    n_particles: int = 16
    dense: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.mu <= self.L:
            raise ValueError(f"the control needs 0 < mu <= L (got mu={self.mu}, L={self.L})")
        if self.eps < 0:
            raise ValueError(f"eps must be non-negative (got {self.eps})")
        if self.n_particles < 1:
            raise ValueError(f"n_particles must be positive (got {self.n_particles})")

    @property
    def kappa(self) -> float:
        return self.L / self.mu

    def potential(self, dtype=torch.float64, device=None) -> QuadraticPotential:
        return QuadraticPotential(torch.diag(torch.tensor([self.mu, self.L], dtype=dtype, device=device)))

    def geometry(self, dtype=torch.float64, device=None) -> SoftmaxGeometry:
        eye = torch.eye(2, dtype=dtype, device=device)
        return SoftmaxGeometry(self.eps * eye, eye)

    def classical(self, dtype=torch.float64, device=None) -> ClassicalSoftmaxFlow:
        return ClassicalSoftmaxFlow(self.geometry(dtype, device), self.potential(dtype, device), dense=self.dense)

    def accelerated(self, dtype=torch.float64, device=None) -> AcceleratedSoftmaxSystem:
        return AcceleratedSoftmaxSystem(self.geometry(dtype, device), self.potential(dtype, device), dense=self.dense)

    def damping(self) -> Damping:
        """Constant friction α = 2√μ (critical damping of the slowest mode)."""
        return Damping("constant", alpha=2 * math.sqrt(self.mu), t0=0.0)

    def initial_positions(self, seed: int, dtype=torch.float64, device=None) -> Tensor:
        g = torch.randn(self.n_particles, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        return torch.stack([0.5 * g[:, 0], 0.5 * math.sqrt(self.mu / self.L) * g[:, 1]], dim=-1).to(device)

    def relative_gap(self, x: Tensor, x0: Tensor) -> Tensor:
        """W(X) / W(X₀)."""
        potential = self.potential(x.dtype, x.device)
        return potential.value(x) / potential.value(x0)
