r"""External potentials W(X) = Σ_i w(x_i) acting on each particle separately.

The quadratic w(x) = ½ (x − c)ᵀ H (x − c) is the positive control of notes §4.2 (H = diag(μ, L));
with H = −V it is the linear-attention potential U(x) = −½ xᵀ V x of notes §1.3.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sympformer.particles.validation import as_matrix, check_particles, check_symmetric


class QuadraticPotential:
    r"""w(x) = ½ (x − c)ᵀ H (x − c), H symmetric; ``value`` sums over particles, ``grad`` is per particle."""

    def __init__(self, H, center=None) -> None:
        self.H = as_matrix("H", H)
        check_symmetric("H", self.H)
        self.center = None if center is None else self.H.new_tensor(center)
        if self.center is not None and self.center.shape != (self.H.shape[0],):
            raise ValueError(f"center must have shape ({self.H.shape[0]},), got {tuple(self.center.shape)}")

    @property
    def dim(self) -> int:
        return self.H.shape[0]

    def _shifted(self, x: Tensor) -> Tensor:
        check_particles("X", x, self.dim)
        return x if self.center is None else x - self.center

    def value(self, x: Tensor) -> Tensor:
        """W(X) = Σ_i w(x_i) (summed over the particle axis, batch axes kept)."""
        u = self._shifted(x)
        return 0.5 * ((u @ self.H) * u).sum((-1, -2))

    def grad(self, x: Tensor) -> Tensor:
        """∇w(x_i) for every particle: H (x_i − c)."""
        return self._shifted(x) @ self.H

    def minimum(self) -> float:
        """min W (0 when H is positive semi-definite; −∞ otherwise)."""
        return 0.0 if bool(torch.linalg.eigvalsh(self.H).min() >= 0) else float("-inf")
