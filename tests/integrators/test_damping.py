"""Damping schedules: η, α = dη/dt, exact factors, clipping, validation."""

from __future__ import annotations

import math

import pytest
import torch

from sympformer.integrators import Damping, phi1


@pytest.mark.parametrize(
    ("mode", "eta"),
    [
        ("none", lambda t: 0.0),
        ("constant", lambda t: 0.9 * (t - 0.5)),
        ("linear", lambda t: 0.7 * (t - 0.5)),
        ("log", lambda t: 3.0 * math.log(t / 0.5)),
        ("loglin", lambda t: 3.0 * math.log(t / 0.5) + 0.7 * (t - 0.5)),
    ],
)
def test_eta_alpha_and_factor(f64, mode, eta):
    damping = Damping(mode, c_log=3.0, c_lin=0.7, alpha=0.9, t0=0.5)
    for t in (0.6, 1.0, 3.7):
        assert damping.eta(t).item() == pytest.approx(eta(t), abs=1e-14)
        finite_difference = (eta(t + 1e-6) - eta(t - 1e-6)) / 2e-6
        assert damping.alpha_at(t).item() == pytest.approx(finite_difference, abs=1e-7)
        assert damping.factor(t, 0.3).item() == pytest.approx(math.exp(-(eta(t + 0.3) - eta(t))), rel=1e-14)


def test_nesterov_schedule_has_alpha_three_over_t(f64):
    damping = Damping("log", c_log=3.0, t0=1.0)
    assert damping.alpha_at(4.0).item() == pytest.approx(0.75)
    assert damping.factor(1.0, 1.0).item() == pytest.approx(2.0**-3)


def test_clip_freezes_eta_and_zeroes_alpha(f64):
    damping = Damping("log", c_log=3.0, t0=1.0, eta_clip=3.0)
    assert damping.eta(100.0).item() == pytest.approx(3.0)
    assert damping.alpha_at(100.0).item() == 0.0
    assert damping.alpha_at(1.5).item() == pytest.approx(2.0)


def test_learned_coefficients_and_step_keep_gradients(f64):
    c_log = torch.tensor(3.0, requires_grad=True)
    h = torch.tensor(0.5, requires_grad=True)
    factor = Damping("log", c_log=c_log).factor(1.0, h)
    factor.backward()
    assert c_log.grad is not None and h.grad is not None
    assert h.grad.item() == pytest.approx(-3.0 / 1.5 * factor.item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_damp_keeps_the_damped_momentum_only(dtype):
    """damp(p, Δη) = e^{−Δη} p bitwise; its gradients are the plain product's (to rounding); for the backward
    pass it keeps the damped momentum (and the 0-d factor), never the incoming p."""
    from sympformer.benchmarking import saved_storages
    from sympformer.integrators.damping import damp

    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 5, 4, generator=g, dtype=dtype, requires_grad=True)
    delta = torch.tensor(0.37, dtype=dtype, requires_grad=True)
    weight = torch.randn(3, 5, 4, generator=g, dtype=dtype)
    damped = damp(p, delta)
    assert torch.equal(damped, torch.exp(-delta) * p)
    grads = torch.autograd.grad((damped * weight).sum(), (p, delta))
    plain = torch.autograd.grad((torch.exp(-delta) * p * weight).sum(), (p, delta))
    tolerance = dict(rtol=1e-12, atol=0) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for ours, reference in zip(grads, plain, strict=True):
        torch.testing.assert_close(ours, reference, **tolerance)
    kept = saved_storages(lambda: damp(p, delta))
    assert p.untyped_storage().data_ptr() not in kept
    assert sorted(kept.values()) == [delta.element_size(), p.numel() * p.element_size()]
    with torch.no_grad():  # and without a gradient to Δη it is the plain product
        assert torch.equal(damp(p, delta), torch.exp(-delta) * p)


def test_phi1_is_smooth_through_zero(f64):
    a = torch.tensor([-1e-3, -1e-6, 0.0, 1e-6, 1e-3, 2.0])
    exact = torch.tensor([-math.expm1(-v) / v if v != 0 else 1.0 for v in a.tolist()])
    torch.testing.assert_close(phi1(a), exact, rtol=1e-12, atol=0)


def test_bad_schedules_are_named():
    with pytest.raises(ValueError, match="valid modes: none, constant, linear, log, loglin"):
        Damping("cosine")
    with pytest.raises(ValueError, match="t0 > 0"):
        Damping("log", t0=0.0)
    with pytest.raises(ValueError, match="t > 0"):
        Damping("log").eta(-1.0)
    with pytest.raises(ValueError, match="eta_clip"):
        Damping("log", eta_clip=-1.0)
