"""Linear attention: Hamilton's equations, the Stein-flow identity, fast = dense, Stein flows."""

from __future__ import annotations

import pytest
import torch

from helpers import random_spd, random_symmetric
from sympformer.particles import (
    BilinearKernel,
    LinearAttention,
    QuadraticPotential,
    RBFKernel,
    stein_potential_flow,
    svgd_flow,
)

N, D = 9, 3


@pytest.fixture
def setup(f64):
    g = torch.Generator().manual_seed(4)
    system = LinearAttention(random_symmetric(D, g, 0.5), random_symmetric(D, g))
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randn(N, D, generator=g, dtype=torch.float64)
    return system, x, y


def loop_hamiltonian(A, V, x, y):
    n = x.shape[0]
    kinetic = sum((x[i] @ A @ x[j]) * (y[i] @ y[j]) for i in range(n) for j in range(n)) / (2 * n)
    return kinetic - 0.5 * sum(x[i] @ V @ x[i] for i in range(n))


def test_accelerated_linear_system_is_hamiltons_equations(setup):
    system, x, y = setup
    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    dH_dx, dH_dy = torch.autograd.grad(loop_hamiltonian(system.A, system.V, xg, yg), (xg, yg))
    ev = system(x, y)
    torch.testing.assert_close(ev.velocity, dH_dy, rtol=0, atol=1e-12)
    torch.testing.assert_close(ev.force, -dH_dx, rtol=0, atol=1e-12)
    torch.testing.assert_close(system.hamiltonian(x, y), loop_hamiltonian(system.A, system.V, x, y))


def test_linear_attention_is_the_stein_flow_of_the_potential(setup):
    system, x, _ = setup
    stein = stein_potential_flow(BilinearKernel(system.A), QuadraticPotential(-system.V))
    torch.testing.assert_close(system.classical(x), stein(x), rtol=0, atol=1e-13)
    loops = torch.stack([sum((x[i] @ system.A @ x[j]) * system.V @ x[j] for j in range(N)) / N for i in range(N)])
    torch.testing.assert_close(system.classical(x), loops, rtol=0, atol=1e-13)


def test_momentum_equal_to_minus_gradient_gives_classical_velocity(setup):
    """Setting Y = −∇U(X) = V X in the accelerated velocity recovers linear attention (notes §3.1)."""
    system, x, _ = setup
    torch.testing.assert_close(system(x, x @ system.V.T).velocity, system.classical(x), rtol=0, atol=1e-13)


def test_fast_equals_dense(setup):
    system, x, y = setup
    dense = LinearAttention(system.A, system.V, dense=True)
    torch.testing.assert_close(system.classical(x), dense.classical(x), rtol=0, atol=1e-12)
    ev, ev_dense = system(x, y), dense(x, y)
    torch.testing.assert_close(ev.velocity, ev_dense.velocity, rtol=0, atol=1e-12)
    torch.testing.assert_close(ev.force, ev_dense.force, rtol=0, atol=1e-12)


def test_svgd_with_rbf_kernel_matches_loops(f64):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64)
    potential = QuadraticPotential(random_spd(2, g))
    ell = 0.7
    flow = svgd_flow(RBFKernel(ell), potential)

    def k(a, b):
        return torch.exp(-((a - b) ** 2).sum() / (2 * ell**2))

    expected = []
    for i in range(6):
        total = torch.zeros(2, dtype=torch.float64)
        for j in range(6):
            xj = x[j].clone().requires_grad_(True)
            (grad_k,) = torch.autograd.grad(k(x[i], xj), xj)  # ∇_{x_j} k(x_i, x_j)
            total = total - k(x[i], x[j]) * potential.grad(x[j : j + 1])[0] + grad_k
        expected.append(total / 6)
    torch.testing.assert_close(flow(x), torch.stack(expected), rtol=0, atol=1e-13)


def test_svgd_moves_particles_towards_the_gaussian_target(f64):
    """SVGD for a Gaussian target: the particle mean converges to the target mean (Pyro-style check)."""
    g = torch.Generator().manual_seed(6)
    x = 3 + torch.randn(60, 2, generator=g, dtype=torch.float64)
    flow = svgd_flow(RBFKernel(1.0), QuadraticPotential(torch.eye(2, dtype=torch.float64), center=[0.5, -0.5]))
    for _ in range(800):
        x = x + 0.1 * flow(x)
    torch.testing.assert_close(x.mean(0), torch.tensor([0.5, -0.5], dtype=torch.float64), rtol=0, atol=0.05)
    var = x.var(0)
    assert bool((var > 0.5).all()) and bool((var < 1.3).all()), var  # repulsion keeps the spread near 1


def test_linear_validation(f64):
    with pytest.raises(ValueError, match="V must be symmetric"):
        LinearAttention(torch.eye(2), torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    system = LinearAttention(torch.eye(2), torch.tensor([[0.0, 1.0], [0.0, 0.0]]), symmetric=False)
    with pytest.raises(ValueError, match="needs symmetric"):
        system.hamiltonian(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="bandwidth"):
        RBFKernel(0.0)
