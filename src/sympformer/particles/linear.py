r"""Linear self-attention as a particle system (notes §1.3, §3.1, §3.3).

Same empirical-measure convention as the softmax lab: every sum over partners is a mean, written
through the moment ("Gram") matrix Gram(a, b) = (1/N) Σ_j a_j b_jᵀ = E[a bᵀ].

Classical:   ẋ_i = (1/N) Σ_j (x_iᵀ A x_j) V x_j            rows: Ẋ = X A Gram(X, X) Vᵀ
             = the Stein variational flow of U(x) = −½ xᵀ V x with the bilinear kernel xᵀ A y.
Accelerated (row form of notes §3.1):
             Ẋ = (1/N) X A Xᵀ Y = X A Gram(X, Y)
             Ẏ = −α(t) Y − (1/N) Y Yᵀ X A + X Vᵀ = −α Y − Y Gram(Y, X) A + X Vᵀ
For A = Aᵀ and V = Vᵀ this is Hamilton's system of
             H(X, Y) = (1/(2N)) Σ_ij (x_iᵀ A x_j)(y_i · y_j) − ½ Σ_i x_iᵀ V x_i.

Fast path: O(N d²) by associativity; ``dense=True`` forms the N×N kernel (reference).

:class:`MomentLinearAttention` runs the same equations on an *affine representation*: a state
R ∈ R^{(d+1)×d} stands for the particles Z₀ R with Z₀ = [X₀, 1], and Gram(a, b) = aᵀ M̃ b with
M̃ = E[z₀ z₀ᵀ] the second moment of the initial cloud. Because every right-hand side is linear in the
particles given the moments, one scheme step on the representation reproduces the particle step
exactly: this is the matrix-ODE oracle of notes §3.3 (P = R[:d]ᵀ, r = R[d]) and the proof that
elliptically contoured laws stay elliptical.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sympformer.integrators.oracle import Evaluation
from sympformer.particles.potentials import QuadraticPotential
from sympformer.particles.validation import as_matrix, check_particles, check_same_size, check_symmetric


class LinearAttention:
    """Linear attention with kernel matrix A and value matrix V (both d×d)."""

    def __init__(self, A, V, symmetric: bool = True, dense: bool = False) -> None:
        self.A = as_matrix("A", A)
        self.V = as_matrix("V", V, dtype=self.A.dtype)
        if self.A.shape != self.V.shape:
            raise ValueError(f"A and V must have the same shape, got {tuple(self.A.shape)} and {tuple(self.V.shape)}")
        if symmetric:
            check_symmetric("A", self.A)
            check_symmetric("V", self.V)
        self.symmetric, self.dense = symmetric, dense

    @property
    def dim(self) -> int:
        return self.A.shape[0]

    def gram(self, a: Tensor, b: Tensor) -> Tensor:
        """Gram(a, b) = (1/N) Σ_j a_j b_jᵀ."""
        return a.mT @ b / a.shape[-2]

    def _check(self, x: Tensor, y: Tensor | None = None) -> None:
        check_particles("X", x, self.dim)
        if y is not None:
            check_same_size(("X", "Y"), x, y)

    def classical(self, x: Tensor) -> Tensor:
        """ẋ_i = (1/N) Σ_j (x_iᵀ A x_j) V x_j (first-order field)."""
        self._check(x)
        if self.dense:
            return (x @ self.A @ x.mT) @ (x @ self.V.mT) / x.shape[-2]
        return x @ self.A @ self.gram(x, x) @ self.V.mT

    def __call__(self, x: Tensor, y: Tensor) -> Evaluation:
        """The accelerated oracle: F = X A Gram(X, Y), G = −Y Gram(Y, X) A + X Vᵀ, F linear in Y."""
        self._check(x, y)
        if self.dense:
            kernel = x @ self.A @ x.mT / x.shape[-2]
            velocity_map = lambda y_new: kernel @ y_new
            force = -(y @ y.mT) @ x @ self.A / x.shape[-2] + x @ self.V.mT
        else:
            left = x @ self.A
            velocity_map = lambda y_new: left @ self.gram(x, y_new)
            force = -y @ self.gram(y, x) @ self.A + x @ self.V.mT
        return Evaluation(velocity_map(y), force, velocity_map)

    def hamiltonian(self, x: Tensor, y: Tensor) -> Tensor:
        """H(X, Y) = (1/(2N)) Σ_ij (x_iᵀ A x_j)(y_i·y_j) − ½ Σ_i x_iᵀ V x_i (needs A, V symmetric)."""
        if not self.symmetric:
            raise ValueError("the linear-attention Hamiltonian needs symmetric A and V")
        self._check(x, y)
        n = x.shape[-2]
        kinetic = 0.5 * n * torch.einsum("ab,...bc,...ca->...", self.A, self.gram(x, y), self.gram(y, x))
        return kinetic - 0.5 * ((x @ self.V) * x).sum((-1, -2))

    def potential(self) -> QuadraticPotential:
        """U(x) = −½ xᵀ V x, whose Stein flow with kernel xᵀ A y is classical linear attention."""
        return QuadraticPotential(-self.V)


class MomentLinearAttention(LinearAttention):
    """The accelerated linear system on affine representations R ∈ R^{(d+1)×d} (module docstring)."""

    def __init__(self, A, V, second_moment: Tensor, symmetric: bool = False) -> None:
        super().__init__(A, V, symmetric=symmetric, dense=False)
        d = self.dim
        if second_moment.shape != (d + 1, d + 1):
            raise ValueError(
                f"the augmented second moment must be ({d + 1}, {d + 1}), got {tuple(second_moment.shape)}"
            )
        self.second_moment = second_moment

    @staticmethod
    def augmented_moment(x0: Tensor) -> Tensor:
        """M̃ = E[z zᵀ] with z = (x₀, 1): [[E x xᵀ, E x], [E xᵀ, 1]]."""
        z = torch.cat([x0, x0.new_ones(*x0.shape[:-1], 1)], dim=-1)
        return z.mT @ z / x0.shape[-2]

    @staticmethod
    def identity_representation(d: int, dtype=None, device=None) -> Tensor:
        """R such that Z₀ R = X₀: [I; 0]."""
        return torch.cat([torch.eye(d, dtype=dtype, device=device), torch.zeros(1, d, dtype=dtype, device=device)])

    @staticmethod
    def affine_representation(L: Tensor, c: Tensor) -> Tensor:
        """R such that Z₀ R = X₀ Lᵀ + 1 cᵀ (an affine initial velocity field y₀ = L x₀ + c)."""
        return torch.cat([L.mT, c.reshape(1, -1)])

    @staticmethod
    def particles(x0: Tensor, representation: Tensor) -> Tensor:
        """Z₀ R: the particles a representation stands for."""
        return x0 @ representation[:-1] + representation[-1]

    def gram(self, a: Tensor, b: Tensor) -> Tensor:
        return a.mT @ self.second_moment @ b

    def _check(self, x: Tensor, y: Tensor | None = None) -> None:
        if x.shape != (self.dim + 1, self.dim):
            raise ValueError(f"a representation has shape ({self.dim + 1}, {self.dim}), got {tuple(x.shape)}")
        if y is not None:
            check_same_size(("R_x", "R_y"), x, y)

    def hamiltonian(self, x: Tensor, y: Tensor) -> Tensor:
        raise ValueError("the Hamiltonian is defined on particles, not on affine representations")


def evolve_representation(
    system: LinearAttention, x0: Tensor, L: Tensor, c: Tensor, scheme, times, damping
) -> tuple[Tensor, Tensor]:
    """The matrix-ODE oracle: run ``scheme`` on the affine representation of the accelerated linear
    system started from the particles ``x0`` with velocities y₀ = L x₀ + c. With RK4 and a fine mesh
    this integrates the continuous matrix ODE of notes §3.3; with any other scheme it is that scheme's
    exact per-step analogue. Returns (R_x, R_y); the particles are ``MomentLinearAttention.particles``."""
    from sympformer.integrators import integrate

    moments = MomentLinearAttention(system.A, system.V, MomentLinearAttention.augmented_moment(x0))
    r_x = MomentLinearAttention.identity_representation(system.dim, dtype=x0.dtype, device=x0.device)
    r_y = MomentLinearAttention.affine_representation(L, c)
    trajectory = integrate(scheme, moments, r_x, r_y, times, damping)
    return trajectory.x[-1], trajectory.p[-1]
