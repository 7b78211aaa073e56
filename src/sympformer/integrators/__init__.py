r"""One integrator library for the particle lab and the language-model blocks.

- :mod:`.damping`: damping schedules η(t), α(t) and the exact friction factor.
- :mod:`.oracle`: the oracle contract (velocity F, force G, velocity map) and call counters.
- :mod:`.schemes`: schemes for the damped Hamiltonian system (Euler, kick–drift, exponential Euler,
  conformal Strang, doubling, variable-step AB2, ETD-AB2, RK4).
- :mod:`.first_order`: Euler and RK4 for the classical flow Ẋ = Γ(X).

:func:`integrate` and :func:`integrate_flow` run a scheme over a time mesh.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from sympformer.integrators.damping import MODES, NO_DAMPING, Damping, phi1
from sympformer.integrators.first_order import FIRST_ORDER_SCHEMES, EulerFlow, RK4Flow, get_flow_scheme
from sympformer.integrators.oracle import CountingField, CountingOracle, Evaluation, Oracle
from sympformer.integrators.schemes import (
    RK4,
    SCHEME_NAMES,
    AdamsBashforth2,
    ConformalStrang,
    Doubling,
    ETDAdamsBashforth2,
    ExponentialEuler,
    ForwardEuler,
    KickDrift,
    Scheme,
    Step,
    get_scheme,
    scheme_registry,
)

__all__ = [
    "MODES",
    "NO_DAMPING",
    "RK4",
    "SCHEME_NAMES",
    "FIRST_ORDER_SCHEMES",
    "AdamsBashforth2",
    "ConformalStrang",
    "CountingField",
    "CountingOracle",
    "Damping",
    "Doubling",
    "ETDAdamsBashforth2",
    "EulerFlow",
    "Evaluation",
    "ExponentialEuler",
    "ForwardEuler",
    "KickDrift",
    "Oracle",
    "RK4Flow",
    "Scheme",
    "Step",
    "Trajectory",
    "get_flow_scheme",
    "get_scheme",
    "integrate",
    "integrate_flow",
    "mesh",
    "phi1",
    "scheme_registry",
]


@dataclass
class Trajectory:
    """States at the mesh times (``x[k]``, ``p[k]`` at ``times[k]``); ``p`` is None for a flow."""

    times: list[float]
    x: list[Tensor]
    p: list[Tensor] | None = None


def mesh(t0: float, t1: float, steps: int) -> list[float]:
    """A uniform time mesh of ``steps`` steps from t0 to t1 (both included)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    if not t1 > t0:
        raise ValueError(f"the mesh needs t1 > t0 (got t0={t0}, t1={t1})")
    return [t0 + (t1 - t0) * k / steps for k in range(steps + 1)]


def _check_mesh(times: Sequence[float]) -> list[float]:
    times = [float(t) for t in times]
    if len(times) < 2 or any(b <= a for a, b in zip(times, times[1:], strict=False)):
        raise ValueError("the time mesh must hold at least two strictly increasing times")
    return times


def integrate(
    scheme: Scheme,
    oracle: Oracle,
    x: Tensor,
    p: Tensor,
    times: Sequence[float],
    damping: Damping = NO_DAMPING,
    record: bool = False,
) -> Trajectory:
    """Run ``scheme`` over the mesh ``times`` (variable steps allowed) from (x, p) at times[0]."""
    times = _check_mesh(times)
    xs, ps = [x], [p]
    memory = None
    for t, t_next in zip(times, times[1:], strict=False):
        x, p, memory = scheme.step(oracle, x, p, t, t_next - t, damping, memory)
        if record:
            xs.append(x)
            ps.append(p)
    if not record:
        return Trajectory([times[0], times[-1]], [xs[0], x], [ps[0], p])
    return Trajectory(times, xs, ps)


def integrate_flow(scheme, field, x: Tensor, times: Sequence[float], record: bool = False) -> Trajectory:
    """Run a first-order scheme (:class:`EulerFlow`, :class:`RK4Flow`) for Ẋ = Γ(X) over ``times``."""
    times = _check_mesh(times)
    xs = [x]
    for t, t_next in zip(times, times[1:], strict=False):
        x = scheme.step(field, x, t_next - t)
        if record:
            xs.append(x)
    if not record:
        return Trajectory([times[0], times[-1]], [xs[0], x])
    return Trajectory(times, xs)
