"""Elliptical preservation: the accelerated linear system under several schemes against the
matrix-ODE oracle (affine representation), the generic affine check, and the samplers."""

from __future__ import annotations

import pytest
import torch

from helpers import random_spd, random_symmetric
from sympformer.integrators import Damping, get_scheme, integrate, mesh
from sympformer.particles import (
    AcceleratedSoftmaxSystem,
    LinearAttention,
    MomentLinearAttention,
    SoftmaxGeometry,
    affine_residual,
    evolve_representation,
    predicted_law,
    sample_elliptical,
    sample_mean,
    sample_scatter,
    tyler_scatter,
)

D = 3
NESTEROV = Damping("log", c_log=3.0, t0=1.0)


@pytest.fixture
def cloud(f64):
    """N = 400 multivariate-t particles (ν = 5) in d = 3 with an affine initial velocity field."""
    g = torch.Generator().manual_seed(7)
    scatter = random_spd(D, g)
    x0 = sample_elliptical(400, [0.3, -0.2, 0.1], scatter, radial="t", nu=5.0, generator=g)
    A = 0.2 * random_spd(D, g)  # positive definite kernel: a positive kinetic energy
    V = -random_spd(D, g)  # negative definite: a convex potential energy
    L = 0.3 * random_symmetric(D, g)
    c = torch.tensor([0.1, 0.0, -0.1])
    return LinearAttention(A, V), x0, scatter, L, c


SCHEMES = [
    "euler",
    "kick_drift",
    "exp_euler",
    "half_damped_euler",
    "strang_doubling",
    "ab2",
    "etd_ab2",
    "rk4",
]


@pytest.mark.parametrize("name", SCHEMES)
def test_scheme_matches_its_matrix_ode_analogue(cloud, name):
    system, x0, _, L, c = cloud
    scheme = get_scheme(name)
    times = mesh(1.0, 2.0, 40)
    y0 = x0 @ L.T + c
    particles = integrate(scheme, system, x0, y0, times, NESTEROV)
    r_x, r_y = evolve_representation(system, x0, L, c, scheme, times, NESTEROV)
    scale = particles.x[-1].abs().max()
    assert (particles.x[-1] - MomentLinearAttention.particles(x0, r_x)).abs().max() / scale <= 1e-10
    assert (particles.p[-1] - MomentLinearAttention.particles(x0, r_y)).abs().max() / scale <= 1e-10
    assert affine_residual(x0, particles.x[-1]) < 1e-12


def test_continuous_matrix_ode_agrees_with_refined_particles(cloud):
    """RK4 on the matrix ODE with dt and dt/2 agree to O(dt⁴), and each equals the particle run."""
    system, x0, scatter, L, c = cloud
    rk4 = get_scheme("rk4")
    coarse, _ = evolve_representation(system, x0, L, c, rk4, mesh(1.0, 3.0, 200), NESTEROV)
    fine, _ = evolve_representation(system, x0, L, c, rk4, mesh(1.0, 3.0, 400), NESTEROV)
    assert (coarse - fine).abs().max() < 1e-9
    particles = integrate(rk4, system, x0, x0 @ L.T + c, mesh(1.0, 3.0, 400), NESTEROV).x[-1]
    assert (particles - MomentLinearAttention.particles(x0, fine)).abs().max() < 1e-12
    mean_t, scatter_t = predicted_law(fine, sample_mean(x0), sample_scatter(x0))
    torch.testing.assert_close(sample_mean(particles), mean_t, rtol=0, atol=1e-12)
    torch.testing.assert_close(sample_scatter(particles), scatter_t, rtol=0, atol=1e-12)


def test_first_order_linear_attention_preserves_the_family(cloud):
    system, x0, *_ = cloud
    x = x0
    for _ in range(30):
        x = x + 0.05 * system.classical(x)
    assert affine_residual(x0, x) < 1e-12


def test_softmax_attention_fails_the_preservation_check(cloud, f64):
    """The same check must fail for a flow that does not keep elliptical laws elliptical."""
    _, x0, *_ = cloud
    g = torch.Generator().manual_seed(8)
    system = AcceleratedSoftmaxSystem(SoftmaxGeometry(random_symmetric(D, g, 0.3), random_spd(D, g)))
    moved = integrate(get_scheme("rk4"), system, x0, torch.zeros_like(x0), mesh(1.0, 2.0, 20), NESTEROV).x[-1]
    assert affine_residual(x0, moved) > 1e-4


def test_a_non_elliptical_start_is_still_moved_affinely_but_is_not_elliptical(cloud):
    """Preservation is a property of the flow (affine), checked on a uniform-cube start too."""
    system, *_ = cloud
    g = torch.Generator().manual_seed(9)
    x0 = torch.rand(300, D, generator=g, dtype=torch.float64)
    moved = integrate(get_scheme("ab2"), system, x0, x0.clone(), mesh(1.0, 2.0, 20), NESTEROV).x[-1]
    assert affine_residual(x0, moved) < 1e-12


@pytest.mark.parametrize("radial", ["gaussian", "t", "custom"])
def test_samplers_recover_location_and_scatter(f64, radial):
    g = torch.Generator().manual_seed(10)
    mean = torch.tensor([1.0, -2.0])
    scatter = torch.tensor([[2.0, 0.6], [0.6, 1.0]])
    law = (lambda n, gen: torch.rand(n, generator=gen, dtype=torch.float64) ** 0.5) if radial == "custom" else radial
    x = sample_elliptical(40000, mean, scatter, radial=law, nu=6.0, generator=g)
    torch.testing.assert_close(sample_mean(x), mean, rtol=0, atol=0.05)
    second_moment = {"gaussian": 2.0, "t": 2.0 * 6.0 / 4.0, "custom": 0.5}[radial]  # E[r²]
    torch.testing.assert_close(sample_scatter(x, second_moment), scatter, rtol=0.05, atol=0.05)
    shape = tyler_scatter(x, center=mean)
    torch.testing.assert_close(shape, scatter * 2 / torch.trace(scatter), rtol=0.05, atol=0.03)


def test_sampler_rejects_bad_input(f64):
    with pytest.raises(ValueError, match="scatter must be"):
        sample_elliptical(5, [0.0, 0.0], torch.eye(3))
    with pytest.raises(ValueError, match="unknown radial law"):
        sample_elliptical(5, [0.0, 0.0], torch.eye(2), radial="cauchy")
