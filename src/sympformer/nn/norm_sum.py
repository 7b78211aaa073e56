r"""LayerNorm of a weighted sum of streams, with the sum recomputed in the backward pass:

    y = LN(Σ_k c_k t_k)        (c_k: learned 0-d scalars or fixed numbers; t_k: (…, C) streams)

The momentum blocks normalise such sums at every half-step (LN_v(β v + g F), LN_M(x + d + μ V_a),
LN_A(x + μ v), …). Autograd would keep each product c_k t_k, the sum and the LayerNorm's input: one
(…, C) tensor per term and one more. This function keeps only the streams t_k (which the blocks keep
anyway) and the LayerNorm's row statistics, and in the backward pass rebuilds the sum once:

    u = Σ c_k t_k,   (∂u, ∂w, ∂b) = LayerNorm backward(∂y; u, mean, rstd),
    ∂t_k = c_k ∂u,   ∂c_k = ⟨∂u, t_k⟩  (one dot product, no temporary).

A stream may also be an :class:`Affine` term t = a Wᵀ + b whose input a is kept anyway: then t
itself is not kept but rebuilt in the backward pass by one product, and the gradients of a, W and b
come from here (∂a = ∂t W, ∂W = ∂tᵀ a, ∂b = Σ ∂t). H0 and Y pass their attention output F = W_O y
so (a C × C product); the MLP output is kept, since rebuilding it (a 4C × C product) made H0's step
8 % slower at the attention-heavy shape (1.055 → 1.143× B in one process).

:func:`weighted_sum` is the same without the LayerNorm (R2's momentum W = β₁ v + g₁ F, F affine).

A stream of :func:`layer_norm_of_sum` may also be a :class:`Rebuilt` one, from
:func:`rebuilt_layer_norm_of_sum`: a LayerNorm output LN'(Σ c'_j s_j) whose streams s_j are kept anyway.
Its value enters the sum as any stream (its gradient flows through its own graph), but where the value
would be kept, saved-tensor hooks keep the recipe, and the backward pass normalises the s_j again (no
graph: one LayerNorm pass). R2 passes V_a = LN_v(W − η C) and its increment LN_v(W − ½ η C) so to LN_M and
the next LN_v, which would keep them: two (B, T, C) tensors a layer (heavy shape: 249.6 → 233.6 MiB).

It replaces activation checkpointing of the same algebra (torch.utils.checkpoint), whose fixed cost
per region (a frame, saved-tensor hooks, a second forward through autograd) showed most at the v1
shape: v1_fe 1.255–1.318 → 1.222–1.235× B over two runs (benchmarks/momentum_algebra.py).
Under autocast it runs in float32, as autocast runs ``layer_norm``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from sympformer.nn import recompute
from sympformer.rebuilt import Rebuilt

Coefficient = Tensor | float


class Affine(NamedTuple):
    """The stream t = input Wᵀ + b, rebuilt in the backward pass instead of kept (module docstring)."""

    input: Tensor
    weight: Tensor
    bias: Tensor | None

    def value(self) -> Tensor:
        return F.linear(self.input, self.weight, self.bias)


Stream = Tensor | Affine | Rebuilt


def stream_value(t: Stream) -> Tensor:
    """The stream as a tensor (an affine one by its product, a rebuilt one's value)."""
    return t.value() if isinstance(t, Affine) else t.form() if isinstance(t, Rebuilt) else t


def _kept_as_recipes(rebuilt: list[Rebuilt]):
    """Saved-tensor hooks under which an operation that saves a rebuilt stream's value keeps its recipe
    instead, and forms the value again (no graph) when its backward pass reads it. Every other saved
    tensor goes to the hooks these are nested in, if any (activation checkpointing, the benchmarks'
    accounting): PyTorch applies only the innermost pair."""

    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)  # (pack, unpack) around these, or None
    # by address and layout, and without the values: autograd keeps the hooks with what they saved
    recipes = {_layout(r.value): dataclasses.replace(r, value=None) for r in rebuilt}

    def pack(t: Tensor):
        recipe = recipes.get(_layout(t))
        if recipe is not None:
            return recipe
        return t if outer is None else (outer[1], outer[0](t))

    def unpack(saved):
        if isinstance(saved, Rebuilt):
            with torch.no_grad():
                return saved.form()
        return saved if outer is None else saved[0](saved[1])

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _layout(t: Tensor) -> tuple:
    return t.data_ptr(), t.dtype, tuple(t.shape), t.stride()


def _is_one(c: Coefficient) -> bool:
    return isinstance(c, float) and c == 1.0


def _weighted_sum(coefficients, streams) -> Tensor:
    """Σ c_k t_k, accumulated in place into one new tensor; t₀ + c₁ t₁ is one operator (an eager GPU step
    pays per operator launched)."""
    (c0, t0), rest = (coefficients[0], streams[0]), list(zip(coefficients[1:], streams[1:], strict=True))
    if _is_one(c0) and rest:
        (c1, t1), rest = rest[0], rest[1:]
        total = torch.addcmul(t0, t1, c1) if isinstance(c1, Tensor) else torch.add(t0, t1, alpha=c1)
    else:
        total = t0.clone() if _is_one(c0) else t0 * c0
    for c, t in rest:
        if isinstance(c, Tensor):
            total.addcmul_(t, c)
        else:
            total.add_(t, alpha=c)
    return total


def _streams(kinds: tuple[bool, ...], flat) -> list[Tensor]:
    """The streams from the flat inputs: one tensor per plain term, (input, W, b) per affine term."""
    streams, at = [], 0
    for affine in kinds:
        streams.append(F.linear(*flat[at : at + 3]) if affine else flat[at])
        at += 3 if affine else 1
    return streams


def _save_terms(ctx, kinds: tuple[bool, ...], coefficients, flat, *leading: Tensor | None) -> None:
    """Save ``leading`` tensors, the tensor coefficients and the flat inputs of Σ c_k t_k (numbers on ctx)."""
    ctx.float_coefficients = [None if isinstance(c, Tensor) else c for c in coefficients]
    tensor_coefficients = [c for c in coefficients if isinstance(c, Tensor)]
    ctx.save_for_backward(*leading, *tensor_coefficients, *flat)
    ctx.kinds, ctx.n_leading, ctx.n_tensor_coefficients = kinds, len(leading), len(tensor_coefficients)


def _saved_terms(ctx) -> tuple[list, list, tuple, list[Tensor]]:
    """(leading tensors, coefficients, flat inputs, streams) as :func:`_save_terms` saved them."""
    saved = ctx.saved_tensors
    leading, rest = list(saved[: ctx.n_leading]), saved[ctx.n_leading :]
    given = iter(rest[: ctx.n_tensor_coefficients])
    coefficients = [next(given) if c is None else c for c in ctx.float_coefficients]
    flat = rest[ctx.n_tensor_coefficients :]
    return leading, coefficients, flat, _streams(ctx.kinds, flat)


class _LayerNormOfSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, eps: float, weight, bias, kinds: tuple[bool, ...], *items):
        n = len(kinds)
        coefficients, flat = items[:n], items[n:]
        total = _weighted_sum(coefficients, _streams(kinds, flat))
        ctx.shape = [total.shape[-1]]
        out, mean, rstd = torch.native_layer_norm(total, ctx.shape, weight, bias, eps)
        _save_terms(ctx, kinds, coefficients, flat, weight, bias, mean, rstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (weight, bias, mean, rstd), coefficients, flat, streams = _saved_terms(ctx)
        total = _weighted_sum(coefficients, streams)
        needs = ctx.needs_input_grad
        grad_total, grad_weight, grad_bias = torch.ops.aten.native_layer_norm_backward(
            grad_out.contiguous(), total, ctx.shape, mean, rstd, weight, bias, [True, needs[1], needs[2]]
        )
        grad_coefficients, grad_flat = _sum_gradients(grad_total, coefficients, streams, ctx.kinds, flat, needs[4:])
        return None, grad_weight, grad_bias, None, *grad_coefficients, *grad_flat


def _sum_gradients(grad_total, coefficients, streams, kinds, flat, needs):
    """The gradients of Σ c_k t_k's coefficients and flat inputs from that of the sum: ∂c_k = ⟨∂u, t_k⟩,
    ∂t_k = c_k ∂u, and through an affine term's product (module docstring). ``needs``: one flag per
    coefficient, then per flat input."""
    n = len(kinds)
    grad_coefficients = [
        torch.dot(grad_total.flatten(), t.flatten()).to(c.dtype) if needs[k] else None
        for k, (c, t) in enumerate(zip(coefficients, streams, strict=True))
    ]
    grad_flat, at = [], n
    for c, t, affine in zip(coefficients, streams, kinds, strict=True):
        grad_t = grad_total if _is_one(c) else grad_total * c
        if not affine:
            grad_flat.append(grad_t.to(t.dtype) if needs[at] else None)
            at += 1
            continue
        a, w, b = flat[len(grad_flat) : len(grad_flat) + 3]
        rows = grad_t.reshape(-1, grad_t.shape[-1])
        grad_flat.append(grad_t @ w if needs[at] else None)
        grad_flat.append(rows.T @ a.reshape(-1, a.shape[-1]) if needs[at + 1] else None)
        grad_flat.append(rows.sum(0) if b is not None and needs[at + 2] else None)
        at += 3
    return grad_coefficients, grad_flat


class _WeightedSum(torch.autograd.Function):
    """Σ c_k t_k keeping only the streams (an affine term's input) and the tensor coefficients."""

    @staticmethod
    def forward(ctx, kinds: tuple[bool, ...], *items):
        n = len(kinds)
        coefficients, flat = items[:n], items[n:]
        _save_terms(ctx, kinds, coefficients, flat)
        return _weighted_sum(coefficients, _streams(kinds, flat))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        _, coefficients, flat, streams = _saved_terms(ctx)
        grads = _sum_gradients(grad_total, coefficients, streams, ctx.kinds, flat, ctx.needs_input_grad[1:])
        return None, *grads[0], *grads[1]


def weighted_sum(*terms: tuple[Coefficient, Tensor | Affine]) -> Tensor:
    """Σ c_k t_k for terms (c_k, t_k), keeping only the streams (the inputs of :class:`Affine` ones) for
    the backward pass, which rebuilds an affine term by its product: R2's momentum W = β₁ v + g₁ F with F
    the attention output, so that F itself is not kept. Coefficients: 0-d tensors or numbers.

    The plain sum under torch.compile or autocast, and for small activations (below
    :data:`recompute.MIN_ELEMENTS` in a stream, as the connection's recomputation): there a (B, T, C)
    tensor is a few hundred KiB and the Function's fixed cost is what would show (R2's primary step
    +0.6 % and +1.8 % with it, interleaved one-off runs)."""
    first = terms[0][1]
    if not recompute.rebuilds(first.input if isinstance(first, Affine) else first):
        return plain_weighted_sum(*terms)
    coefficients = [c if isinstance(c, Tensor) else float(c) for c, _ in terms]
    streams = [t for _, t in terms]
    kinds = tuple(isinstance(t, Affine) for t in streams)
    flat = [x for t in streams for x in (t if isinstance(t, Affine) else (t,))]
    return _WeightedSum.apply(kinds, *coefficients, *flat)


def layer_norm_of_sum(norm: nn.LayerNorm, *terms: tuple[Coefficient, Stream]) -> Tensor:
    """``norm(Σ c_k t_k)`` for terms (c_k, t_k), keeping only the streams t_k (the inputs of
    :class:`Affine` ones, the recipe of :class:`Rebuilt` ones) and the row statistics for the backward
    pass (module docstring). Coefficients: 0-d tensors (learned scalars) or numbers."""
    if torch.compiler.is_compiling():  # inductor fuses the sum into the LayerNorm and chooses what to recompute
        return plain_layer_norm_of_sum(norm, *terms)
    coefficients, streams = [], []
    for c, t in terms:  # a stream given twice (H0's x_a = x + V_a, then + μ V_a) becomes one term
        c = c if isinstance(c, Tensor) else float(c)
        same = [k for k, seen in enumerate(streams) if seen is t]
        if same:
            coefficients[same[0]] = coefficients[same[0]] + c
        else:
            coefficients.append(c)
            streams.append(t)
    rebuilt = [t for t in streams if isinstance(t, Rebuilt)]
    if rebuilt:
        streams = [t.form() if isinstance(t, Rebuilt) else t for t in streams]
        with _kept_as_recipes(rebuilt):
            return layer_norm_of_sum(norm, *zip(coefficients, streams, strict=True))
    device = (streams[0].input if isinstance(streams[0], Affine) else streams[0]).device.type
    if torch.is_autocast_enabled(device):  # autocast runs layer_norm in float32: so does this
        # (affine terms as ordinary products, in the autocast dtype)
        streams = [(t.value() if isinstance(t, Affine) else t).float() for t in streams]
        coefficients = [c.float() if isinstance(c, Tensor) else c for c in coefficients]
        with torch.autocast(device, enabled=False):
            return _apply(norm, coefficients, streams)
    dtype = None
    for t in streams:
        t_dtype = t.input.dtype if isinstance(t, Affine) else t.dtype
        dtype = t_dtype if dtype is None else torch.promote_types(dtype, t_dtype)
    return _apply(norm, coefficients, [t if isinstance(t, Affine) else t.to(dtype) for t in streams])


def rebuilt_layer_norm_of_sum(norm: nn.LayerNorm, *terms: tuple[Coefficient, Tensor]) -> Rebuilt:
    """``norm(Σ c_k t_k)`` (:func:`layer_norm_of_sum`, its gradient as usual) as a :class:`Rebuilt`
    stream for the LayerNorms of further sums: where those would keep it for their backward passes, they
    keep the recipe and normalise the streams again when they read it (values only, no graph: one
    LayerNorm pass). For a LayerNorm output whose streams are kept anyway: R2's V_a = LN_v(W − η C) and
    increment, from W and C, which LN_M and the next LN_v would keep (two (B, T, C) tensors a layer). The
    recipe holds the streams, coefficients and the norm's parameters themselves: they must not be
    changed in place before the backward pass (autograd would not notice)."""
    return Rebuilt(lambda: layer_norm_of_sum(norm, *terms), (), value=layer_norm_of_sum(norm, *terms))


def plain_weighted_sum(*terms: tuple[Coefficient, Stream]) -> Tensor:
    """Σ c_k t_k as an ordinary autograd graph, which keeps every product (used under torch.compile and
    autocast, and as the benchmarks' baseline)."""
    return sum(c * stream_value(t) for c, t in terms)


def plain_layer_norm_of_sum(norm: nn.LayerNorm, *terms: tuple[Coefficient, Stream]) -> Tensor:
    """The same value as an ordinary autograd graph, which keeps every product and the sum (used under
    torch.compile, and as the benchmarks' baseline)."""
    return norm(plain_weighted_sum(*terms))


def _apply(norm: nn.LayerNorm, coefficients: list, streams: list) -> Tensor:
    kinds = tuple(isinstance(t, Affine) for t in streams)
    flat = [x for t in streams for x in (t if isinstance(t, Affine) else (t,))]
    return _LayerNormOfSum.apply(norm.eps, norm.weight, norm.bias, kinds, *coefficients, *flat)
