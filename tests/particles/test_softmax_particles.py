"""Softmax particle lab against independent references: autograd of the energies written as plain
double sums, the dense kernel, and Hamilton's equations."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import random_spd, random_symmetric
from sympformer.particles import (
    AcceleratedSoftmaxSystem,
    ClassicalSoftmaxFlow,
    QuadraticPotential,
    SoftmaxGeometry,
)

N, D = 7, 3


@pytest.fixture
def setup(f64):
    g = torch.Generator().manual_seed(1)
    geometry = SoftmaxGeometry(random_symmetric(D, g, 0.4), random_spd(D, g))
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randn(N, D, generator=g, dtype=torch.float64)
    return geometry, x, y


def kernel_sum_energy(A, x):
    """E^sum(X) = −½ Σ_ij exp(x_iᵀ A x_j), written as a double loop (notes §1.2, sum convention)."""
    total = x.new_zeros(())
    for i in range(x.shape[0]):
        for j in range(x.shape[0]):
            total = total - 0.5 * torch.exp(x[i] @ A @ x[j])
    return total


def loop_hamiltonian(geometry, x, y, potential=None):
    """H = ½ Σ_i ⟨y_i, B y_i⟩ / z_i + U, z_i = (1/N) Σ_j e^{x_iᵀAx_j}, U = N·E(ρ_N), by loops."""
    n = x.shape[0]
    z = [sum(torch.exp(x[i] @ geometry.A @ x[j]) for j in range(n)) / n for i in range(n)]
    kinetic = sum(0.5 * (y[i] @ geometry.B @ y[i]) / z[i] for i in range(n))
    if potential is None:
        return kinetic + kernel_sum_energy(geometry.A, x) / n
    return kinetic + potential.value(x)


@pytest.mark.parametrize("dense", [False, True])
def test_classical_flow_is_metric_gradient_flow(setup, dense):
    geometry, x, _ = setup
    x = x.clone().requires_grad_(True)
    (grad_sum,) = torch.autograd.grad(kernel_sum_energy(geometry.A, x), x)
    z_sum = torch.exp(x @ geometry.A @ x.T).sum(-1, keepdim=True).detach()
    expected = -(grad_sum @ geometry.B) / z_sum  # Γ_i = −(1/z_i^sum) B ∇_{x_i} E^sum (notes §1.2)
    gamma = ClassicalSoftmaxFlow(geometry, dense=dense)(x.detach())
    torch.testing.assert_close(gamma, expected, rtol=0, atol=1e-12)


def test_classical_flow_is_attention_with_value_matrix(setup):
    geometry, x, _ = setup
    expected = torch.stack(
        [sum(torch.softmax(x[i] @ geometry.A @ x.T, 0)[j] * geometry.V @ x[j] for j in range(N)) for i in range(N)]
    )
    torch.testing.assert_close(ClassicalSoftmaxFlow(geometry)(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("external", [False, True])
def test_accelerated_rhs_is_hamiltons_equations(setup, dense, external):
    geometry, x, y = setup
    potential = QuadraticPotential(torch.diag(torch.tensor([0.5, 1.0, 2.0]))) if external else None
    system = AcceleratedSoftmaxSystem(geometry, potential, dense=dense)
    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    dH_dx, dH_dy = torch.autograd.grad(loop_hamiltonian(geometry, xg, yg, potential), (xg, yg))
    ev = system(x, y)
    torch.testing.assert_close(ev.velocity, dH_dy, rtol=0, atol=1e-11)
    torch.testing.assert_close(ev.force, -dH_dx, rtol=0, atol=1e-11)
    torch.testing.assert_close(ev.velocity_map(2 * y), 2 * dH_dy, rtol=0, atol=1e-11)
    torch.testing.assert_close(system.hamiltonian(x, y), loop_hamiltonian(geometry, x, y, potential).detach())


def test_accelerated_force_matches_notes_closed_form(setup):
    """ẏ_i = (1/(2N)) Σ_j M_ij (s_i + s_j + 2) A x_j with s_i = ⟨y_i, B y_i⟩ / z_i² (notes §2.1)."""
    geometry, x, y = setup
    M = torch.exp(x @ geometry.A @ x.T)
    z = M.mean(-1)
    s = (y * (y @ geometry.B)).sum(-1) / z**2
    expected = torch.stack(
        [sum(M[i, j] * (s[i] + s[j] + 2) * geometry.A @ x[j] for j in range(N)) / (2 * N) for i in range(N)]
    )
    torch.testing.assert_close(AcceleratedSoftmaxSystem(geometry)(x, y).force, expected, rtol=0, atol=1e-12)


def test_fast_path_equals_dense_reference_batched(f64):
    g = torch.Generator().manual_seed(2)
    geometry = SoftmaxGeometry(random_symmetric(4, g, 0.5), random_spd(4, g))
    x = torch.randn(3, 50, 4, generator=g, dtype=torch.float64)
    y = torch.randn(3, 50, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(geometry.log_partition(x), geometry.log_partition(x, dense=True), rtol=0, atol=1e-10)
    fast, dense = ClassicalSoftmaxFlow(geometry), ClassicalSoftmaxFlow(geometry, dense=True)
    torch.testing.assert_close(fast(x), dense(x), rtol=0, atol=1e-10)
    ev_fast = AcceleratedSoftmaxSystem(geometry)(x, y)
    ev_dense = AcceleratedSoftmaxSystem(geometry, dense=True)(x, y)
    torch.testing.assert_close(ev_fast.velocity, ev_dense.velocity, rtol=0, atol=1e-10)
    torch.testing.assert_close(ev_fast.force, ev_dense.force, rtol=1e-10, atol=1e-10)


def test_fast_path_stays_finite_for_large_positions(f64):
    g = torch.Generator().manual_seed(3)
    geometry = SoftmaxGeometry(torch.eye(3, dtype=torch.float64), random_spd(3, g))
    x = 20 * torch.randn(40, 3, generator=g, dtype=torch.float64)  # scores up to ~ 2000: e^s overflows
    assert not bool(torch.isfinite(torch.exp(geometry.scores(x)).sum(-1)).all())  # the naive sum overflows
    log_z = geometry.log_partition(x)
    assert bool(torch.isfinite(log_z).all())
    torch.testing.assert_close(log_z, geometry.log_partition(x, dense=True), rtol=1e-13, atol=0)
    gamma = ClassicalSoftmaxFlow(geometry)(x)
    assert bool(torch.isfinite(gamma).all())
    torch.testing.assert_close(gamma, ClassicalSoftmaxFlow(geometry, dense=True)(x), rtol=0, atol=1e-9)
    ev = AcceleratedSoftmaxSystem(geometry, QuadraticPotential(torch.eye(3, dtype=torch.float64)))(x, x)
    assert bool(torch.isfinite(ev.velocity).all())


def test_initial_acceleration_is_metric_times_force(setup):
    geometry, x, _ = setup
    system = AcceleratedSoftmaxSystem(geometry)
    z = torch.exp(x @ geometry.A @ x.T).mean(-1, keepdim=True)
    force = system(x, torch.zeros_like(x)).force
    torch.testing.assert_close(system.initial_acceleration(x), (force @ geometry.B) / z)


def test_energy_is_minus_half_sum_of_partitions(setup):
    geometry, x, _ = setup
    expected = kernel_sum_energy(geometry.A, x) / N
    torch.testing.assert_close(ClassicalSoftmaxFlow(geometry).energy(x), expected)
    assert math.isclose(ClassicalSoftmaxFlow(geometry, dense=True).energy(x).item(), expected.item(), rel_tol=1e-12)


@pytest.mark.parametrize(
    ("A", "B", "message"),
    [
        ([[1.0, 2.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], "A must be symmetric"),
        ([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]], "B must be positive definite"),
        ([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.5], [0.0, 1.0]], "B must be symmetric"),
        ([[1.0, 0.0, 0.0]], [[1.0]], "A must be a square matrix"),
        ([[1.0, 0.0], [0.0, 1.0]], [[1.0]], "same shape"),
    ],
)
def test_bad_geometry_is_named(f64, A, B, message):
    with pytest.raises(ValueError, match=message):
        SoftmaxGeometry(A, B)


def test_mismatched_particles_are_named(setup):
    geometry, x, y = setup
    with pytest.raises(ValueError, match=r"X must have shape \(\.\.\., N, 3\)"):
        ClassicalSoftmaxFlow(geometry)(x[:, :2])
    with pytest.raises(ValueError, match="X and Y must have the same shape"):
        AcceleratedSoftmaxSystem(geometry)(x, y[:3])
