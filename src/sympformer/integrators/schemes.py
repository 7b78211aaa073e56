r"""Time-stepping schemes for the damped Hamiltonian system

    Ẋ = F(X, P) = ∂H/∂P,      Ṗ = G(X, P) − α(t) P,      G = −∂H/∂X,

given an oracle (see :mod:`sympformer.integrators.oracle`) and a :class:`Damping` schedule.
Every scheme is written once and used by the particle lab and the language-model blocks alike.
``step(oracle, x, p, t, h, damping, memory)`` advances from time t to t + h and returns
``(x, p, memory)``; multistep schemes carry their previous right-hand side in ``memory``
(``None`` on the first step). Separate position/momentum step sizes are an oracle rescaling:
step with h = h_P and an oracle whose velocity is multiplied by h_X / h_P.

Notation: σ(t, h) = exp(−(η(t+h) − η(t))) is the exact friction factor, Δη = η(t+h) − η(t).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from sympformer.integrators.damping import NO_DAMPING, Damping, damp, phi1
from sympformer.integrators.oracle import Oracle


class Step(NamedTuple):
    x: Tensor
    p: Tensor
    memory: Any = None


class Scheme:
    """Base class: ``name``, the order of accuracy and the oracle calls per step."""

    name: str = ""
    order: int = 0
    calls_per_step: int = 0

    def step(self, oracle: Oracle, x: Tensor, p: Tensor, t, h, damping: Damping, memory=None) -> Step:
        raise NotImplementedError

    def step_parts(self, oracle: Oracle, x, p, t, h, damping: Damping, memory=None) -> tuple[Step, Tensor | None]:
        """(the step up to a last factor on its momentum, that factor; None for a scheme that ends with
        none): ``step`` is the first with its momentum times the factor. A caller that normalises the
        momentum next can fold the factor into the normalisation (the v1 blocks' LN_P) and keep no scaled
        copy of it."""
        return self.step(oracle, x, p, t, h, damping, memory), None


def _scaled(parts: tuple[Step, Tensor | None]) -> Step:
    """A step from :meth:`Scheme.step_parts`: its momentum times the last factor."""
    before, factor = parts
    return before if factor is None else Step(before.x, factor * before.p, before.memory)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order}, calls_per_step={self.calls_per_step})"


class ForwardEuler(Scheme):
    r"""Forward Euler, simultaneous in (X, P). Order 1, one oracle call.

    X⁺ = X + h F(X, P)
    P⁺ = P + h (G(X, P) − α(t) P)
    """

    name, order, calls_per_step = "euler", 1, 1

    def step(self, oracle, x, p, t, h, damping, memory=None):
        ev = oracle(x, p)
        return Step(x + h * ev.velocity, p + h * (ev.force - damping.alpha_at(t) * p))


class KickDrift(Scheme):
    r"""Kick, damp, drift (conformal symplectic Euler). Order 1, one oracle call.

        P⁺ = σ(t, h) · (P + h G(X, P))
        X⁺ = X + h K(X) P⁺          (drift with the new momentum, same kernel)

    Symplectic (conformally symplectic with damping) when H is separable; for a position-dependent
    metric K(X) it is the paper's explicit "presymplectic Euler", first order but not symplectic.
    """

    name, order, calls_per_step = "kick_drift", 1, 1

    def step(self, oracle, x, p, t, h, damping, memory=None):
        ev = oracle(x, p)
        sigma = damping.factor(t, h)
        p_new = sigma * p + (sigma * h) * ev.force  # scaled terms: autograd keeps G, not P + h G
        return Step(ev.drift(x, h, p_new), p_new)


class ExponentialEuler(Scheme):
    r"""Damped exponential Euler: the friction integrated exactly, the force frozen. Order 1, one call.

        P⁺ = e^{−Δη} P + h φ₁(Δη) G(X, P),      φ₁(a) = (1 − e^{−a}) / a
        X⁺ = X + h F(X, P)          (drift="old", the v1 `presymp_exp_euler`)
        X⁺ = X + h K(X) P⁺          (drift="new", presymplectic drift)

    h φ₁(Δη) = ∫ e^{−(η(t+h)−η(s))} ds exactly when α is constant over the step.
    """

    order, calls_per_step = 1, 1

    def __init__(self, drift: str = "old") -> None:
        if drift not in ("old", "new"):
            raise ValueError(f"drift must be 'old' or 'new' (got {drift!r})")
        self.drift = drift
        self.name = "exp_euler" if drift == "old" else "exp_kick_drift"

    def step(self, oracle, x, p, t, h, damping, memory=None):
        ev = oracle(x, p)
        a = damping.delta_eta(t, h)
        p_new = torch.exp(-a) * p + h * phi1(a) * ev.force
        return Step(x + h * ev.velocity if self.drift == "old" else ev.drift(x, h, p_new), p_new)


class Doubling(Scheme):
    r"""Explicit second-order integrator for non-separable Hamiltonians by phase-space doubling
    (Tao 2016; the v1 `presymp` step, notes §2.3), applied to the conformal variable Π = e^{η} P.
    Order 2, four oracle calls.

    The damped system is the Hamiltonian system of H̃(X, Π, τ) = e^{η(τ)} H(X, e^{−η(τ)} Π), i.e.
    velocity F(X, e^{−η}Π) and force e^{η} G(X, e^{−η}Π). A shadow copy (X̄, Π̄, τ̄) is coupled with
    strength ξ, and one step is  φ_A(h/2) ∘ φ_B(h/2) ∘ φ_C(h) ∘ φ_B(h/2) ∘ φ_A(h/2):

        φ_A(δ): (v, f) = field(τ, X, Π̄);  Π += δ f;  X̄ += δ v;  τ̄ += δ
        φ_B(δ): (v, f) = field(τ̄, X̄, Π);  X += δ v;  Π̄ += δ f;  τ += δ
        φ_C(δ): rotation by θ = 2ξδ of the differences Δ = (X − X̄, Π − Π̄), sums Σ kept:
                X = ½(Σ_X + cΔ_X + sΔ_Π),  Π = ½(Σ_Π − sΔ_X + cΔ_Π),
                X̄ = ½(Σ_X − cΔ_X − sΔ_Π),  Π̄ = ½(Σ_Π + sΔ_X − cΔ_Π),   c = cos θ, s = sin θ

    Output X⁺ = X, P⁺ = e^{−η(t+h)} Π; the shadow copy is discarded. Π is taken relative to η(t)
    so that e^{η} never overflows.
    """

    name, order, calls_per_step = "doubling", 2, 4

    def __init__(self, xi: float = 0.5) -> None:
        if not xi > 0:
            raise ValueError(f"the coupling xi must be positive (got {xi})")
        self.xi = xi

    def step(self, oracle, x, p, t, h, damping, memory=None):
        return _scaled(self.step_parts(oracle, x, p, t, h, damping))

    def step_parts(self, oracle, x, p, t, h, damping, memory=None):
        """(the step with P⁺ = Π, the factor e^{−(η(t+h) − η(t))}): see :meth:`Scheme.step_parts`."""

        def field(tau, positions, pi):
            scale = torch.exp(damping.delta_eta(t, tau - t))  # e^{η(τ) − η(t)}
            ev = oracle(positions, pi / scale)
            return ev.velocity, scale * ev.force

        half = h / 2
        X, Pi, Xb, Pib = x, p, x, p
        tau, tau_b = t, t

        def phi_a(X, Pi, Xb, Pib, tau, tau_b):
            v, f = field(tau, X, Pib)
            return X, Pi + half * f, Xb + half * v, Pib, tau, tau_b + half

        def phi_b(X, Pi, Xb, Pib, tau, tau_b):
            v, f = field(tau_b, Xb, Pi)
            return X + half * v, Pi, Xb, Pib + half * f, tau + half, tau_b

        rotation = _doubling_rotation(2 * self.xi * h, x)

        def phi_c(X, Pi, Xb, Pib, tau, tau_b):
            stacked = torch.stack([X, Xb, Pi, Pib])  # one (4, 4) product instead of 28 elementwise passes
            with torch.autocast(stacked.device.type, enabled=False):  # the streams' precision, as elementwise
                mixed = rotation.to(stacked.dtype) @ stacked.flatten(1)
            X, Xb, Pi, Pib = mixed.view_as(stacked).unbind(0)
            return X, Pi, Xb, Pib, tau, tau_b

        state = (X, Pi, Xb, Pib, tau, tau_b)
        for substep in (phi_a, phi_b, phi_c, phi_b, phi_a):
            state = substep(*state)
        X, Pi = state[0], state[1]
        return Step(X, Pi), damping.factor(t, h)


def _doubling_rotation(theta, like: Tensor) -> Tensor:
    r"""φ_C as one 4×4 matrix acting on the stack [X, X̄, Π, Π̄]: with c = cos θ, s = sin θ and
    a = (1 + c)/2, b = (1 − c)/2, e = s/2 (the formulas of :class:`Doubling`, expanded),

        X⁺ = a X + b X̄ + e Π − e Π̄,     X̄⁺ = b X + a X̄ − e Π + e Π̄,
        Π⁺ = −e X + e X̄ + a Π + b Π̄,    Π̄⁺ = e X − e X̄ + b Π + a Π̄.

    θ may be a tensor with a gradient (a learned step size)."""
    if not isinstance(theta, Tensor):
        theta = torch.tensor(theta, dtype=like.dtype, device=like.device)
    c, s = torch.cos(theta).to(like.dtype), torch.sin(theta).to(like.dtype)
    a, b, e = (1 + c) / 2, (1 - c) / 2, s / 2
    return torch.stack([torch.stack(row) for row in ([a, b, e, -e], [b, a, -e, e], [-e, e, a, b], [e, -e, b, a])])


class ConformalStrang(Scheme):
    r"""Conformal Strang splitting: exact damping over each half step around a conservative step.

        P ← exp(−(η(t + h/2) − η(t))) P
        (X, P) ← Ψ_h(X, P)            (the inner scheme with no damping)
        P ← exp(−(η(t + h) − η(t + h/2))) P

    Each half uses its own interval (the authors' code applies the first factor twice, notes §6.5).
    Order min(2, inner order); oracle calls those of the inner scheme. With the kick–drift inner
    step this is the one-call "half-damped Euler" of notes §7; with the doubling step it is the
    v1 `presymp_strang`.
    """

    def __init__(self, inner: Scheme) -> None:
        if isinstance(inner, (AdamsBashforth2, ETDAdamsBashforth2, ConformalStrang)):
            raise ValueError(f"the inner step of a Strang splitting must be a one-step scheme, not {inner}")
        self.inner = inner
        self.order = min(2, inner.order)
        self.calls_per_step = inner.calls_per_step
        self.name = "half_damped_euler" if isinstance(inner, KickDrift) else f"strang_{inner.name}"

    def step(self, oracle, x, p, t, h, damping, memory=None):
        return _scaled(self.step_parts(oracle, x, p, t, h, damping))

    def step_parts(self, oracle, x, p, t, h, damping, memory=None):
        """(the step up to its last half-damping, that factor exp(−(η(t + h) − η(t + h/2))) times the inner
        step's own last factor): see :meth:`Scheme.step_parts`."""
        p = damp(p, damping.delta_eta(t, h / 2))  # keeps the damped momentum, which the oracle keeps anyway
        (x, p, _), inner_factor = self.inner.step_parts(oracle, x, p, t, h, NO_DAMPING)
        last_factor = damping.factor(t + h / 2, h / 2)
        return Step(x, p), last_factor if inner_factor is None else inner_factor * last_factor


class AB2Memory(NamedTuple):
    velocity: Tensor
    momentum_rate: Tensor
    h: Any


class AdamsBashforth2(Scheme):
    r"""Variable-step two-step Adams–Bashforth on the full right-hand side R = (F, G − α(t) P).
    Order 2, one oracle call (forward Euler on the first step).

        Z⁺ = Z + h_n [(1 + r/2) R_n − (r/2) R_{n−1}],      r = h_n / h_{n−1}

    The fixed 1.5/−0.5 weights of the authors' v1 code are the special case r = 1 (notes §6.4).
    """

    name, order, calls_per_step = "ab2", 2, 1

    def step(self, oracle, x, p, t, h, damping, memory=None):
        ev = oracle(x, p)
        rate_x, rate_p = ev.velocity, ev.force - damping.alpha_at(t) * p
        if memory is None:
            x_new, p_new = x + h * rate_x, p + h * rate_p
        else:
            r = h / memory.h
            # Z⁺ = Z + a R_n + b R_{n−1} as scaled terms: autograd keeps the rates (which it keeps anyway,
            # the previous one for its own step), not their weighted difference
            a, b = h * (1 + r / 2), -h * r / 2
            x_new = x + a * rate_x + b * memory.velocity
            p_new = p + a * rate_p + b * memory.momentum_rate
        return Step(x_new, p_new, AB2Memory(rate_x, rate_p, h))


class ETDMemory(NamedTuple):
    velocity: Tensor
    force: Tensor
    t: Any
    h: Any


class ETDAdamsBashforth2(Scheme):
    r"""Integrating-factor ("ETD") Adams–Bashforth 2 in the conformal variable Π = e^{η} P, whose
    equation Π̇ = e^{η} G carries no friction term. One oracle call (Euler-type first step).

        H_n = G_n,  H_{n−1} = e^{η(t_{n−1}) − η(t_n)} G_{n−1}          (Π relative to η(t_n))
        P⁺ = σ(t_n, h_n) · (P + h_n [(1 + r/2) H_n − (r/2) H_{n−1}])
        X⁺ = X + h_n [(1 + r/2) F_n − (r/2) F_{n−1}]      drift="ab2": order 2
        X⁺ = X + h_n K(X) P⁺                               drift="new" (v1 `presymp_etd_ab2`): order 1
    """

    calls_per_step = 1

    def __init__(self, drift: str = "ab2") -> None:
        if drift not in ("ab2", "new"):
            raise ValueError(f"drift must be 'ab2' or 'new' (got {drift!r})")
        self.drift = drift
        self.order = 2 if drift == "ab2" else 1
        self.name = "etd_ab2" if drift == "ab2" else "etd_ab2_new_drift"

    def step(self, oracle, x, p, t, h, damping, memory=None):
        ev = oracle(x, p)
        sigma = damping.factor(t, h)
        # written as sums of scaled terms: autograd keeps F_n, G_n (and the previous step's, which that
        # step keeps anyway), not the combinations
        if memory is None:  # Euler-type first step: a = h, b = 0
            a, b = h, None
            p_new = sigma * p + (sigma * h) * ev.force
        else:
            r = h / memory.h
            a, b = h * (1 + r / 2), -h * r / 2
            previous = damping.factor(memory.t, memory.h)  # H_{n−1} = e^{η(t_{n−1}) − η(t_n)} G_{n−1}
            p_new = sigma * p + (sigma * a) * ev.force + (sigma * b * previous) * memory.force
        if self.drift == "new":
            x_new = ev.drift(x, h, p_new)
        else:
            x_new = x + a * ev.velocity if b is None else x + a * ev.velocity + b * memory.velocity
        return Step(x_new, p_new, ETDMemory(ev.velocity, ev.force, t, h))


class RK4(Scheme):
    r"""Classical Runge–Kutta 4 on (Ẋ, Ṗ) = (F, G − α(t) P). Order 4, four oracle calls (reference)."""

    name, order, calls_per_step = "rk4", 4, 4

    def step(self, oracle, x, p, t, h, damping, memory=None):
        def rate(tau, X, P):
            ev = oracle(X, P)
            return ev.velocity, ev.force - damping.alpha_at(tau) * P

        k1x, k1p = rate(t, x, p)
        k2x, k2p = rate(t + h / 2, x + h / 2 * k1x, p + h / 2 * k1p)
        k3x, k3p = rate(t + h / 2, x + h / 2 * k2x, p + h / 2 * k2p)
        k4x, k4p = rate(t + h, x + h * k3x, p + h * k3p)
        return Step(
            x + h / 6 * (k1x + 2 * k2x + 2 * k3x + k4x),
            p + h / 6 * (k1p + 2 * k2p + 2 * k3p + k4p),
        )


def scheme_registry(xi: float = 0.5) -> dict[str, Scheme]:
    """Every second-order-system scheme by name (``xi``: coupling of the doubling schemes)."""
    schemes = [
        ForwardEuler(),
        KickDrift(),
        ExponentialEuler("old"),
        ExponentialEuler("new"),
        ConformalStrang(KickDrift()),
        Doubling(xi),
        ConformalStrang(Doubling(xi)),
        AdamsBashforth2(),
        ETDAdamsBashforth2("ab2"),
        ETDAdamsBashforth2("new"),
        RK4(),
    ]
    return {scheme.name: scheme for scheme in schemes}


SCHEME_NAMES = tuple(scheme_registry())


def get_scheme(name: str, **options) -> Scheme:
    """Look a scheme up by name; an unknown name is an error that lists the valid ones."""
    registry = scheme_registry(**options)
    if name not in registry:
        raise ValueError(f"unknown scheme {name!r}; valid schemes: {', '.join(registry)}")
    return registry[name]
