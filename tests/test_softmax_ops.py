"""The fused softmax averages against a dense float64 softmax, and what they keep for the backward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sympformer.benchmarking import saved_storages
from sympformer.softmax_ops import softmax_average_of, softmax_average_with_normaliser, softmax_log_normaliser


def dense_average(q, k, v, scale, causal):
    scores = scale * q @ k.mT
    if causal:
        scores = scores.masked_fill(torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, -1) @ v


def inputs(widths, dtype=torch.float64, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda d: torch.randn(2, 3, length, d, generator=g, dtype=dtype).requires_grad_(True)
    return [make(d) for d in widths]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("widths", [(4, 4, 4), (4, 4, 3, 5, 8), (9, 9, 2), (6, 6, 6, 6)])
def test_pieces_average_equals_dense_softmax_with_gradients(causal, widths):
    q, k, *pieces = inputs(widths)
    out = softmax_average_of(q, k, pieces, scale=0.7, causal=causal)
    reference = dense_average(q, k, torch.cat(pieces, -1), 0.7, causal)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-13)
    weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((out * weights).sum(), [q, k, *pieces])
    reference_grads = torch.autograd.grad((reference * weights).sum(), [q, k, *pieces])
    for got, want in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_pieces_average_passes_gradcheck():
    q, k, a, b = inputs((3, 3, 2, 5), length=5)
    assert torch.autograd.gradcheck(
        lambda q, k, a, b: softmax_average_of(q, k, [a, b], scale=0.9, causal=True), (q, k, a, b)
    )


def test_pieces_average_keeps_no_padded_copy_for_the_backward_pass():
    """Values 4× wider than q, k: autograd keeps q, k, the pieces, the output and the row normaliser,
    nothing padded to the common width and no concatenation of the pieces."""
    q, k, *pieces = inputs((4, 4, 4, 4, 4, 4), dtype=torch.float32, length=64)
    kept = saved_storages(lambda: softmax_average_of(q, k, pieces, causal=True))
    element = 2 * 3 * 64 * 4  # one (2, 3, 64, 4) float32 tensor, in bytes
    assert sum(kept.values()) <= 6 * element * 4 + 4 * element * 4 + 2 * 3 * 64 * 4  # inputs + out + lse


def test_pieces_average_under_bf16_autocast_tracks_sdpa():
    q, k, a, b = inputs((8, 8, 8, 8), dtype=torch.float32, length=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = softmax_average_of(q, k, [a, b], causal=True)
        reference = F.scaled_dot_product_attention(q, k, torch.cat([a, b], -1), is_causal=True, scale=1.0)
    assert out.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference.float(), rtol=0, atol=2e-2)


def test_masked_average_falls_back_to_sdpa_exactly():
    q, k, v = inputs((4, 4, 6))
    mask = torch.rand(9, 9, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[:, 0] = True  # every query sees a key
    out = softmax_average_of(q, k, [v], scale=0.5, mask=mask)
    scores = (0.5 * q @ k.mT).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ v, rtol=0, atol=1e-13)


@pytest.mark.parametrize("scale", [0.1, 30.0])
def test_sentinel_normaliser_equals_logsumexp(scale):
    q, k, v = inputs((4, 4, 3))
    scores = scale * q @ k.mT
    scores = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
    expected = torch.logsumexp(scores, -1)
    torch.testing.assert_close(softmax_log_normaliser(q, k, scale=scale, causal=True), expected, rtol=1e-12, atol=1e-10)
    average, log_norm = softmax_average_with_normaliser(q, k, v, expected.detach() - 1.0, scale=scale, causal=True)
    torch.testing.assert_close(log_norm, expected, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(average, torch.softmax(scores, -1) @ v, rtol=1e-12, atol=1e-12)
