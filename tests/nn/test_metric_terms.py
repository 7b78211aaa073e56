"""The v1 oracle's metric terms b_i = ⟨B_θ p_i, p_i⟩ and (B_θ p_i)·factor_i against the plain formulas
(float64, values and gradients, gradcheck), and what they keep for the backward pass: p, B_θ and the
factor, not B_θ p."""

from __future__ import annotations

import pytest
import torch

from sympformer.nn.v1_oracles import kinetic_terms, metric_drift, metric_velocity


def terms(seed=0, batch=2, length=7, width=5):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(batch, length, width, generator=g, dtype=torch.float64, requires_grad=True)
    b_theta = torch.randn(width, width, generator=g, dtype=torch.float64, requires_grad=True)
    inv_z = torch.rand(batch, length, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    return p, b_theta, inv_z, scale


def plain(p, b_theta, inv_z, scale):
    bp = p @ b_theta.T
    return torch.linalg.vecdot(bp, p), bp * (scale * inv_z).unsqueeze(-1)


def fused(p, b_theta, inv_z, scale, reuse=True):
    kinetic, bp = kinetic_terms(p, b_theta)
    return kinetic, metric_velocity(p, b_theta, (scale * inv_z).unsqueeze(-1), bp if reuse else None)


@pytest.mark.parametrize("reuse", [True, False])
def test_values_and_gradients_equal_the_plain_formulas(reuse):
    inputs = terms()
    got, want = fused(*inputs, reuse=reuse), plain(*inputs)
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in want]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    grads = torch.autograd.grad(sum((t * w).sum() for t, w in zip(got, weights, strict=True)), inputs)
    want_grads = torch.autograd.grad(sum((t * w).sum() for t, w in zip(want, weights, strict=True)), inputs)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_gradcheck():
    inputs = terms(length=3, width=3)
    assert torch.autograd.gradcheck(lambda *t: fused(*t), inputs)
    assert torch.autograd.gradcheck(lambda *t: fused(*t, reuse=False), inputs)


def saved_bytes_besides(fn, *kept_anyway) -> int:
    """Bytes of the storages that fn's graph keeps for the backward pass, other than those of ``kept_anyway``."""
    known = {t.untyped_storage().data_ptr() for t in kept_anyway}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in known:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(kept.values())


def test_keeps_p_and_the_metric_not_their_product():
    """Besides p and B_θ: per-token factors only (inv_z and the factor, (B, T) each, and 0-d scales),
    where the plain formulas keep the (B, T, C) product B_θ p too."""
    p, b_theta, inv_z, scale = terms(length=64, width=16)
    per_token = inv_z.untyped_storage().nbytes()
    assert (
        saved_bytes_besides(lambda: fused(p, b_theta, inv_z, scale), p, b_theta) <= 2 * per_token + 16
    )  # + 0-d scales
    assert saved_bytes_besides(lambda: plain(p, b_theta, inv_z, scale), p, b_theta) >= p.untyped_storage().nbytes()


def test_under_autocast_plain_operations():
    p, b_theta, inv_z, scale = (t.detach().float() for t in terms())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = fused(p, b_theta, inv_z, scale), plain(p, b_theta, inv_z, scale)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def drift_inputs(**shape):
    p, b_theta, inv_z, h = terms(**shape)
    x = torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9), requires_grad=True)
    return x, p, b_theta, inv_z, h


def drift(x, p, b_theta, inv_z, h):
    return metric_drift(x, h, p, b_theta, inv_z.unsqueeze(-1))


def plain_drift(x, p, b_theta, inv_z, h):
    return x + h * ((p @ b_theta.T) * inv_z.unsqueeze(-1))


def test_drift_step_equals_the_plain_formula_and_keeps_no_velocity():
    """X + h (B_θ P') · factor with a learned h (a 0-d tensor with a gradient) against the plain formula:
    values, gradients and gradcheck; and what it keeps: P', B_θ and per-token factors, where the plain
    formula keeps the velocity (B, T, C) too."""
    inputs = drift_inputs()
    torch.testing.assert_close(drift(*inputs), plain_drift(*inputs), rtol=0, atol=1e-13)
    weights = torch.randn(inputs[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = torch.autograd.grad((drift(*inputs) * weights).sum(), inputs)
    want = torch.autograd.grad((plain_drift(*inputs) * weights).sum(), inputs)
    for a, b in zip(grads, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(drift, drift_inputs(length=3, width=3))
    x, p, b_theta, inv_z, h = inputs
    per_token = inv_z.untyped_storage().nbytes()
    assert saved_bytes_besides(lambda: drift(*inputs), p, b_theta) <= 2 * per_token + 16
    assert saved_bytes_besides(lambda: plain_drift(*inputs), p, b_theta) >= p.untyped_storage().nbytes()
