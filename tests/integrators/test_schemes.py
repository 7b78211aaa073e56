"""Schemes: empirical order of accuracy, oracle-call counts, exact damping, long-time energy
behaviour, and the variable-step AB2 weights."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from helpers import graded_mesh, observed_orders, random_spd, random_symmetric
from sympformer.integrators import (
    NO_DAMPING,
    SCHEME_NAMES,
    CountingField,
    CountingOracle,
    Damping,
    Evaluation,
    get_flow_scheme,
    get_scheme,
    integrate,
    integrate_flow,
    mesh,
)
from sympformer.integrators.schemes import AdamsBashforth2
from sympformer.particles import (
    AcceleratedSoftmaxSystem,
    ClassicalSoftmaxFlow,
    QuadraticPotential,
    SoftmaxGeometry,
)

# Documented here independently of the classes' own attributes.
DOCUMENTED = {
    "euler": (1, 1),
    "kick_drift": (1, 1),
    "exp_euler": (1, 1),
    "exp_kick_drift": (1, 1),
    "half_damped_euler": (1, 1),
    "doubling": (2, 4),
    "strang_doubling": (2, 4),
    "ab2": (2, 1),
    "etd_ab2": (2, 1),
    "etd_ab2_new_drift": (1, 1),
    "rk4": (4, 4),
}


def test_every_scheme_is_documented():
    assert set(SCHEME_NAMES) == set(DOCUMENTED)
    for name, (order, calls) in DOCUMENTED.items():
        scheme = get_scheme(name)
        assert (scheme.order, scheme.calls_per_step) == (order, calls)
        assert f"Order {order}" in type(scheme).__doc__ or name.startswith(("half", "strang", "etd", "exp"))


@functools.cache
def _softmax_problem():
    g = torch.Generator().manual_seed(11)
    geometry = SoftmaxGeometry(random_symmetric(2, g, 0.3), random_spd(2, g))
    potential = QuadraticPotential(torch.diag(torch.tensor([0.5, 2.0], dtype=torch.float64)))
    system = AcceleratedSoftmaxSystem(geometry, potential)
    x0 = torch.randn(4, 2, generator=g, dtype=torch.float64)
    p0 = 0.5 * torch.randn(4, 2, generator=g, dtype=torch.float64)
    return system, x0, p0


@functools.cache
def _reference_solution():
    """RK4 with 2048 steps on the graded mesh over [1, 2] with Nesterov damping."""
    system, x0, p0 = _softmax_problem()
    return integrate(get_scheme("rk4"), system, x0, p0, graded_mesh(1.0, 2.0, 2048), NESTEROV)


NESTEROV = Damping("log", c_log=3.0, t0=1.0)


@pytest.fixture
def softmax_problem(f64):
    return _softmax_problem()


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_empirical_order_matches_documented_order(softmax_problem, name):
    system, x0, p0 = softmax_problem
    reference = _reference_solution()
    scheme = get_scheme(name)
    base = 16 if scheme.order < 4 else 8
    errors = []
    for steps in (base, 2 * base, 4 * base):
        run = integrate(scheme, system, x0, p0, graded_mesh(1.0, 2.0, steps), NESTEROV)
        errors.append(max((run.x[-1] - reference.x[-1]).abs().max(), (run.p[-1] - reference.p[-1]).abs().max()).item())
    orders = observed_orders(errors)
    assert all(abs(order - scheme.order) <= 0.3 for order in orders), (errors, orders)


@pytest.mark.parametrize("name", ["euler", "rk4"])
def test_first_order_flow_schemes_have_their_order(f64, name):
    g = torch.Generator().manual_seed(12)
    flow = ClassicalSoftmaxFlow(SoftmaxGeometry(random_symmetric(2, g, 0.3), random_spd(2, g)))
    x0 = torch.randn(5, 2, generator=g, dtype=torch.float64)
    reference = integrate_flow(get_flow_scheme("rk4"), flow, x0, mesh(0.0, 1.0, 2048)).x[-1]
    scheme = get_flow_scheme(name)
    base = 16 if scheme.order < 4 else 8
    errors = [
        (integrate_flow(scheme, flow, x0, graded_mesh(0.0, 1.0, n)).x[-1] - reference).abs().max().item()
        for n in (base, 2 * base, 4 * base)
    ]
    assert all(abs(order - scheme.order) <= 0.3 for order in observed_orders(errors)), errors


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_oracle_calls_equal_documented_count(softmax_problem, name):
    system, x0, p0 = softmax_problem
    oracle = CountingOracle(system)
    integrate(get_scheme(name), oracle, x0, p0, mesh(1.0, 2.0, 7), Damping("log"))
    assert oracle.calls == 7 * DOCUMENTED[name][1]


def test_first_order_call_counts(softmax_problem):
    system, x0, _ = softmax_problem
    for name, calls in (("euler", 1), ("rk4", 4)):
        field = CountingField(ClassicalSoftmaxFlow(system.geometry, system.potential))
        integrate_flow(get_flow_scheme(name), field, x0, mesh(0.0, 1.0, 5))
        assert field.calls == 5 * calls


class ForceFree:
    """H = ½|p|²: no force; the momentum only feels the friction."""

    def __call__(self, x, p):
        return Evaluation(p, torch.zeros_like(p), lambda q: q)


@pytest.mark.parametrize("mode", ["log", "loglin", "linear", "constant"])
@pytest.mark.parametrize("name", ["kick_drift", "exp_euler", "half_damped_euler", "strang_doubling", "etd_ab2"])
def test_friction_is_integrated_exactly(f64, mode, name):
    """Force-free motion: these schemes multiply P by exp(−(η(t+h) − η(t))) exactly, whatever h."""
    damping = Damping(mode, c_log=3.0, c_lin=0.7, alpha=0.9, t0=0.5)
    p = torch.tensor([[1.0, -2.0]])
    step = get_scheme(name).step(ForceFree(), torch.zeros_like(p), p, 0.7, 0.9, damping)
    expected = torch.exp(-(damping.eta(1.6) - damping.eta(0.7))) * p
    torch.testing.assert_close(step.p, expected, rtol=1e-15, atol=0)


def test_half_damped_split_uses_each_half_interval(f64):
    """The authors' Strang step applied exp(−(η(t+h/2) − η(t))) twice; that is not exp(−Δη)."""
    damping = Damping("log", c_log=3.0)
    t, h = 1.0, 1.0
    twice_first_half = torch.exp(-2 * (damping.eta(t + h / 2) - damping.eta(t)))
    assert abs(twice_first_half / damping.factor(t, h) - 1) > 0.2  # the bug is visible at this h


class Pendulum:
    """Separable H = ½ p² − cos x."""

    def __call__(self, x, p):
        return Evaluation(p, -torch.sin(x), lambda q: q)

    @staticmethod
    def energy(x, p):
        return (0.5 * p**2 - torch.cos(x)).sum().item()


class StiffeningOscillator:
    """Non-separable H = ½ (1 + x²) p² + ½ x²."""

    def __call__(self, x, p):
        return Evaluation((1 + x**2) * p, -(x * p**2 + x), lambda q: (1 + x**2) * q)

    @staticmethod
    def energy(x, p):
        return (0.5 * (1 + x**2) * p**2 + 0.5 * x**2).sum().item()


def energy_drift(scheme_name, system, x, p, h, steps):
    scheme = get_scheme(scheme_name, xi=5.0)
    h0 = system.energy(x, p)
    worst = 0.0
    for k in range(steps):
        x, p, _ = scheme.step(system, x, p, k * h, h, NO_DAMPING)
        worst = max(worst, abs(system.energy(x, p) - h0))
    return worst


def test_symplectic_schemes_keep_energy_bounded(f64):
    x, p = torch.tensor([1.0]), torch.tensor([0.0])
    steps = 10_000
    assert energy_drift("kick_drift", Pendulum(), x, p, 0.1, steps) < 0.06
    assert energy_drift("euler", Pendulum(), x, p, 0.1, steps) > 1.0
    assert energy_drift("doubling", StiffeningOscillator(), x, p, 0.05, steps) < 0.01
    assert energy_drift("euler", StiffeningOscillator(), x, p, 0.05, steps) > 0.5


def test_variable_step_ab2_is_exact_for_quadratic_motion(f64):
    """Ẋ = P, Ṗ = 1: X(t) is quadratic, so variable-step AB2 is exact after its Euler start;
    the fixed 1.5/−0.5 weights of the v1 code are not."""

    class ConstantForce:
        def __call__(self, x, p):
            return Evaluation(p, torch.ones_like(p), lambda q: q)

    times = [0.0, 0.1, 0.15, 0.4, 0.45, 1.0, 1.2]
    # start after one exact step so that the Euler start does not matter
    x, p = torch.tensor([0.1**2 / 2]), torch.tensor([0.1])
    scheme = AdamsBashforth2()
    memory = scheme.step(ConstantForce(), torch.tensor([0.0]), torch.tensor([0.0]), 0.0, 0.1, NO_DAMPING).memory
    memory = memory._replace(velocity=torch.tensor([0.0]))  # the exact rates at t = 0
    for t, t_next in zip(times[1:], times[2:], strict=False):
        x, p, memory = scheme.step(ConstantForce(), x, p, t, t_next - t, NO_DAMPING, memory)
    torch.testing.assert_close(x, torch.tensor([1.2**2 / 2]), rtol=0, atol=1e-14)
    torch.testing.assert_close(p, torch.tensor([1.2]), rtol=0, atol=1e-14)
    # the fixed weights 1.5 / −0.5 on the same mesh (P is exact for both: its rate is constant)
    x_fixed = 0.1**2 / 2
    for t_prev, t, t_next in zip(times, times[1:], times[2:], strict=False):
        x_fixed += (t_next - t) * (1.5 * t - 0.5 * t_prev)
    assert abs(x_fixed - 1.2**2 / 2) > 1e-3


def test_unknown_scheme_lists_valid_names():
    with pytest.raises(ValueError, match="valid schemes: euler, kick_drift"):
        get_scheme("leapfrog")
    with pytest.raises(ValueError, match="xi must be positive"):
        get_scheme("doubling", xi=0.0)
    with pytest.raises(ValueError, match="valid: euler, rk4"):
        get_flow_scheme("midpoint")


def test_doubling_rotation_keeps_the_sums_and_rotates_the_differences():
    """φ_C's 4×4 matrix on [X, X̄, Π, Π̄]: X + X̄ and Π + Π̄ unchanged, (X − X̄, Π − Π̄) rotated by θ, and
    the gradient in θ equals the finite difference (a learned step size trains through it)."""
    from sympformer.integrators.schemes import _doubling_rotation

    theta = torch.tensor(0.37, dtype=torch.float64, requires_grad=True)
    state = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x, xb, pi, pib = _doubling_rotation(theta, state) @ state
    torch.testing.assert_close(x + xb, state[0] + state[1], rtol=0, atol=1e-14)
    torch.testing.assert_close(pi + pib, state[2] + state[3], rtol=0, atol=1e-14)
    c, s = math.cos(0.37), math.sin(0.37)
    dx, dp = state[0] - state[1], state[2] - state[3]
    torch.testing.assert_close(x - xb, c * dx + s * dp, rtol=0, atol=1e-14)
    torch.testing.assert_close(pi - pib, -s * dx + c * dp, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: _doubling_rotation(t, state) @ state, (theta,))


class LinearOracle:
    """F = K P, G = −A X, velocity map P' ↦ K P' (K and A fixed, not symmetric)."""

    def __init__(self, g):
        self.k = torch.randn(2, 2, generator=g, dtype=torch.float64)
        self.a = torch.randn(2, 2, generator=g, dtype=torch.float64)

    def __call__(self, x, p):
        return Evaluation(p @ self.k.T, -x @ self.a.T, lambda q: q @ self.k.T)


@pytest.mark.parametrize("name", ["euler", "kick_drift", "exp_euler", "exp_kick_drift", "ab2", "etd_ab2"])
def test_one_call_schemes_take_their_documented_steps(f64, name):
    """Two steps (the second with the first one's memory, h changing from 0.3 to 0.5) against the
    schemes' docstring formulas written out here, with a force, a velocity map and damping."""
    g = torch.Generator().manual_seed(21)
    oracle, damping = LinearOracle(g), Damping("loglin", c_log=3.0, c_lin=0.7, t0=0.5)
    x, p = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    F, G, K = (lambda x, p: p @ oracle.k.T), (lambda x, p: -x @ oracle.a.T), (lambda q: q @ oracle.k.T)
    sigma = lambda t, h: torch.exp(-(damping.eta(t + h) - damping.eta(t)))
    scheme, memory, t, previous = get_scheme(name), None, 0.7, None
    for h in (0.3, 0.5):
        step = scheme.step(oracle, x, p, t, h, damping, memory)
        f, force = F(x, p), G(x, p)
        if name == "euler" or (name in ("ab2", "etd_ab2") and previous is None):
            if name == "etd_ab2":
                want_p, want_x = sigma(t, h) * (p + h * force), x + h * f
            else:
                want_p, want_x = p + h * (force - damping.alpha_at(t) * p), x + h * f
        elif name == "kick_drift":
            want_p = sigma(t, h) * (p + h * force)
            want_x = x + h * K(want_p)
        elif name in ("exp_euler", "exp_kick_drift"):
            a = damping.eta(t + h) - damping.eta(t)
            want_p = torch.exp(-a) * p + h * (1 - torch.exp(-a)) / a * force
            want_x = x + h * (f if name == "exp_euler" else K(want_p))
        elif name == "ab2":
            r = h / previous["h"]
            rate_p, old_rate_p = force - damping.alpha_at(t) * p, previous["rate_p"]
            want_p = p + h * ((1 + r / 2) * rate_p - (r / 2) * old_rate_p)
            want_x = x + h * ((1 + r / 2) * f - (r / 2) * previous["f"])
        else:  # etd_ab2, second step
            r = h / previous["h"]
            old_force = torch.exp(damping.eta(previous["t"]) - damping.eta(t)) * previous["force"]
            want_p = sigma(t, h) * (p + h * ((1 + r / 2) * force - (r / 2) * old_force))
            want_x = x + h * ((1 + r / 2) * f - (r / 2) * previous["f"])
        torch.testing.assert_close(step.p, want_p, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(step.x, want_x, rtol=1e-13, atol=1e-13)
        previous = dict(h=h, t=t, f=f, force=force, rate_p=force - damping.alpha_at(t) * p)
        x, p, memory, t = step.x, step.p, step.memory, t + h
