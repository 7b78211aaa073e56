r"""The oracle contract shared by the particle lab and the language-model blocks.

An *oracle* is one evaluation of the interaction kernel at positions X. For the damped Hamiltonian
system with kinetic energy quadratic in the momentum, H(X, P) = ½ Σ_i ⟨p_i, K_i(X) p_i⟩ + U(X), it
returns

    velocity  F(X, P) = ∂H/∂P = K(X) P
    force     G(X, P) = −∂H/∂X
    velocity_map: P' ↦ K(X) P'   (the velocity at another momentum, same kernel: no new oracle call)

Schemes such as kick–drift use ``velocity_map`` to drift with the new momentum at the cost of a
second product, not a second kernel evaluation ("same Gram matrix, second product", notes §2.4).
One call of an oracle is one "oracle call" in the paper's sense; :class:`CountingOracle` counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


@dataclass
class Evaluation:
    """The result of one oracle call at (X, P)."""

    velocity: Tensor
    force: Tensor
    velocity_map: Callable[[Tensor], Tensor]


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
