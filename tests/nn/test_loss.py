"""The chunked fused head + cross-entropy against the plain formula (float64), gradients included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sympformer.nn.loss as loss_module
from sympformer.nn import SympFormerConfig, SympFormerLM
from sympformer.nn.loss import linear_cross_entropy


@pytest.mark.parametrize("chunk_elements", [7, 100, 1 << 22])  # many chunks, uneven chunks, one chunk
def test_fused_loss_and_gradients_equal_plain_cross_entropy(monkeypatch, chunk_elements):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(23, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 8, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 11, (23,), generator=g)
    y[[2, 9]] = -1
    fused = linear_cross_entropy(h, w, y)
    plain = F.cross_entropy(h @ w.T, y, ignore_index=-1)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-14)
    for a, b in zip(torch.autograd.grad(3 * fused, (h, w)), torch.autograd.grad(3 * plain, (h, w)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, y), plain.detach(), rtol=0, atol=1e-14)


def test_model_loss_paths_agree():
    model = SympFormerLM(SympFormerConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=8, block_size=16, arch="H1"))
    model = model.double()
    idx = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    logits, plain = model(idx, idx)
    none, fused = model(idx, idx, return_logits=False)
    assert none is None and logits is not None
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(fused, list(model.parameters()))
    grads_plain = torch.autograd.grad(plain, list(model.parameters()))
    for a, b in zip(grads, grads_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_fused_loss_under_bf16_autocast_tracks_float32():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(40, 16, generator=g, requires_grad=True)
    w = (0.1 * torch.randn(300, 16, generator=g)).requires_grad_(True)
    y = torch.randint(0, 300, (40,), generator=g)
    reference = F.cross_entropy(h @ w.T, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(h, w, y)
    assert fused.dtype == torch.float32 and abs(fused.item() - reference.item()) < 2e-2
    grad_h, grad_w = torch.autograd.grad(fused, (h, w))
    ref_h, ref_w = torch.autograd.grad(reference, (h, w))
    assert grad_h.dtype == h.dtype and grad_w.dtype == w.dtype
    torch.testing.assert_close(grad_h, ref_h, rtol=0.05, atol=2e-3)
    torch.testing.assert_close(grad_w, ref_w, rtol=0.05, atol=2e-3)


def _recorded_ops(fn):
    """(name, argument dtypes, output shape and dtype) of every operator ``fn`` dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            dtypes = [a.dtype for a in args if isinstance(a, torch.Tensor)]
            shape = (tuple(out.shape), out.dtype) if isinstance(out, torch.Tensor) else None
            self.ops.append((func.overloadpacket.__name__, dtypes, shape))
            return out

    with Record() as record:
        fn()
    return record.ops


def test_under_bf16_autocast_the_loss_is_exact_for_the_bf16_logits_and_the_products_are_bf16():
    """Under autocast the head's products run in bf16, as a plain head's would, and nothing else loses
    precision: the loss equals float64 cross-entropy of the very bf16 logits (a bf16 softmax or loss
    would be ~1e-3 off), and the gradients equal autograd's through the plain head under autocast to
    bf16 rounding."""
    g = torch.Generator().manual_seed(6)
    h = torch.randn(40, 16, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(300, 16, generator=g)).requires_grad_(True)
    y = torch.randint(0, 300, (40,), generator=g)
    y[[3, 30]] = -1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(h, w, y)
        plain = F.cross_entropy(F.linear(h, w), y, ignore_index=-1)
    bf16_logits = (h.bfloat16() @ w.bfloat16().T).double()
    exact = F.cross_entropy(bf16_logits, y, ignore_index=-1)
    assert abs(fused.item() - exact.item()) < 1e-6 * exact.item()
    for a, b in zip(torch.autograd.grad(fused, (h, w)), torch.autograd.grad(plain, (h, w)), strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-4)

    def loop():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_module._loss_and_gradients(h.detach(), w.detach(), y, need_grad=True)

    ops = _recorded_ops(loop)
    products = [dtypes for name, dtypes, _ in ops if name == "mm"]
    assert len(products) == 3 and all(d == [torch.bfloat16, torch.bfloat16] for d in products)
    assert ((40, 300), torch.bfloat16) in [out for name, _, out in ops if name == "mm"]  # the logits


def test_the_fused_loss_leaves_autocasts_cast_cache_alone():
    """Autocast caches its bf16 copy of a leaf weight for the rest of the region. Had the loss let autocast
    cast W inside the custom operator (below autograd), a later plain use of W in the same region would
    reuse that copy, which has no gradient history: W would get no gradient from it."""
    g = torch.Generator().manual_seed(7)
    h = torch.randn(8, 16, generator=g, requires_grad=True)
    w = torch.randn(30, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 30, (8,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear_cross_entropy(h, w, y)
        logits = F.linear(h, w)
    (grad_w,) = torch.autograd.grad(logits.float().square().sum(), (w,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (expected,) = torch.autograd.grad(F.linear(h, w).float().square().sum(), (w,))
    torch.testing.assert_close(grad_w, expected, rtol=0, atol=0)


@pytest.fixture(params=["in place", "new tensor"])
def softmax_placement(request, monkeypatch):
    """Both softmax placements: over the logits (CPU) and into a new tensor (the GPU path, here on CPU)."""
    if request.param == "new tensor":
        monkeypatch.setattr(
            loss_module, "_softmax_over_logits", lambda logits, dtype: torch.softmax(logits, 1, dtype=dtype)
        )
    return request.param


def test_fused_loss_is_exact_where_the_target_probability_underflows(softmax_placement):
    """A target 200 nats below the top logit: its softmax probability is 0 in float32, so its loss is
    recomputed from the logits (−log 0 would be inf), or taken from the logits kept beside the softmax;
    the gradient is the plain one."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(6, 4, generator=g)
    w = torch.randn(9, 4, generator=g)
    h[2] = 0.0
    h[2, 0] = 50.0
    w[:, 0] = 0.0
    w[1, 0], w[7, 0] = 4.0, 0.0  # row 2: logit 200 at class 1, 0 at class 7 (its target)
    h[3] = h[2]  # an uncounted row (target −1) whose stand-in class 0 underflows too: no inf × 0
    y = torch.tensor([0, 3, 7, -1, 5, 8])
    h.requires_grad_(True)
    w.requires_grad_(True)
    fused = linear_cross_entropy(h, w, y)
    plain = F.cross_entropy(h.double() @ w.double().T, y, ignore_index=-1)
    assert torch.isfinite(fused) and fused.item() > 200 / 5
    torch.testing.assert_close(fused.double(), plain, rtol=1e-6, atol=0)
    for a, b in zip(torch.autograd.grad(fused, (h, w)), torch.autograd.grad(plain, (h, w)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_loss_in_float32_matches_the_float64_formula_over_several_chunks(monkeypatch, softmax_placement):
    """The softmax written over the float32 logits buffer, chunk by chunk, against float64 (the buffer is
    reused: a stale chunk would show)."""
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 5 * 301)
    g = torch.Generator().manual_seed(4)
    h = torch.randn(23, 16, generator=g, requires_grad=True)
    w = (0.5 * torch.randn(301, 16, generator=g)).requires_grad_(True)
    y = torch.randint(0, 301, (23,), generator=g)
    y[[4, 17]] = -1
    fused = linear_cross_entropy(h, w, y)
    plain = F.cross_entropy(h.double() @ w.double().T, y, ignore_index=-1)
    torch.testing.assert_close(fused.double(), plain, rtol=1e-6, atol=0)
    for a, b in zip(torch.autograd.grad(fused, (h, w)), torch.autograd.grad(plain, (h, w)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_chunks_are_the_fewest_within_the_budget_and_split_evenly():
    for vocab in (11, 257, 50304):
        most = max(1, loss_module.CHUNK_ELEMENTS // vocab)
        for tokens in [0, 1, 2, most - 1, most, most + 1, 3 * most + 25, 1024, 8 * 1024, 12345]:
            rows = loss_module.rows_per_chunk(tokens, vocab)
            sizes = [min(rows, tokens - start) for start in range(0, tokens, rows)]
            assert rows <= most  # within CHUNK_ELEMENTS logits
            assert len(sizes) == max(1, -(-tokens // most)) or tokens == 0  # no more chunks than needed
            assert not sizes or max(sizes) - min(sizes) <= len(sizes)  # even: at most one row per chunk apart
    assert loss_module.rows_per_chunk(1024, 50304) == 256  # the primary shape: 4 × 256, not 3 × 333 + 25


def test_with_the_logits_kept_the_loss_never_waits_for_the_device(monkeypatch):
    """Off the CPU the softmax makes a new tensor and the row losses come from the logits: no operator
    that copies a value to the host (a GPU sync per chunk: the underflow check's bool()) is dispatched."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(5)
    h, w = torch.randn(20, 8, generator=g), torch.randn(30, 8, generator=g)
    y = torch.randint(0, 30, (20,), generator=g)
    with Record() as in_place:  # the loop itself (the custom operator would hide it)
        loss_module._loss_and_gradients(h.detach(), w.detach(), y, need_grad=True)
    assert "_local_scalar_dense" in in_place.names  # the CPU path's underflow check (the recording works)
    monkeypatch.setattr(
        loss_module, "_softmax_over_logits", lambda logits, dtype: torch.softmax(logits, 1, dtype=dtype)
    )
    Record.names = []
    with Record() as kept:
        loss_module._loss_and_gradients(h.detach(), w.detach(), y, need_grad=True)
    assert "_local_scalar_dense" not in kept.names and "max" in kept.names


def test_gpu_chunks_are_larger():
    """On a GPU the primary shape's logits are one chunk (fewer launches); on CPU four of 256 rows."""
    assert loss_module.chunk_elements(torch.device("cpu")) == loss_module.CHUNK_ELEMENTS
    assert loss_module.chunk_elements(torch.device("cuda")) == loss_module.GPU_CHUNK_ELEMENTS
    assert loss_module.rows_per_chunk(1024, 50304, loss_module.GPU_CHUNK_ELEMENTS) == 1024
