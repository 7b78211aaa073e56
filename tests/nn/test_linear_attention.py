"""Signed prefix-linear attention and its ridge connection: chunked = dense = streaming (float64),
gradients, and the 1/i normalisation."""

from __future__ import annotations

import pytest
import torch

from sympformer.nn import PrefixLinearAttention, SympFormerConfig, SympFormerLM, linear_connection_reference
from sympformer.nn.linear_attention import prefix_linear


@pytest.mark.parametrize("chunk", [1, 3, 5, 7, 16])
def test_chunked_prefix_linear_equals_dense(chunk):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64)
    state = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    out, final = prefix_linear(q, k, v, chunk, state)
    dense = torch.tril(q @ k.mT) @ v + q @ state
    torch.testing.assert_close(out, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(final, state + k.mT @ v, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 3, 7, 16])
def test_prefix_linear_gradients_equal_dense_with_state_and_final_state(chunk):
    """The hand-written backward (chunk scores recomputed, not kept) against autograd through the dense
    form, float64: gradients of q, k, v and the state, through the output and the final state, with a
    ragged last chunk; and gradcheck."""
    g = torch.Generator().manual_seed(2)
    q, k = (torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    state = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w_out = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64)
    w_total = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    out, total = prefix_linear(q, k, v, chunk, state)
    got = torch.autograd.grad((out * w_out).sum() + (total * w_total).sum(), (q, k, v, state))
    dense_out, dense_total = torch.tril(q @ k.mT) @ v + q @ state, state + k.mT @ v
    want = torch.autograd.grad((dense_out * w_out).sum() + (dense_total * w_total).sum(), (q, k, v, state))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *xs: prefix_linear(*xs[:3], chunk, xs[3]), (q, k, v, state))


def test_prefix_linear_under_bf16_autocast_tracks_float64():
    """Under CPU bf16 autocast the pass runs in bfloat16 like autocast's own products, and the gradients
    come back in the inputs' dtype, within bfloat16's resolution of the float64 ones."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 64, 8, generator=g, requires_grad=True) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = prefix_linear(q, k, v, 16)
    assert out.dtype == torch.bfloat16
    got = torch.autograd.grad(out.float().sum(), (q, k, v))
    q64, k64, v64 = (x.detach().double().requires_grad_(True) for x in (q, k, v))
    want = torch.autograd.grad((torch.tril(q64 @ k64.mT) @ v64).sum(), (q64, k64, v64))
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.float32
        assert (a.double() - b).abs().max() <= 1e-2 * b.abs().max()  # bfloat16 keeps 8 bits


@pytest.mark.parametrize("heads, width", [(4, 16), (1, 128)])
def test_prefix_linear_keeps_only_its_inputs_for_the_backward_pass(heads, width):
    """What autograd keeps for one pass is q, k and v: not the (n, chunk, chunk) scores, nor the
    (n, d_k, d_v) states the chunks read, which for one 128-wide head in 128-long chunks (the v1 linear
    oracle's) are as large as q. With a state, the state too."""
    from sympformer.benchmarking import saved_storages

    q, k, v = (torch.randn(2, heads, 256, width, requires_grad=True) for _ in range(3))
    state = torch.randn(2, heads, width, width, requires_grad=True)
    saved = sum(saved_storages(lambda: prefix_linear(q, k, v, 128)[0]).values())
    assert saved == 3 * q.numel() * 4
    saved = sum(saved_storages(lambda: prefix_linear(q, k, v, 128, state)[0]).values())
    assert saved == 3 * q.numel() * 4 + state.numel() * 4


@pytest.mark.parametrize("chunk", [1, 3, 5, 7, 16])
def test_reverse_prefix_linear_equals_dense_suffix_sums(chunk):
    """reverse=True: out_i = q_i · Σ_{j≥i} k_j v_jᵀ (with gradients), against the dense upper-triangular
    form, float64, with a ragged last chunk; a state is refused."""
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    out, total = prefix_linear(q, k, v, chunk, reverse=True)
    dense = torch.triu(q @ k.mT) @ v
    torch.testing.assert_close(out, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(total, k.mT @ v, rtol=0, atol=1e-12)
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((out * weights).sum(), (q, k, v))
    want = torch.autograd.grad((dense * weights).sum(), (q, k, v))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="no state"):
        prefix_linear(q, k, v, chunk, torch.zeros(2, 3, 4, 5, dtype=torch.float64), reverse=True)


def make_attention(chunk: int, bias: bool = False) -> PrefixLinearAttention:
    torch.manual_seed(1)
    return PrefixLinearAttention(12, 3, bias=bias, dropout=0.0, chunk=chunk).double()


def inputs(length=9, batch=2, width=12, seed=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, length, width, generator=g, dtype=torch.float64) for _ in range(2))


@pytest.mark.parametrize("chunk", [2, 4, 9, 32])
def test_fused_connection_equals_dense_reference(chunk):
    attn = make_attention(chunk)
    z, u = inputs()
    z.requires_grad_(True)
    u.requires_grad_(True)
    f, c = attn.with_connection(z, u)
    f_ref, c_ref = linear_connection_reference(attn, z, u)
    scale = c_ref.abs().max()
    torch.testing.assert_close(f, f_ref, rtol=0, atol=1e-12)
    assert (c - c_ref).abs().max() / scale <= 1e-10
    weights = torch.randn_like(c)
    grads = torch.autograd.grad((c * weights).sum(), (z, u, attn.c_attn.weight))
    grads_ref = torch.autograd.grad((c_ref * weights).sum(), (z, u, attn.c_attn.weight))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert (g - g_ref).abs().max() / g_ref.abs().max() <= 1e-9


def test_streaming_equals_parallel():
    attn = make_attention(4)
    z, u = inputs()
    f_par, c_par = attn.with_connection(z, u)
    attn.cache = {}
    pieces = [attn.with_connection(z[:, :3], u[:, :3])]  # a prompt, then one token at a time
    pieces += [attn.with_connection(z[:, i : i + 1], u[:, i : i + 1]) for i in range(3, z.shape[1])]
    attn.cache = None
    f_stream = torch.cat([p[0] for p in pieces], 1)
    c_stream = torch.cat([p[1] for p in pieces], 1)
    torch.testing.assert_close(f_stream, f_par, rtol=0, atol=1e-12)
    assert (c_stream - c_par).abs().max() / c_par.abs().max() <= 1e-10


def test_gradcheck_tiny():
    torch.manual_seed(3)
    attn = PrefixLinearAttention(4, 2, bias=True, dropout=0.0, chunk=2).double()
    z = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    u = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, u: attn.with_connection(z, u), (z, u))
    assert torch.autograd.gradcheck(lambda z, u: attn.then_connection(z, lambda f: u + f)[2], (z, u))


def test_output_is_normalised_by_the_prefix_count():
    """Truncation: a prefix run alone equals the prefix of the full run (1/i, never 1/T)."""
    config = SympFormerConfig(vocab_size=20, n_layer=2, n_head=2, n_embd=8, block_size=16, arch="R2_L", linear_chunk=3)
    model = SympFormerLM(config, seed=0).double()
    idx = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(0))
    full = model(idx)[0]
    torch.testing.assert_close(model(idx[:, :7])[0], full[:, :7], rtol=0, atol=1e-10)


def test_linear_architectures_have_the_softmax_parameter_counts():
    shape = dict(vocab_size=50304, n_layer=4, n_head=4, n_embd=64, block_size=512)
    for arch in ("B", "H0", "R2"):
        softmax = SympFormerLM(SympFormerConfig(**shape, arch=arch)).num_parameters()
        linear = SympFormerLM(SympFormerConfig(**shape, arch=f"{arch}_L")).num_parameters()
        assert softmax == linear


@pytest.mark.parametrize("with_state", [False, True])
def test_ridge_proxy_solves_equal_dense_solves_with_gradients(with_state):
    """The chunked ridge inverse for X₁ = A⁻¹[c, m] and X₂ = A⁻¹ swap(X₁), and the backward pass
    through a reverse prefix-linear pass: against explicit Grams with torch.linalg.solve (values and
    gradients, float64) and finite differences (gradcheck)."""
    from sympformer.nn.linear_attention import _RidgeProxySolves, swap_systems

    g = torch.Generator().manual_seed(4)
    # two heads' K and Q systems, (1, 4, 19, 4): two chunks, ragged
    kq = torch.randn(1, 4, 19, 4, generator=g, dtype=torch.float64, requires_grad=True)
    rhs = torch.randn(1, 4, 19, 4, generator=g, dtype=torch.float64, requires_grad=True)
    state = torch.eye(4, dtype=torch.float64).expand(1, 4, 4, 4).clone() if with_state else None
    second, last = _RidgeProxySolves.apply(*kq.chunk(2, 1), rhs, 0.1, state, 4)

    systems = _explicit_ridge_systems(kq, 0.1, state)
    grams = systems - 0.1 * torch.eye(4, dtype=torch.float64)
    first = torch.linalg.solve(systems, rhs)
    expected = torch.linalg.solve(systems, swap_systems(first))
    torch.testing.assert_close(second, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, grams[:, :, -1], rtol=1e-12, atol=1e-12)
    weights = torch.randn(second.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((second * weights).sum(), (kq, rhs))
    want = torch.autograd.grad((expected * weights).sum(), (kq, rhs))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(
        lambda kq, rhs: _RidgeProxySolves.apply(*kq.chunk(2, 1), rhs, 0.1, state, 4)[0], (kq, rhs)
    )


def _explicit_ridge_systems(a, ridge, state=None):
    """state + Σ_{j≤i} a_j a_jᵀ + λI at every position, by explicit sums (float64 reference)."""
    outer = a.unsqueeze(-1) * a.unsqueeze(-2)
    grams = torch.stack([outer[:, :, : i + 1].sum(2) for i in range(a.shape[2])], 2)
    if state is not None:
        grams = grams + state.unsqueeze(2)
    return grams + ridge * torch.eye(a.shape[-1], dtype=a.dtype)


@pytest.mark.parametrize("length, chunk", [(70, 16), (64, 16), (9, 4), (1, 16), (5, 1)])
def test_chunked_ridge_inverse_solves_equal_dense_solves(length, chunk):
    """Chunk-start inverses plus in-chunk Woodbury updates against torch.linalg.solve on the explicit
    prefix Grams (float64), across several chunks, a ragged end and a cached state; the returned
    last Gram is the cache's state."""
    from sympformer.nn.linear_attention import apply_ridge_inverse, chunked_ridge_inverse

    g = torch.Generator().manual_seed(5)
    a = torch.randn(2, 6, length, 5, generator=g, dtype=torch.float64)
    rhs = torch.randn(2, 6, length, 5, generator=g, dtype=torch.float64)
    state = torch.randn(2, 6, 5, 5, generator=g, dtype=torch.float64)
    state = state @ state.mT
    for st in (None, state):
        systems = _explicit_ridge_systems(a, 0.1, st)
        start, updates, last = chunked_ridge_inverse(a, 0.1, st, chunk)
        got = apply_ridge_inverse(start, updates, rhs)
        torch.testing.assert_close(got, torch.linalg.solve(systems, rhs), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(last, systems[:, :, -1] - 0.1 * torch.eye(5, dtype=torch.float64))


def test_ridge_proxy_solves_stay_accurate_on_ill_conditioned_float32_keys():
    """float32 keys with a spectrum decaying over two decades and large norms (condition numbers of
    A_i up to ~1e6 with λ = 1e-3): both solves of the connection proxy stay within float32's rounding
    of the float64 answer (the inverses run in float64), where per-position float32 LU solves of the
    same systems are off by far more (the case is hard)."""
    from sympformer.nn.linear_attention import _RidgeProxySolves, swap_systems

    g = torch.Generator().manual_seed(6)
    kq = torch.randn(2, 4, 256, 16, generator=g) * torch.logspace(0, -2, 16) * 8
    rhs = torch.randn(2, 4, 256, 16, generator=g)
    systems = _explicit_ridge_systems(kq.double(), 1e-3)
    want = torch.linalg.solve(systems, swap_systems(torch.linalg.solve(systems, rhs.double())))
    got, _ = _RidgeProxySolves.apply(*kq.chunk(2, 1), rhs, 1e-3, None, 32)
    float32_systems = systems.float()
    lu = torch.linalg.solve(float32_systems, swap_systems(torch.linalg.solve(float32_systems, rhs)))
    error = lambda x: ((x.double() - want).norm(dim=-1) / want.norm(dim=-1)).max().item()
    assert got.dtype == torch.float32
    assert error(got) < 1e-6
    assert error(lu) > 1e-4
