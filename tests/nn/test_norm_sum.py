"""layer_norm_of_sum against the plain LayerNorm of the sum: values, every gradient, what it keeps."""

from __future__ import annotations

import copy

import pytest
import torch

from sympformer.benchmarking import saved_storages
from sympformer.nn.layers import LayerNorm
from sympformer.nn.norm_sum import layer_norm_of_sum


def case(dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    norm = LayerNorm(6, bias).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6, generator=g, dtype=dtype))
        if bias:
            norm.bias.copy_(torch.randn(6, generator=g, dtype=dtype))
    streams = [torch.randn(2, 5, 6, generator=g, dtype=dtype).requires_grad_(True) for _ in range(3)]
    scalars = [torch.tensor(v, dtype=dtype, requires_grad=True) for v in (0.7, -1.3)]
    return norm, streams, scalars


def plain(norm, *terms):
    return norm(sum(c * t for c, t in terms))


@pytest.mark.parametrize("bias", [True, False])
def test_equals_the_plain_layer_norm_with_every_gradient(bias):
    norm, (x, v, f), (beta, gain) = case(bias=bias)
    terms = [(1, x), (beta, v), (gain, f), (-0.25, v)]  # numbers, learned scalars, a stream twice
    inputs = [x, v, f, beta, gain, *norm.parameters()]
    weights = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    fused = layer_norm_of_sum(norm, *terms)
    reference = plain(norm, *terms)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-14)
    got = torch.autograd.grad((fused * weights).sum(), inputs)
    want = torch.autograd.grad((reference * weights).sum(), inputs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_passes_gradcheck():
    norm, (x, v, _), (beta, _) = case()  # w and b are the LayerNorm's own parameters, perturbed in place
    check = lambda x, v, beta, w, b: layer_norm_of_sum(norm, (1.0, x), (beta, v))
    assert torch.autograd.gradcheck(check, (x, v, beta, norm.weight, norm.bias))


def test_keeps_only_the_streams_and_the_row_statistics():
    norm, (x, v, f), (beta, gain) = case(dtype=torch.float32)
    stream = x.numel() * 4
    kept = sum(saved_storages(lambda: layer_norm_of_sum(norm, (beta, v), (gain, f))).values())
    assert kept <= 2 * stream + 2 * 10 * 4 + 2 * 6 * 4 + 2 * 4  # v, f, mean and rstd, weight and bias, scalars
    assert sum(saved_storages(lambda: plain(norm, (beta, v), (gain, f))).values()) >= kept + stream


def test_under_bf16_autocast_runs_in_float32_like_layer_norm():
    """Autocast runs layer_norm in float32; the fused sum is formed in float32 too (the plain graph
    rounds β·v to bfloat16 first), so it is at least as close to the float64 truth."""
    norm, (x, v, _), (beta, _) = case(dtype=torch.float32)
    half = v.detach().to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = layer_norm_of_sum(norm, (1, x), (beta, half))
        reference = plain(norm, (1, x), (beta, half))
    truth = plain(copy.deepcopy(norm).double(), (1, x.double()), (beta.double(), half.double()))
    assert fused.dtype == reference.dtype == torch.float32
    assert (fused.double() - truth).abs().max() <= (reference.double() - truth).abs().max() + 1e-6
    torch.testing.assert_close(fused.double(), truth, rtol=0, atol=1e-5)
    (grad_beta,) = torch.autograd.grad((fused * fused).sum(), [beta])
    (want_beta,) = torch.autograd.grad((truth * truth).sum(), [beta])
    torch.testing.assert_close(grad_beta.double(), want_beta.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("with_bias", [True, False])
def test_affine_terms_equal_the_plain_product_with_every_gradient(with_bias):
    """An Affine stream t = a Wᵀ + b is rebuilt in the backward pass: same values and gradients (of a, W,
    b, the coefficients and the LayerNorm) as the plain graph, and t itself is not kept."""
    from sympformer.nn.norm_sum import Affine

    norm, (x, v, _), (beta, gain) = case()
    g = torch.Generator().manual_seed(9)
    a = torch.randn(2, 5, 24, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 24, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    inputs = [x, v, a, w, beta, gain, *norm.parameters()] + ([b] if with_bias else [])
    weights = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    fused = layer_norm_of_sum(norm, (1, x), (beta, v), (gain, Affine(a, w, b)))
    reference = plain(norm, (1, x), (beta, v), (gain, torch.nn.functional.linear(a, w, b)))
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-14)
    got = torch.autograd.grad((fused * weights).sum(), inputs)
    want = torch.autograd.grad((reference * weights).sum(), inputs)
    for one, other in zip(got, want, strict=True):
        torch.testing.assert_close(one, other, rtol=1e-12, atol=1e-13)
    kept = sum(saved_storages(lambda: layer_norm_of_sum(norm, (beta, v), (gain, Affine(a, w, b)))).values())
    stream, hidden = v.numel() * 8, a.numel() * 8
    assert kept <= stream + hidden + w.numel() * 8 + 64 * 8 + 400  # v, a, W, b, statistics: no t


def test_affine_terms_under_autocast_are_ordinary_products():
    from sympformer.nn.norm_sum import Affine

    norm, (x, _, _), (beta, _) = case(dtype=torch.float32)
    a = torch.randn(2, 5, 24)
    w = torch.randn(6, 24, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = layer_norm_of_sum(norm, (1, x), (beta, Affine(a, w, None)))
        reference = plain(norm, (1, x), (beta, torch.nn.functional.linear(a, w)))
    assert fused.dtype == torch.float32  # the product in bfloat16 as autocast runs it; the sum is not rounded
    torch.testing.assert_close(fused, reference, rtol=0, atol=2e-2)


def test_weighted_sums_take_one_operator_per_term_and_a_unit_first_pair_one():
    """Σ c_k t_k against its formula, and the operators it dispatches (each one GPU launch in an eager
    step): a unit first coefficient folds into the second term's operator (no copy of t₀ first)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from sympformer.nn.norm_sum import _weighted_sum

    class Names(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    _, (x, v, f), (beta, gain) = case()
    x, v, f, beta, gain = (t.detach() for t in (x, v, f, beta, gain))
    for coefficients, streams, operators in [
        ([1.0, beta], [x, v], ["addcmul"]),
        ([1.0, -0.5], [x, v], ["add"]),
        ([1.0, beta, -0.5], [x, v, f], ["addcmul", "add_"]),
        ([beta, gain], [v, f], ["mul", "addcmul_"]),
        ([1.0], [x], ["clone"]),
    ]:
        with Names() as seen:
            total = _weighted_sum(coefficients, streams)
        expected = sum(c * t for c, t in zip(coefficients, streams, strict=True))
        torch.testing.assert_close(total, expected, rtol=0, atol=1e-15)
        assert seen.names == operators
        assert all(total.data_ptr() != t.data_ptr() for t in streams)  # a new tensor: the streams are untouched


@pytest.mark.parametrize("with_bias", [True, False])
def test_weighted_sum_equals_the_plain_sum_and_keeps_no_affine_output(with_bias, monkeypatch):
    """weighted_sum (R2's momentum W = β₁ v + g₁ F) with large activations: the plain sum's value and
    every gradient (float64), with numbers, learned scalars and an Affine term rebuilt in the backward
    pass; gradcheck; what it keeps is the streams and the affine input, not the product. Under autocast,
    and below the size threshold, it is the plain sum (which keeps the product)."""
    import sympformer.nn.recompute as recompute_module
    from sympformer.nn.norm_sum import Affine, plain_weighted_sum, weighted_sum

    monkeypatch.setattr(recompute_module, "MIN_ELEMENTS", 0)  # these tiny tensors count as large

    _, (x, v, _), (beta, gain) = case()
    g = torch.Generator().manual_seed(11)
    a = torch.randn(2, 5, 24, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 24, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    inputs = [x, v, a, w, beta, gain] + ([b] if with_bias else [])
    terms = [(beta, v), (gain, Affine(a, w, b)), (-0.5, x)]
    fused = weighted_sum(*terms)
    reference = beta * v + gain * torch.nn.functional.linear(a, w, b) - 0.5 * x
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-14)
    weights = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((fused * weights).sum(), inputs)
    want = torch.autograd.grad((reference * weights).sum(), inputs)
    for one, other in zip(got, want, strict=True):
        torch.testing.assert_close(one, other, rtol=1e-12, atol=1e-13)
    check = lambda v, a, beta: weighted_sum((beta, v), (0.3, Affine(a, w, b)))
    assert torch.autograd.gradcheck(check, (v, a, beta))
    kept = sum(saved_storages(lambda: weighted_sum((beta, v), (gain, Affine(a, w, b)))).values())
    assert kept == (v.numel() + a.numel() + w.numel() + (6 if with_bias else 0) + 2) * 8  # no (2, 5, 6) product
    v32, a32, w32 = v.float(), a.float(), w.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = weighted_sum((beta.float(), v32), (gain.float(), Affine(a32, w32, None)))
        plain_mixed = beta.float() * v32 + gain.float() * torch.nn.functional.linear(a32, w32)
    assert torch.equal(mixed, plain_mixed)  # the product in bfloat16, as autocast runs it
    monkeypatch.setattr(recompute_module, "MIN_ELEMENTS", v.numel() + 1)
    small = saved_storages(lambda: weighted_sum((beta, v), (gain, Affine(a, w, b))))
    plain_graph = saved_storages(lambda: plain_weighted_sum((beta, v), (gain, Affine(a, w, b))))
    assert sorted(small.values()) == sorted(plain_graph.values())  # the plain graph, product F kept
    assert sum(small.values()) > kept


@pytest.mark.parametrize("bias", [True, False])
def test_rebuilt_streams_equal_the_plain_graph_and_are_not_kept(bias):
    """A LayerNorm output given as a rebuilt stream (R2's V_a = LN_v(W − η C) in LN_M and the next LN_v):
    the plain graph's value and every gradient (float64), through the inner LayerNorm to its streams,
    learned coefficient and parameters; gradcheck; the outer LayerNorm keeps the recipe, not the (2, 5, 6)
    value, and forms the value again, bitwise, in its backward pass. Hooks it is nested in (here the
    accounting's) see every other tensor it saves."""
    from sympformer.nn.norm_sum import rebuilt_layer_norm_of_sum, stream_value

    norm, (x, w, c), (eta, mu) = case(bias=bias)
    inner, *_ = case(bias=bias, seed=3)  # the inner LayerNorm (LN_v), its own parameters
    inputs = [x, w, c, eta, mu, *norm.parameters(), *inner.parameters()]
    weights = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    rebuilt = rebuilt_layer_norm_of_sum(inner, (1, w), (-eta, c))
    normalised = plain(inner, (1, w), (-eta, c))
    torch.testing.assert_close(stream_value(rebuilt), normalised, rtol=0, atol=1e-14)
    outer = layer_norm_of_sum(norm, (1, x), (mu, rebuilt))
    reference = plain(norm, (1, x), (mu, normalised))
    torch.testing.assert_close(outer, reference, rtol=0, atol=1e-14)
    got = torch.autograd.grad((outer * weights).sum(), inputs)
    want = torch.autograd.grad((reference * weights).sum(), inputs)
    for one, other in zip(got, want, strict=True):
        torch.testing.assert_close(one, other, rtol=1e-12, atol=1e-13)
    check = lambda x, w, c, eta: layer_norm_of_sum(
        norm, (1, x), (0.8, rebuilt_layer_norm_of_sum(inner, (1, w), (eta, c)))
    )
    assert torch.autograd.gradcheck(check, (x, w, c, eta))

    norm32, inner32 = norm.float(), inner.float()
    x32, w32, c32 = (t.detach().float() for t in (x, w, c))
    seen = []

    def outer32():
        rebuilt32 = rebuilt_layer_norm_of_sum(inner32, (1, w32), (-0.5, c32))
        seen.extend([rebuilt32, layer_norm_of_sum(norm32, (1, x32), (0.9, rebuilt32))])

    kept = saved_storages(outer32)
    parameters = sum(p.numel() for p in (*norm32.parameters(), *inner32.parameters())) * 4
    # x, w and c (the inner LayerNorm's), both LayerNorms' means, rstds and parameters: not the value
    assert sum(kept.values()) == 3 * x32.numel() * 4 + 4 * 10 * 4 + parameters
    rebuilt32, out = seen
    assert stream_value(rebuilt32).data_ptr() not in kept
    assert torch.equal(out, layer_norm_of_sum(norm32, (1, x32), (0.9, stream_value(rebuilt32))))
