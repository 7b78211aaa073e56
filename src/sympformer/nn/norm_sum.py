r"""LayerNorm of a weighted sum of streams, with the sum recomputed in the backward pass:

    y = LN(Σ_k c_k t_k)        (c_k: learned 0-d scalars or fixed numbers; t_k: (…, C) streams)

The momentum blocks normalise such sums at every half-step (LN_v(β v + g F), LN_M(x + d + μ V_a),
LN_A(x + μ v), …). Autograd would keep each product c_k t_k, the sum and the LayerNorm's input: one
(…, C) tensor per term and one more. This function keeps only the streams t_k (which the blocks keep
anyway) and the LayerNorm's row statistics, and in the backward pass rebuilds the sum once:

    u = Σ c_k t_k,   (∂u, ∂w, ∂b) = LayerNorm backward(∂y; u, mean, rstd),
    ∂t_k = c_k ∂u,   ∂c_k = ⟨∂u, t_k⟩  (one dot product, no temporary).

It replaces activation checkpointing of the same algebra (torch.utils.checkpoint), whose fixed cost
per region (a frame, saved-tensor hooks, a second forward through autograd) cost the v1 presymplectic
Euler step 8 % at the v1 benchmark shape (benchmarks/RESULTS.md, "Recomputed momentum algebra").
Under autocast it runs in float32, as autocast runs ``layer_norm``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

Coefficient = Tensor | float


def _weighted_sum(coefficients, streams, out_of_place: bool = False) -> Tensor:
    """Σ c_k t_k, accumulated in place into one new tensor (out of place: an ordinary autograd graph)."""
    if out_of_place:
        return sum(
            t if isinstance(c, float) and c == 1.0 else c * t for c, t in zip(coefficients, streams, strict=True)
        )
    total = None
    for c, t in zip(coefficients, streams, strict=True):
        if total is None:
            total = t * c if not (isinstance(c, float) and c == 1.0) else t.clone()
        elif isinstance(c, Tensor):
            total.addcmul_(t, c)
        else:
            total.add_(t, alpha=c)
    return total


class _LayerNormOfSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, eps: float, weight, bias, n_terms: int, *items):
        coefficients, streams = items[:n_terms], items[n_terms:]
        total = _weighted_sum(coefficients, streams)
        shape = [total.shape[-1]]
        out, mean, rstd = torch.native_layer_norm(total, shape, weight, bias, eps)
        tensor_coefficients = [c if isinstance(c, Tensor) else None for c in coefficients]
        ctx.float_coefficients = [None if isinstance(c, Tensor) else c for c in coefficients]
        ctx.save_for_backward(weight, bias, mean, rstd, *[c for c in tensor_coefficients if c is not None], *streams)
        ctx.n_terms, ctx.n_tensor_coefficients, ctx.shape = (
            n_terms,
            sum(c is not None for c in tensor_coefficients),
            shape,
        )
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        weight, bias, mean, rstd, *rest = ctx.saved_tensors
        given = iter(rest[: ctx.n_tensor_coefficients])
        coefficients = [next(given) if c is None else c for c in ctx.float_coefficients]
        streams = rest[ctx.n_tensor_coefficients :]
        total = _weighted_sum(coefficients, streams)
        needs = ctx.needs_input_grad
        grad_total, grad_weight, grad_bias = torch.ops.aten.native_layer_norm_backward(
            grad_out.contiguous(), total, ctx.shape, mean, rstd, weight, bias, [True, needs[1], needs[2]]
        )
        n = ctx.n_terms
        grad_coefficients = [
            torch.dot(grad_total.flatten(), t.flatten()).to(c.dtype) if needs[4 + k] else None
            for k, (c, t) in enumerate(zip(coefficients, streams, strict=True))
        ]
        grad_streams = []
        for k, (c, t) in enumerate(zip(coefficients, streams, strict=True)):
            if not needs[4 + n + k]:
                grad_streams.append(None)
            elif isinstance(c, float) and c == 1.0:
                grad_streams.append(grad_total.to(t.dtype))
            else:
                grad_streams.append((grad_total * c).to(t.dtype))
        return None, grad_weight, grad_bias, None, *grad_coefficients, *grad_streams


def layer_norm_of_sum(norm: nn.LayerNorm, *terms: tuple[Coefficient, Tensor]) -> Tensor:
    """``norm(Σ c_k t_k)`` for terms (c_k, t_k), keeping only the streams t_k and the row statistics for
    the backward pass (module docstring). Coefficients: 0-d tensors (learned scalars) or numbers."""
    coefficients, streams = [], []
    for c, t in terms:  # a stream given twice (H0's x_a = x + V_a, then + μ V_a) becomes one term
        c = c if isinstance(c, Tensor) else float(c)
        same = [k for k, seen in enumerate(streams) if seen is t]
        if same:
            coefficients[same[0]] = coefficients[same[0]] + c
        else:
            coefficients.append(c)
            streams.append(t)
    if torch.compiler.is_compiling():
        # inductor fuses the sum into the LayerNorm and chooses what to recompute itself; and tracing this
        # Function inside nested activation checkpoints fails in torch 2.13 once another model compiled
        return norm(_weighted_sum(coefficients, streams, out_of_place=True))
    device = streams[0].device.type
    if torch.is_autocast_enabled(device):  # autocast runs layer_norm in float32: so does this
        streams = [t.float() for t in streams]
        coefficients = [c.float() if isinstance(c, Tensor) else c for c in coefficients]
        with torch.autocast(device, enabled=False):
            return _LayerNormOfSum.apply(norm.eps, norm.weight, norm.bias, len(streams), *coefficients, *streams)
    dtype = streams[0].dtype
    for t in streams[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    streams = [t.to(dtype) for t in streams]
    return _LayerNormOfSum.apply(norm.eps, norm.weight, norm.bias, len(streams), *coefficients, *streams)
