"""The fused softmax averages against a dense float64 softmax, and what they keep for the backward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sympformer import softmax_ops
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


def rebuilt_case(seed=4):
    """q, k, a plain piece and the inputs of a rebuilt one, m = u Wᵀ scaled by ‖u‖² (float64)."""
    q, k, plain, u = inputs((4, 4, 3, 5), seed=seed)
    weight = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    recipe = lambda u, weight: (u @ weight.mT) * u.square().sum(-1, keepdim=True)
    return q, k, plain, u, weight, recipe


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_rebuilt_piece_equals_the_formed_piece_with_gradients(flash, weight_grad, monkeypatch):
    """A :class:`Rebuilt` piece (formed again in the backward pass) gives the average and the gradients of
    q, k, the other pieces and the recipe's inputs that the formed piece gives, on the CPU kernel and off
    it (float64); an input that needs no gradient gets none."""
    if not flash:
        monkeypatch.setattr(softmax_ops, "_cpu_flash_applies", lambda *args, **kwargs: False)
    q, k, plain, u, weight, recipe = rebuilt_case()
    weight.requires_grad_(weight_grad)
    rebuilt = softmax_ops.Rebuilt(recipe, (u, weight), 6)
    out = softmax_average_of(q, k, [plain, rebuilt], scale=0.8, causal=True)
    formed = softmax_average_of(q, k, [plain, recipe(u, weight)], scale=0.8, causal=True)
    assert torch.equal(out, formed)
    weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(5))
    wrt = [q, k, plain, u] + ([weight] if weight_grad else [])
    grads = torch.autograd.grad((out * weights).sum(), wrt)
    wanted = torch.autograd.grad((formed * weights).sum(), wrt)
    for got, want in zip(grads, wanted, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    assert torch.autograd.gradcheck(
        lambda q, k, plain, u: softmax_average_of(q, k, [softmax_ops.Rebuilt(recipe, (u, weight), 6), plain]),
        (q, k, plain, u),
    )


def test_rebuilt_piece_under_bf16_autocast_is_formed_again_as_before():
    """Under CPU bf16 autocast the recipe's product runs in bfloat16; the backward pass forms the piece
    again under the same autocast, so the gradients equal the formed piece's exactly."""
    q, k, plain, u, weight, recipe = (x.float() if isinstance(x, torch.Tensor) else x for x in rebuilt_case())
    q, k, plain, u, weight = (x.detach().requires_grad_(True) for x in (q, k, plain, u, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = softmax_average_of(q, k, [plain, softmax_ops.Rebuilt(recipe, (u, weight), 6)], causal=True)
        formed = softmax_average_of(q, k, [plain, recipe(u, weight)], causal=True)
    assert out.dtype == torch.bfloat16 and torch.equal(out, formed)
    grads = torch.autograd.grad(out.float().sum(), (q, k, u, weight))
    wanted = torch.autograd.grad(formed.float().sum(), (q, k, u, weight))
    for got, want in zip(grads, wanted, strict=True):
        assert torch.equal(got, want)


def test_rebuilt_piece_keeps_its_inputs_not_itself():
    """What the CPU kernel keeps for a rebuilt piece is the recipe's inputs; the formed piece, as wide
    as a value group, is not kept."""
    q, k, plain, u, weight, recipe = rebuilt_case()
    rebuilt = softmax_ops.Rebuilt(recipe, (u, weight), 6)
    kept = saved_storages(lambda: softmax_average_of(q, k, [plain, rebuilt], causal=True))
    rows = 2 * 3 * 9 * 8  # bytes of one float64 column of (2, 3, 9, ·)
    out_and_lse = rows * (3 + 6) + rows  # the kernel's output is as wide as the values, 3 + 6
    assert sum(kept.values()) == rows * (4 + 4 + 3 + 5) + weight.numel() * 8 + out_and_lse


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


def test_generic_float64_path_chunks_query_rows_within_the_score_budget(monkeypatch):
    """Off the CPU flash kernel (as on a GPU, which fuses no float64 kernel) SDPA's generic path holds
    the whole score matrix: above SCORE_BUDGET_BYTES the query rows go in chunks. The chunked average,
    normaliser and gradients equal the dense reference, and no SDPA call sees more scores than the budget."""
    monkeypatch.setattr(softmax_ops, "_cpu_flash_applies", lambda *args, **kwargs: False)
    q, k, v = inputs((4, 4, 5), length=23)
    row_bytes = 2 * 3 * (23 + 1) * 8  # one query row against every key and the sentinel, float64
    monkeypatch.setattr(softmax_ops, "SCORE_BUDGET_BYTES", 5 * row_bytes)
    seen = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        softmax_ops.F,
        "scaled_dot_product_attention",
        lambda q_, k_, *a, **kw: (
            seen.append(q_.shape[-2] * k_.shape[-2] * q_.shape[0] * q_.shape[1] * 8) or sdpa(q_, k_, *a, **kw)
        ),
    )
    centre = (0.6 * q * dense_average(q, k, k, 0.6, False)).sum(-1)
    average, log_norm = softmax_average_with_normaliser(q, k, v, centre, scale=0.6)
    assert len(seen) == 5 and max(seen) <= 5 * row_bytes  # 23 rows: 4 chunks of 5 and one of 3
    torch.testing.assert_close(average, dense_average(q, k, v, 0.6, False), rtol=0, atol=1e-13)
    torch.testing.assert_close(log_norm, dense_log_normaliser(q, k, 0.6, False), rtol=0, atol=1e-13)
    weights = torch.randn(average.shape, dtype=average.dtype, generator=torch.Generator().manual_seed(2))
    loss = lambda avg, ln: (avg * weights).sum() + ln.square().sum()
    grads = torch.autograd.grad(loss(average, log_norm), [q, k, v])
    reference = torch.autograd.grad(
        loss(dense_average(q, k, v, 0.6, False), dense_log_normaliser(q, k, 0.6, False)), [q, k, v]
    )
    for got, want in zip(grads, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    seen.clear()
    softmax_average_of(q, k, [v], causal=True)  # causal calls are not chunked (a chunk would need its offset)
    softmax_average_of(q.float(), k.float(), [v.float()])  # nor fused dtypes
    assert len(seen) == 2


def dense_log_normaliser(q, k, scale, causal):
    scores = scale * q @ k.mT
    if causal:
        scores = scores.masked_fill(torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1), float("-inf"))
    return torch.logsumexp(scores, -1)


@pytest.fixture(params=["kernel", "sentinel"])
def normaliser_path(request, monkeypatch):
    """The CPU kernel's own log-normaliser, or (as on a GPU) the sentinel key."""
    if request.param == "sentinel":
        monkeypatch.setattr(softmax_ops, "_cpu_flash_applies", lambda *args, **kwargs: False)
    return request.param


@pytest.mark.parametrize("scale", [0.1, 30.0])
def test_normaliser_equals_logsumexp(scale, normaliser_path):
    q, k, v = inputs((4, 4, 3))
    expected = dense_log_normaliser(q, k, scale, causal=True)
    torch.testing.assert_close(softmax_log_normaliser(q, k, scale=scale, causal=True), expected, rtol=1e-12, atol=1e-10)
    average, log_norm = softmax_average_with_normaliser(q, k, v, expected.detach() - 1.0, scale=scale, causal=True)
    torch.testing.assert_close(log_norm, expected, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(average, dense_average(q, k, v, scale, True), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("scale", [0.3, 30.0])
@pytest.mark.parametrize("row", ["nonzero", "tiny", "zero"])
def test_average_and_normaliser_gradients_equal_dense_softmax(causal, scale, row, normaliser_path, monkeypatch):
    """Gradients through the average and the normaliser together against a dense float64 softmax. The
    CPU kernel folds dL into its own backward pass: through a changed output where every row of the
    average's gradient is nonzero (one row may be as small as 1e-12 per entry), else (a zero row) through
    one more column; both paths are checked to be the ones taken. L alone (its average unused) takes
    neither: zero values and a one-hot dO give its gradient at the same width."""
    widths = []  # (width in, width out) of each fold

    def recorded(out, *args, fold=softmax_ops._fold_log_norm_gradient):
        folded, width = fold(out, *args)
        widths.append((out.shape[-1], width))
        return folded, width

    monkeypatch.setattr(softmax_ops, "_fold_log_norm_gradient", recorded)
    q, k, v = inputs((5, 5, 4))
    g = torch.Generator().manual_seed(7)
    centre = dense_log_normaliser(q, k, scale, causal).detach() + 0.5
    average, log_norm = softmax_average_with_normaliser(q, k, v, centre, scale=scale, causal=causal)
    w_avg, w_norm = (
        torch.randn(average.shape, generator=g, dtype=q.dtype),
        torch.randn(log_norm.shape, generator=g, dtype=q.dtype),
    )
    w_avg[..., 2, :] *= {"nonzero": 1.0, "tiny": 1e-12, "zero": 0.0}[row]
    grads = torch.autograd.grad((average * w_avg).sum() + (log_norm * w_norm).sum(), [q, k, v])
    reference = (dense_average(q, k, v, scale, causal) * w_avg).sum() + (
        dense_log_normaliser(q, k, scale, causal) * w_norm
    ).sum()
    for got, want in zip(grads, torch.autograd.grad(reference, [q, k, v]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    only_norm = torch.autograd.grad((softmax_log_normaliser(q, k, scale=scale, causal=causal) * w_norm).sum(), [q, k])
    for got, want in zip(
        only_norm, torch.autograd.grad((dense_log_normaliser(q, k, scale, causal) * w_norm).sum(), [q, k]), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if normaliser_path == "kernel":  # L alone needs no fold (and no extra column): one fold, the first call's
        ((width_in, width_out),) = widths
        assert width_out == width_in + (row == "zero")


def test_kernel_normaliser_passes_gradcheck_and_needs_no_centre():
    q, k, v = inputs((3, 3, 2), length=5)
    assert softmax_ops.kernel_log_normaliser(q, k)
    both = lambda q, k, v: softmax_average_with_normaliser(q, k, v, None, scale=0.8, causal=True)
    assert torch.autograd.gradcheck(both, (q, k, v))


def test_sentinel_without_a_centre_is_a_clear_error():
    q, k, v = inputs((3, 3, 2), length=5)
    mask = torch.ones(5, 5, dtype=torch.bool)
    assert not softmax_ops.kernel_log_normaliser(q, k, mask)
    with pytest.raises(ValueError, match="needs a centre"):
        softmax_average_with_normaliser(q, k, v, None, mask=mask)


def test_kernel_normaliser_under_bf16_autocast_tracks_float64():
    q, k, v = inputs((16, 16, 16), dtype=torch.float32, length=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        average, log_norm = softmax_average_with_normaliser(q, k, v, None, scale=0.25, causal=True)
    expected = dense_log_normaliser(q.double(), k.double(), 0.25, True)
    torch.testing.assert_close(log_norm.double(), expected, rtol=0, atol=5e-2)
    (grad_q,) = torch.autograd.grad(log_norm.float().sum(), [q])
    (want_q,) = torch.autograd.grad(dense_log_normaliser(q.double(), k.double(), 0.25, True).sum(), [q])
    assert torch.isfinite(grad_q).all()
    torch.testing.assert_close(grad_q.double(), want_q.double(), rtol=0, atol=5e-2)


def test_folded_normaliser_gradient_under_bf16_autocast_tracks_float64():
    """The fold of dL into the kernel's output (every row of dO nonzero) in bfloat16: q's gradient of
    Σ (average·W) + Σ L within bfloat16's resolution of the float64 one."""
    q, k, v = inputs((16, 16, 16), dtype=torch.float32, length=32)
    weights = torch.randn(2, 3, 32, 16, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        average, log_norm = softmax_average_with_normaliser(q, k, v, None, scale=0.25, causal=True)
    (grad_q,) = torch.autograd.grad((average.float() * weights).sum() + log_norm.float().sum(), [q])
    q64, k64, v64 = (x.double() for x in (q, k, v))
    reference = (dense_average(q64, k64, v64, 0.25, True) * weights.double()).sum()
    reference = reference + dense_log_normaliser(q64, k64, 0.25, True).sum()
    (want_q,) = torch.autograd.grad(reference, [q])
    torch.testing.assert_close(grad_q.double(), want_q.double(), rtol=0, atol=5e-2)
