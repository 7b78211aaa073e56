r"""Schemes for first-order (classical, non-accelerated) flows  Ẋ = Γ(X).

A classical attention block is one forward-Euler step of such a flow; RK4 is the reference.
``step(field, x, h)`` returns X at t + h; ``field`` is one oracle call per evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

Field = Callable[[Tensor], Tensor]


class EulerFlow:
    r"""Forward Euler  X⁺ = X + h Γ(X). Order 1, one oracle call (the residual attention block)."""

    name, order, calls_per_step = "euler", 1, 1

    def step(self, field: Field, x: Tensor, h) -> Tensor:
        return x + h * field(x)


class RK4Flow:
    r"""Classical Runge–Kutta 4 for Ẋ = Γ(X). Order 4, four oracle calls."""

    name, order, calls_per_step = "rk4", 4, 4

    def step(self, field: Field, x: Tensor, h) -> Tensor:
        k1 = field(x)
        k2 = field(x + h / 2 * k1)
        k3 = field(x + h / 2 * k2)
        k4 = field(x + h * k3)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


FIRST_ORDER_SCHEMES = {"euler": EulerFlow(), "rk4": RK4Flow()}


def get_flow_scheme(name: str):
    if name not in FIRST_ORDER_SCHEMES:
        raise ValueError(f"unknown first-order scheme {name!r}; valid: {', '.join(FIRST_ORDER_SCHEMES)}")
    return FIRST_ORDER_SCHEMES[name]
