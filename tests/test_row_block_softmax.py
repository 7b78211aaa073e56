"""The materialised causal softmax averages of several value groups against a dense float64 softmax:
values, the row log-normaliser, gradients (rebuilt groups and the keys as a group included), what is
kept for the backward pass, and the layout of the averages."""

from __future__ import annotations

import pytest
import torch

from sympformer.benchmarking import saved_storages
from sympformer.rebuilt import Rebuilt
from sympformer.row_block_softmax import _RowBlockAverage, causal_averages
from sympformer.softmax_ops import row_blocks_serve


def dense_averages(q, k, values, scale):
    scores = scale * q @ k.mT
    scores = scores.masked_fill(torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1), float("-inf"))
    return [torch.softmax(scores, -1) @ v for v in values], torch.logsumexp(scores, -1)


def heads_view(batch, heads, length, width, generator, dtype=torch.float64):
    """(batch, heads, length, width) as the attention's heads lie: a transposed view of (batch, length, heads·width)."""
    flat = torch.randn(batch, length, heads * width, generator=generator, dtype=dtype)
    return flat.view(batch, length, heads, width).transpose(1, 2).requires_grad_(True)


@pytest.mark.parametrize("length, block", [(70, 32), (64, 64), (5, 128)])
@pytest.mark.parametrize("layout", ["heads view", "contiguous", "three-dimensional"])
def test_averages_and_normaliser_equal_dense_softmax_with_gradients(length, block, layout):
    """Groups of widths 4, 7 and 4 (= q's) over rows that fill the blocks partly, exactly and not at all."""
    g = torch.Generator().manual_seed(0)
    if layout == "heads view":
        q, k, a, b, c = (heads_view(2, 3, length, w, g) for w in (4, 4, 4, 7, 4))
    else:
        shape = (2, 3) if layout == "contiguous" else (6,)
        q, k, a, b, c = (
            torch.randn(*shape, length, w, generator=g, dtype=torch.float64).requires_grad_(True)
            for w in (4, 4, 4, 7, 4)
        )
    recipes = (None, None, None)
    *averages, log_norm = _RowBlockAverage.apply(q, k, 0.6, block, recipes, a, b, c)
    wanted, wanted_log_norm = dense_averages(q, k, (a, b, c), 0.6)
    for got, want in zip(averages, wanted, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    torch.testing.assert_close(log_norm, wanted_log_norm, rtol=0, atol=1e-13)
    weights = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in wanted]
    loss = lambda outs: sum((o * w).sum() for o, w in zip(outs, weights, strict=True))
    grads = torch.autograd.grad(loss(averages), (q, k, a, b, c))
    wanted_grads = torch.autograd.grad(loss(wanted), (q, k, a, b, c))
    for got, want in zip(grads, wanted_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_rebuilt_group_and_keys_as_a_group_give_the_formed_gradients():
    """H1's groups [w, k, dk, s·w]: the keys themselves as a value group (their value gradient added to
    the keys' own, no separate buffer) and two rebuilt groups whose recipes' inputs need gradients."""
    g = torch.Generator().manual_seed(1)
    batch, heads, length, width = 2, 2, 40, 4
    q, k, w = (heads_view(batch, heads, length, width, g) for _ in range(3))
    u = torch.randn(batch, length, heads * width, generator=g, dtype=torch.float64, requires_grad=True)
    w_k = torch.randn(heads * width, heads * width, generator=g, dtype=torch.float64, requires_grad=True)
    split = lambda t: t.view(*t.shape[:2], heads, width).transpose(1, 2)
    directional = lambda u, w_k: split(u @ w_k.mT)
    scaled = lambda u, w: u.square().sum(-1)[:, None, :, None] * w
    pieces = [w, k, Rebuilt(directional, (u, w_k), width), Rebuilt(scaled, (u, w), width)]
    averages = causal_averages(q, k, pieces, 0.5, block=16)
    wanted, _ = dense_averages(q, k, (w, k, directional(u, w_k), scaled(u, w)), 0.5)
    weights = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in wanted]
    loss = lambda outs: sum((o * c).sum() for o, c in zip(outs, weights, strict=True))
    wrt = (q, k, w, u, w_k)
    for got, want in zip(torch.autograd.grad(loss(averages), wrt), torch.autograd.grad(loss(wanted), wrt), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda q, k, u: causal_averages(q, k, [k, Rebuilt(directional, (u, w_k), width)], 0.5, block=16),
        tuple(x.detach().requires_grad_(True) for x in (q[:, :, :20], k[:, :, :20], u[:, :20])),
    )


def test_keeps_the_inputs_and_averages_not_a_rebuilt_group_nor_the_scores():
    """Kept for the backward pass: q, k, a plain group, a rebuilt group's recipe inputs, each average
    and L; not the rebuilt group itself, nor any score block."""
    g = torch.Generator().manual_seed(2)
    q, k, w = (torch.randn(2, 3, 64, 4, generator=g, requires_grad=True) for _ in range(3))
    u = torch.randn(2, 3, 64, 5, generator=g, requires_grad=True)
    weight = torch.randn(6, 5, generator=g, requires_grad=True)
    rebuilt = Rebuilt(lambda u, weight: u @ weight.mT, (u, weight), 6)
    kept = saved_storages(lambda: causal_averages(q, k, [w, rebuilt], 1.0, block=16))
    column = 2 * 3 * 64 * 4  # bytes of one float32 column of (2, 3, 64, ·)
    inputs = column * (4 + 4 + 4 + 5) + weight.numel() * 4
    assert sum(kept.values()) == inputs + column * (4 + 6) + column  # + the averages (4 and 6 wide) + L


def test_averages_lie_as_the_heads_do_so_that_merging_them_is_a_view():
    g = torch.Generator().manual_seed(3)
    q, k, w, v = (heads_view(2, 4, 32, 8, g, dtype=torch.float32) for _ in range(4))
    for average in causal_averages(q, k, [w, v], 1.0, block=16):
        merged = average.transpose(1, 2).reshape(2, 32, 32)
        assert merged.data_ptr() == average.data_ptr() and merged._base is not None


def test_serves_several_groups_of_a_causal_cpu_call_in_float32_or_float64_only():
    q = torch.randn(1, 2, 8, 4)
    assert row_blocks_serve(q, q, [4, 4], causal=True)
    assert row_blocks_serve(q.double(), q.double(), [4, 1], causal=True)
    assert not row_blocks_serve(q, q, [4], causal=True)  # one group as wide as q: the fused kernel
    assert not row_blocks_serve(q, q, [4, 4], causal=False)
    assert not row_blocks_serve(q, q[:, :, :5], [4, 4], causal=True)  # keys other than the queries' positions
    assert not row_blocks_serve(q, q, [4, 4], causal=True, dropout_p=0.1)
    assert not row_blocks_serve(q.bfloat16(), q.bfloat16(), [4, 4], causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not row_blocks_serve(q, q, [4, 4], causal=True)
