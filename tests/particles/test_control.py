"""The quadratic positive control against closed forms (ε = 0: both flows are linear ODEs)."""

from __future__ import annotations

import math

import pytest
import torch

from sympformer.integrators import get_flow_scheme, get_scheme, integrate, integrate_flow, mesh
from sympformer.particles import QuadraticControl


def damped_oscillator(x0: float, lam: float, alpha: float, t: float) -> float:
    """x(t) for ẍ + α ẋ + λ x = 0, x(0) = x0, ẋ(0) = 0 (any damping regime)."""
    disc = complex(alpha**2 / 4 - lam) ** 0.5
    r1, r2 = -alpha / 2 + disc, -alpha / 2 - disc
    if abs(disc) < 1e-12:
        return x0 * (1 - r1.real * t) * math.exp(r1.real * t)
    c1 = x0 * r2 / (r2 - r1)
    c2 = -x0 * r1 / (r2 - r1)
    return (c1 * complex(math.e) ** (r1 * t) + c2 * complex(math.e) ** (r2 * t)).real


def test_classical_control_without_metric_is_gradient_flow(f64):
    control = QuadraticControl(mu=0.1, L=1.0, eps=0.0, n_particles=5)
    x0 = control.initial_positions(31001)
    final = integrate_flow(get_flow_scheme("rk4"), control.classical(), x0, mesh(0.0, 3.0, 300)).x[-1]
    expected = x0 * torch.exp(-3.0 * torch.tensor([0.1, 1.0]))
    torch.testing.assert_close(final, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mu", [0.01, 0.25])
def test_accelerated_control_without_metric_is_damped_oscillator(f64, mu):
    control = QuadraticControl(mu=mu, L=1.0, eps=0.0, n_particles=4)
    x0 = control.initial_positions(31002)
    run = integrate(
        get_scheme("rk4"),
        control.accelerated(),
        x0,
        torch.zeros_like(x0),
        mesh(0.0, 5.0, 1000),
        control.damping(),
    )
    alpha = 2 * math.sqrt(mu)
    expected = torch.tensor(
        [[damped_oscillator(v, lam, alpha, 5.0) for v, lam in zip(row.tolist(), (mu, 1.0), strict=True)] for row in x0]
    )
    torch.testing.assert_close(run.x[-1], expected, rtol=1e-8, atol=1e-10)


def test_control_initial_state_and_gap(f64):
    control = QuadraticControl()
    x0 = control.initial_positions(31003)
    assert x0.shape == (16, 2)
    assert control.kappa == pytest.approx(100.0)
    assert control.relative_gap(x0, x0).item() == pytest.approx(1.0)
    assert control.relative_gap(0.5 * x0, x0).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="0 < mu <= L"):
        QuadraticControl(mu=2.0, L=1.0)
