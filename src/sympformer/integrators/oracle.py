r"""The oracle contract shared by the particle lab and the language-model blocks.

An *oracle* is one evaluation of the interaction kernel at positions X. For the damped Hamiltonian
system with kinetic energy quadratic in the momentum, H(X, P) = ½ Σ_i ⟨p_i, K_i(X) p_i⟩ + U(X), it
returns

    velocity  F(X, P) = ∂H/∂P = K(X) P
    force     G(X, P) = −∂H/∂X
    velocity_map: P' ↦ K(X) P'   (the velocity at another momentum, same kernel: no new oracle call)

Schemes such as kick–drift use ``velocity_map`` to drift with the new momentum at the cost of a
second product, not a second kernel evaluation ("same Gram matrix, second product", notes §2.4),
through :meth:`Evaluation.drift`: X + h K(X) P'. An oracle may supply that whole step itself
(``drift_step``), e.g. one that forms K(X) P' again in the backward pass instead of keeping it.
One call of an oracle is one "oracle call" in the paper's sense; :class:`CountingOracle` counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor


@dataclass
class Evaluation:
    """The result of one oracle call at (X, P)."""

    velocity: Tensor
    force: Tensor
    velocity_map: Callable[[Tensor], Tensor]
    drift_step: Callable[[Tensor, Tensor | float, Tensor], Tensor] | None = field(default=None, kw_only=True)

    def drift(self, x: Tensor, h: Tensor | float, p_new: Tensor) -> Tensor:
        """X + h K(X) P' (the oracle's own ``drift_step`` where it has one)."""
        if self.drift_step is not None:
            return self.drift_step(x, h, p_new)
        return x + h * self.velocity_map(p_new)


class Oracle(Protocol):
    def __call__(self, x: Tensor, p: Tensor) -> Evaluation: ...


class CountingOracle:
    """Wraps an oracle and counts its calls (``.calls``)."""

    def __init__(self, oracle: Oracle) -> None:
        self.oracle = oracle
        self.calls = 0

    def __call__(self, x: Tensor, p: Tensor) -> Evaluation:
        self.calls += 1
        return self.oracle(x, p)


class CountingField:
    """Wraps a first-order velocity field Γ(X) and counts its calls (``.calls``)."""

    def __init__(self, field: Callable[[Tensor], Tensor]) -> None:
        self.field = field
        self.calls = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.field(x)
