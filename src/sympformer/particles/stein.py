r"""Stein variational gradient flows with a general kernel (empirical-measure convention).

    potential energy:  ẋ_i = −(1/N) Σ_j k(x_i, x_j) ∇U(x_j)
    KL(ρ‖π), π ∝ e^{−U} (SVGD):  ẋ_i = (1/N) Σ_j [ −k(x_i, x_j) ∇U(x_j) + ∇_{x_j} k(x_i, x_j) ]

The second term repels particles (it is the entropy's contribution); the potential-energy flow has
none. With the bilinear kernel k(x, y) = xᵀ A y and U(x) = −½ xᵀ V x the potential-energy flow is
classical linear attention (notes §1.3). Both flows form the N×N kernel matrix (reference scale).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sympformer.particles.validation import as_matrix, check_particles


class BilinearKernel:
    """k(x, y) = xᵀ A y."""

    def __init__(self, A) -> None:
        self.A = as_matrix("A", A)

    def matrix(self, x: Tensor) -> Tensor:
        return x @ self.A @ x.mT

    def mean_grad_second(self, x: Tensor) -> Tensor:
        """(1/N) Σ_j ∇_{x_j} k(x_i, x_j) = Aᵀ x_i."""
        return x @ self.A


class RBFKernel:
    """k(x, y) = exp(−‖x − y‖² / (2 ℓ²)) with bandwidth ℓ."""

    def __init__(self, bandwidth: float = 1.0) -> None:
        if not bandwidth > 0:
            raise ValueError(f"the RBF bandwidth must be positive (got {bandwidth})")
        self.bandwidth = float(bandwidth)

    def matrix(self, x: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(x, x).square() / (2 * self.bandwidth**2))

    def mean_grad_second(self, x: Tensor) -> Tensor:
        """(1/N) Σ_j k(x_i, x_j) (x_i − x_j) / ℓ²."""
        k = self.matrix(x)
        return (k.sum(-1, keepdim=True) * x - k @ x) / (x.shape[-2] * self.bandwidth**2)


class SteinFlow:
    """A Stein variational gradient flow as a first-order field X ↦ Ẋ (module docstring)."""

    def __init__(self, kernel, potential, repulsion: bool) -> None:
        self.kernel, self.potential, self.repulsion = kernel, potential, repulsion

    def __call__(self, x: Tensor) -> Tensor:
        check_particles("X", x, self.potential.dim)
        drift = -self.kernel.matrix(x) @ self.potential.grad(x) / x.shape[-2]
        if self.repulsion:
            drift = drift + self.kernel.mean_grad_second(x)
        return drift


def stein_potential_flow(kernel, potential) -> SteinFlow:
    """The Stein flow of the potential energy ∫ U dρ (no repulsion term)."""
    return SteinFlow(kernel, potential, repulsion=False)


def svgd_flow(kernel, potential) -> SteinFlow:
    """The Stein flow of KL(ρ ‖ e^{−U}/Z): SVGD, with the repulsive ∇k term."""
    return SteinFlow(kernel, potential, repulsion=True)
