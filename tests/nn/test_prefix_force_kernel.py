"""The materialised prefix-force pass against a dense float64 softmax written with plain autograd ops:
values, gradients for every subset of outputs used, ragged row blocks, extreme scores; and whole v1
models the same on both of the oracle's paths (the materialised pass and two flash calls; the oracle
itself is checked on both against a dense loop in test_v1.py)."""

from __future__ import annotations

import itertools

import pytest
import torch

from sympformer.nn import SympFormerConfig, SympFormerLM, v1_oracles
from sympformer.nn.prefix_force_kernel import materialised_applies, prefix_force, prefix_log_normaliser


def dense_scores(q, k, scale):
    """The whole causal T × T score matrix (−inf above the diagonal) and its row logsumexp L."""
    length = q.shape[-2]
    scores = (scale * q @ k.mT).masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    return scores, torch.logsumexp(scores, -1)


def dense_prefix_force(q, k, w, b, scale):
    """(g, L) of the kernel's docstring from the dense scores, by autograd: g_i = (1/(2i)) Σ_j E_ij
    (s_i + s_j + 2) w_j with s_j = b_j / z_j², z_j = e^{L_j} / j, as a double sum over (i, j)."""
    length = q.shape[-2]
    scores, log_norm = dense_scores(q, k, scale)
    positions = torch.arange(1, length + 1, dtype=q.dtype)
    s = b * (positions * torch.exp(-log_norm)).square()
    pair_weight = torch.exp(scores) * (s.unsqueeze(-1) + s.unsqueeze(-2) + 2)  # E_ij (s_i + s_j + 2)
    return (pair_weight @ w) / (2 * positions.unsqueeze(-1)), log_norm


def inputs(length=37, width=8, dtype=torch.float64, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k, w = (spread * torch.randn(2, length, width, generator=g, dtype=dtype) for _ in range(3))
    b = torch.rand(2, length, generator=g, dtype=dtype)
    return [t.requires_grad_(True) for t in (q, k, w, b)]


def weighted_sum(outputs, used, seed=5):
    """Σ ⟨weights, out⟩ over the used outputs, the same weights in any dtype (drawn in float64)."""
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(out.shape, generator=g, dtype=torch.float64) for out in outputs]
    return sum((out * weight.to(out.dtype)).sum() for out, weight, u in zip(outputs, weights, used, strict=True) if u)


@pytest.mark.parametrize("length,block", [(37, 16), (37, 128), (1, 4), (32, 8)])
def test_force_and_normaliser_equal_dense_softmax(length, block):
    q, k, w, b = inputs(length)
    got = prefix_force(q, k, w, b, 0.3, block)
    want = dense_prefix_force(q, k, w, b, 0.3)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-13)


@pytest.mark.parametrize("used", [u for u in itertools.product([True, False], repeat=2) if any(u)])
def test_gradients_equal_dense_softmax_for_every_subset_of_outputs(used):
    """An unused output reaches the backward pass as None."""
    q, k, w, b = inputs()
    unused_is_zero = dict(allow_unused=True, materialize_grads=True)  # w and b move nothing without g
    got = prefix_force(q, k, w, b, 0.3, 16)
    grads = torch.autograd.grad(weighted_sum(got, used), (q, k, w, b), **unused_is_zero)
    want = torch.autograd.grad(weighted_sum(dense_prefix_force(q, k, w, b, 0.3), used), (q, k, w, b), **unused_is_zero)
    for g, r in zip(grads, want, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


def test_normaliser_alone_equals_logsumexp_with_gradients():
    q, k, _, _ = inputs(length=21)
    log_norm = prefix_log_normaliser(q, k, 0.3, block=8)
    want = dense_scores(q, k, 0.3)[1]
    torch.testing.assert_close(log_norm, want, rtol=0, atol=1e-13)
    grads = torch.autograd.grad(weighted_sum([log_norm], [True]), (q, k))
    for g, r in zip(grads, torch.autograd.grad(weighted_sum([want], [True]), (q, k)), strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


def test_passes_gradcheck():
    q, k, w, b = inputs(length=11, width=3)
    assert torch.autograd.gradcheck(lambda *t: prefix_force(*t, 0.7, 4), (q, k, w, b))
    assert torch.autograd.gradcheck(lambda q, k: prefix_log_normaliser(q, k, 0.7, 4), (q, k))


def assert_float32_tracks_float64(fn, reference, inputs64):
    """fn on float32 copies of the inputs: outputs and the gradients of a weighted sum of them finite and
    within 1e-4 (outputs) and 1e-3 (gradients) of ``reference`` in float64, relative to each one's largest entry."""
    single = [t.detach().float().requires_grad_(True) for t in inputs64]
    got, want = fn(*single), reference(*inputs64)
    for g, r in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4 * r.abs().max().item())
    grads = torch.autograd.grad(weighted_sum(got, [True] * len(got)), single)
    want_grads = torch.autograd.grad(weighted_sum(want, [True] * len(want)), inputs64)
    for g, r in zip(grads, want_grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), r, rtol=1e-3, atol=1e-3 * r.abs().max().item())


def test_float32_normaliser_at_extreme_scores_tracks_float64():
    """Scores spread over hundreds of nats and up to ≈ +860 (e^S would overflow even float64's range
    without the row maxima, which keep every exponent ≤ 0): L and its gradients in float32."""
    q, k, _, _ = inputs(length=40, spread=6.0)
    with torch.no_grad():
        q, k = (torch.cat([t, torch.full_like(t[..., :1], 20.0)], -1).requires_grad_(True) for t in (q, k))
    scores, log_norm = dense_scores(q, k, 1.0)
    finite = scores[torch.isfinite(scores)]
    assert finite.max() - finite.min() > 500 and log_norm.max() > 709  # e^709 ≈ float64's largest
    assert_float32_tracks_float64(
        lambda q, k: (prefix_log_normaliser(q, k, 1.0, 16),), lambda q, k: (dense_scores(q, k, 1.0)[1],), (q, k)
    )


def test_float32_force_with_rows_spread_over_hundreds_of_nats_tracks_float64():
    """Each row's scores spread over hundreds of nats (most of P underflows to 0) while a per-row shift
    (one more column: a_i in q, 1 in k) puts every row's maximum at 5, so that z = e^L / i and
    s = b / z² are representable in float32 (g holds both: any implementation needs L within ≈ [−44, 88])."""
    q, k, w, b = inputs(length=40, spread=6.0)
    with torch.no_grad():
        scores = dense_scores(q, k, 1.0)[0]
        shift = 5.0 - scores.amax(-1, keepdim=True)
        q = torch.cat([q, shift], -1).requires_grad_(True)
        k = torch.cat([k, torch.ones_like(k[..., :1])], -1).requires_grad_(True)
        scores = dense_scores(q, k, 1.0)[0]
        row_spread = scores.amax(-1) - scores.masked_fill(torch.isinf(scores), float("inf")).amin(-1)
    assert row_spread.max() > 300 and torch.allclose(scores.amax(-1), torch.full_like(scores[..., 0], 5.0))
    assert_float32_tracks_float64(
        lambda *t: prefix_force(*t, 1.0, 16), lambda *t: dense_prefix_force(*t, 1.0), (q, k, w, b)
    )


def test_applies_on_cpu_in_float_precision_outside_autocast_only():
    q = torch.randn(2, 5, 4)
    assert materialised_applies(q) and materialised_applies(q.double())
    assert not materialised_applies(q.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not materialised_applies(q)


def flash_only(monkeypatch):
    monkeypatch.setattr(v1_oracles, "materialised_applies", lambda q: False)


@pytest.mark.parametrize("arch", ["v1_fe", "v1_pe", "v1_doubling"])
def test_v1_model_loss_and_gradients_are_the_same_on_both_paths(arch, monkeypatch):
    """Whole models (for fe, the last layer needs L alone) in float64."""
    config = SympFormerConfig(vocab_size=31, n_layer=3, n_head=2, n_embd=8, block_size=16, arch=arch)
    idx = torch.randint(0, 31, (2, 12), generator=torch.Generator().manual_seed(0))
    results = []
    for patch in (False, True):
        if patch:
            flash_only(monkeypatch)
        torch.manual_seed(0)
        model = SympFormerLM(config).double()
        _, loss = model(idx, idx)
        loss.backward()
        results.append((loss.detach(), [q.grad for q in model.parameters()]))
    (loss_m, grads_m), (loss_f, grads_f) = results
    torch.testing.assert_close(loss_m, loss_f, rtol=0, atol=1e-12)
    for got, want in zip(grads_m, grads_f, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
