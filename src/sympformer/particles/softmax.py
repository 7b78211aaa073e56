r"""Softmax attention as an interacting particle system (notes §1.1–1.2, §2.1).

Convention (used everywhere in the particle lab). N particles x_1..x_N ∈ R^d stand for the empirical
measure ρ_N = (1/N) Σ_i δ_{x_i}: each particle has mass 1/N and every sum over partners is a mean.

    kernel        M_ij = exp(x_iᵀ A x_j),      A symmetric
    partition     z_i = (1/N) Σ_j M_ij = Z_ρ(x_i),     P_ij = M_ij / (N z_i)  (row softmax)
    energy        U(X) = N·E(ρ_N) = −(1/(2N)) Σ_ij M_ij = −½ Σ_i z_i,  E(ρ) = −½ ∬ e^{xᵀAy} dρ dρ
    co-metric     K_i(X) = B / z_i(X),  B symmetric positive definite,  V = B A

Classical attention is the gradient flow  ẋ_i = Γ_i(X) = Σ_j P_ij V x_j = −(B / z_i) ∇_{x_i} U(X)
(∇_{x_i} U = ∇ δE/δρ (x_i): the Wasserstein gradient of E at particle i).

Accelerated attention is the damped Hamiltonian system of
    H(X, Y) = ½ Σ_i ⟨y_i, B y_i⟩ / z_i(X) + U(X),
    ẋ_i = B y_i / z_i,     ẏ_i = −α(t) y_i + (1/(2N)) Σ_j M_ij (s_i + s_j + 2) A x_j,
with s_i = ⟨y_i, B y_i⟩ / z_i² (the s-terms come from the x-dependence of the metric, the "+2"
from −∇U). Any external potential W may replace U (the quadratic positive control of notes §4.2).

Fast path (default): no N×N matrix; Σ_j P_ij x_j and Σ_j P_ij s_j x_j are SDPA calls and log z_i
comes from :func:`sympformer.softmax_ops.softmax_log_normaliser`. ``dense=True`` selects the explicit
reference that materialises the N×N kernel (for tests and small N).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sympformer.integrators.oracle import Evaluation
from sympformer.particles.validation import (
    as_matrix,
    check_particles,
    check_positive_definite,
    check_same_size,
    check_symmetric,
)
from sympformer.softmax_ops import softmax_average, softmax_log_normaliser


class SoftmaxGeometry:
    """The kernel matrix A (symmetric), the mobility B (symmetric positive definite) and V = B A."""

    def __init__(self, A, B) -> None:
        self.A = as_matrix("A", A)
        self.B = as_matrix("B", B, dtype=self.A.dtype)
        if self.A.shape != self.B.shape:
            raise ValueError(f"A and B must have the same shape, got {tuple(self.A.shape)} and {tuple(self.B.shape)}")
        check_symmetric("A", self.A)
        check_positive_definite("B", self.B)
        self.V = self.B @ self.A

    @property
    def dim(self) -> int:
        return self.A.shape[0]

    def to(self, device=None, dtype=None) -> SoftmaxGeometry:
        return SoftmaxGeometry(self.A.to(device, dtype), self.B.to(device, dtype))

    def scores(self, x: Tensor) -> Tensor:
        """The dense score matrix S_ij = x_iᵀ A x_j (N×N: reference use only)."""
        check_particles("X", x, self.dim)
        return x @ self.A @ x.mT

    def attention(self, x: Tensor, dense: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """(log z_i, m_i = Σ_j P_ij x_j, P or None). Fast path: two SDPA passes, no N×N matrix."""
        check_particles("X", x, self.dim)
        n = x.shape[-2]
        if dense:
            s = self.scores(x)
            P = torch.softmax(s, -1)
            return torch.logsumexp(s, -1) - math.log(n), P @ x, P
        q = x @ self.A  # rows A x_i (A symmetric): q_i · x_j = x_iᵀ A x_j
        m = softmax_average(q, x, x)
        log_z = softmax_log_normaliser(q, x, expected_score=(q * m).sum(-1)) - math.log(n)
        return log_z, m, None

    def log_partition(self, x: Tensor, dense: bool = False) -> Tensor:
        """log z_i, z_i = (1/N) Σ_j exp(x_iᵀ A x_j)."""
        return self.attention(x, dense)[0]

    def weighted_average(self, x: Tensor, weights: Tensor, values: Tensor, P: Tensor | None) -> Tensor:
        """Σ_j P_ij w_j v_j with P from ``attention`` (dense) or one more SDPA call (fast)."""
        weighted = weights.unsqueeze(-1) * values
        if P is not None:
            return P @ weighted
        return softmax_average(x @ self.A, x, weighted)


class ClassicalSoftmaxFlow:
    r"""The classical flow  ẋ_i = −(B / z_i) ∇_{x_i} U(X).

    With the interaction energy (``potential=None``) this is softmax attention,
    Γ_i = Σ_j P_ij V x_j (one SDPA call); with an external potential W (e.g. the quadratic control)
    it is ẋ_i = −B ∇w(x_i) / z_i. Callable as a first-order field X ↦ Ẋ.
    """

    def __init__(self, geometry: SoftmaxGeometry, potential=None, dense: bool = False) -> None:
        self.geometry, self.potential, self.dense = geometry, potential, dense

    def __call__(self, x: Tensor) -> Tensor:
        g = self.geometry
        if self.potential is None:
            if self.dense:
                return torch.softmax(g.scores(x), -1) @ x @ g.V.mT
            check_particles("X", x, g.dim)
            return softmax_average(x @ g.A, x, x) @ g.V.mT
        log_z = g.log_partition(x, self.dense)
        return -(self.potential.grad(x) @ g.B) * torch.exp(-log_z).unsqueeze(-1)

    def energy(self, x: Tensor) -> Tensor:
        """U(X) = −½ Σ_i z_i (interaction) or W(X) (external potential)."""
        if self.potential is None:
            return -0.5 * torch.exp(self.geometry.log_partition(x, self.dense)).sum(-1)
        return self.potential.value(x)


class AcceleratedSoftmaxSystem:
    r"""Damped Hamiltonian system of H(X, Y) = ½ Σ_i ⟨y_i, B y_i⟩ / z_i(X) + U(X) (module docstring).

    Called as an oracle at (X, Y) it returns F = ∂H/∂Y = B y_i / z_i, G = −∂H/∂X and the velocity
    map Y' ↦ B y'_i / z_i. The damping −α(t) Y is added by the integrator.
    """

    def __init__(self, geometry: SoftmaxGeometry, potential=None, dense: bool = False) -> None:
        self.geometry, self.potential, self.dense = geometry, potential, dense

    def __call__(self, x: Tensor, y: Tensor) -> Evaluation:
        g = self.geometry
        check_particles("X", x, g.dim)
        check_same_size(("X", "Y"), x, y)
        log_z, m, P = g.attention(x, self.dense)
        z = torch.exp(log_z).unsqueeze(-1)
        inv_z = torch.exp(-log_z).unsqueeze(-1)
        By = y @ g.B
        yBy = (y * By).sum(-1)
        s = yBy * torch.exp(-2 * log_z)
        # −∂(kinetic)/∂x_i = ½ z_i [ s_i Σ_j P_ij A x_j + Σ_j P_ij s_j A x_j ]
        metric_force = 0.5 * ((yBy.unsqueeze(-1) * inv_z) * (m @ g.A) + z * (g.weighted_average(x, s, x, P) @ g.A))
        if self.potential is None:
            force = metric_force + z * (m @ g.A)  # −∇_{x_i} U = z_i Σ_j P_ij A x_j
        else:
            force = metric_force - self.potential.grad(x)
        return Evaluation(By * inv_z, force, lambda y_new: (y_new @ g.B) * inv_z)

    def kinetic(self, x: Tensor, y: Tensor) -> Tensor:
        log_z = self.geometry.log_partition(x, self.dense)
        return 0.5 * ((y * (y @ self.geometry.B)).sum(-1) * torch.exp(-log_z)).sum(-1)

    def energy(self, x: Tensor) -> Tensor:
        return ClassicalSoftmaxFlow(self.geometry, self.potential, self.dense).energy(x)

    def hamiltonian(self, x: Tensor, y: Tensor) -> Tensor:
        """H(X, Y) = ½ Σ_i ⟨y_i, B y_i⟩ / z_i + U(X)."""
        return self.kinetic(x, y) + self.energy(x)

    def initial_acceleration(self, x: Tensor) -> Tensor:
        """ẍ at Y = 0: B ẏ_i / z_i with ẏ = G(X, 0)."""
        ev = self(x, torch.zeros_like(x))
        return ev.velocity_map(ev.force)
