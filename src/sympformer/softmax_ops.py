r"""Softmax-weighted sums without a score matrix, through ``scaled_dot_product_attention``.

Every softmax force in the package is a softmax average Σ_j P_ij v_j, P_ij ∝ exp(scale·q_i·k_j),
for some values v; several averages with the same P are one SDPA call on concatenated values.
Fused kernels (flash / memory-efficient, CPU included) need q, k and v of one width, so the
helpers zero-pad to a common width (padding q and k adds nothing to the scores).

The normaliser L_i = log Σ_j exp(scale·q_i·k_j) is not returned by SDPA. It is recovered from a
*sentinel key*: one extra key whose score for query i is a chosen centre c_i, and whose one-hot
value returns π_i = e^{c_i} / (e^{c_i} + e^{L_i}); then L_i = c_i + log(1 − π_i) − log π_i exactly,
for any c_i. With c_i the expected score E_P[s_i] (entropy bound: L_i − log n ≤ E_P[s_i] ≤ L_i),
π_i ∈ [1/(1+n), 1/2], so nothing overflows or underflows at any scale of the scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def _pad_width(t: Tensor, width: int) -> Tensor:
    return t if t.shape[-1] == width else F.pad(t, (0, width - t.shape[-1]))


_CPU_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


class _CPUFlashAverage(torch.autograd.Function):
    r"""Σ_j softmax_j(scale·q_i·k_j) v_j through PyTorch's fused CPU kernel, with v given as pieces of
    any widths. The kernel wants q, k and v of one width W, so they are zero-padded to W inside; what
    is saved for the backward pass is the *unpadded* q, k and pieces plus the output and the row
    log-normaliser, and the padding is rebuilt in the backward pass. Compared with padding outside
    the autograd graph this keeps neither the padded q, k nor the concatenated values alive between
    the forward and the backward pass (H1's saved activations at the heavy shape: 352.8 → 224.5 MiB
    together with the recomputed connection algebra; benchmarks/profile_steps.py). Inputs are
    (B, H, L, ·); no mask, no dropout."""

    @staticmethod
    def forward(ctx, q, k, scale, causal, *pieces):
        widths = [v.shape[-1] for v in pieces]
        width = max(q.shape[-1], sum(widths))
        values = _pad_width(torch.cat(pieces, -1) if len(pieces) > 1 else pieces[0], width)
        out, log_norm = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            _pad_width(q, width), _pad_width(k, width), values, 0.0, causal, scale=scale
        )
        ctx.save_for_backward(q, k, out, log_norm, *pieces)
        ctx.scale, ctx.causal, ctx.width = scale, causal, width
        return out[..., : sum(widths)]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, out, log_norm, *pieces = ctx.saved_tensors
        width = ctx.width
        values = _pad_width(torch.cat(pieces, -1) if len(pieces) > 1 else pieces[0], width)
        grad_q, grad_k, grad_v = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            _pad_width(grad_out.contiguous(), width),
            _pad_width(q, width),
            _pad_width(k, width),
            values,
            out,
            log_norm,
            0.0,
            ctx.causal,
            scale=ctx.scale,
        )
        grad_pieces = grad_v[..., : sum(v.shape[-1] for v in pieces)].split([v.shape[-1] for v in pieces], -1)
        return grad_q[..., : q.shape[-1]], grad_k[..., : k.shape[-1]], None, None, *grad_pieces


def softmax_average_of(
    q: Tensor,
    k: Tensor,
    pieces: list[Tensor],
    *,
    scale: float = 1.0,
    causal: bool = False,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Σ_j softmax_j(scale·q_i·k_j) [v¹_j, v², …] for value ``pieces`` of any widths, concatenated in the
    last dimension (j ≤ i when ``causal``; j where ``mask`` is True when a boolean mask is given);
    shapes (..., L, d), one fused kernel call (with attention dropout ``dropout_p``: SDPA's own)."""
    batch = q.shape[:-2]
    as4d = lambda t: t.reshape(-1, 1, *t.shape[-2:]) if t.ndim != 4 else t  # fused kernels want (B, H, L, E)
    width = sum(v.shape[-1] for v in pieces)
    q4, k4, pieces4 = as4d(q), as4d(k), [as4d(v) for v in pieces]
    cpu_flash = q.device.type == "cpu" and q.dtype in _CPU_FLASH_DTYPES and mask is None and dropout_p == 0
    if cpu_flash and q.shape[-2] and k.shape[-2]:
        # like SDPA under autocast, compute in the autocast dtype (else in q's dtype)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
        q4, k4, pieces4 = q4.to(dtype), k4.to(dtype), [v.to(dtype) for v in pieces4]
        # a tensor passed twice (H1 averages its keys) goes in once more as a view: torch.compile
        # cannot trace an autograd.Function given the same tensor twice
        inputs = [q4, k4]
        for v in pieces4:
            inputs.append(v.view_as(v) if any(v is seen for seen in inputs) else v)
        out = _CPUFlashAverage.apply(inputs[0], inputs[1], scale, causal, *inputs[2:])
    else:
        full = max(q.shape[-1], width)
        values = torch.cat(pieces4, -1) if len(pieces4) > 1 else pieces4[0]
        out = F.scaled_dot_product_attention(
            _pad_width(q4, full),
            _pad_width(k4, full),
            _pad_width(values, full),
            attn_mask=mask,
            dropout_p=dropout_p,
            scale=scale,
            is_causal=causal and mask is None,
        )[..., :width]
    return out.reshape(*batch, q.shape[-2], width)


def softmax_average(
    q: Tensor, k: Tensor, v: Tensor, *, scale: float = 1.0, causal: bool = False, mask: Tensor | None = None
) -> Tensor:
    """Σ_j softmax_j(scale·q_i·k_j) v_j (j ≤ i when ``causal``; j where ``mask`` is True when a boolean
    mask is given), shapes (..., L, d), one fused kernel call."""
    return softmax_average_of(q, k, [v], scale=scale, causal=causal, mask=mask)


def softmax_average_with_normaliser(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    centre: Tensor,
    *,
    scale: float = 1.0,
    causal: bool = False,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""(Σ_j P_ij v_j, L_i) from ONE SDPA call: the keys plus a sentinel whose score for query i is
    ``centre`` (..., Lq) and whose one-hot value returns π_i = e^{c_i} / (e^{c_i} + e^{L_i}).
    Then L_i = c_i + log(1 − π_i) − log π_i, and the real keys' weights are P_ij (1 − π_i), so
    Σ_j P_ij v_j = out_i / (1 − π_i). Exact for any centre that keeps π_i away from 0 and 1 in the
    working precision (|c_i − L_i| ≲ 80 in float32, ≲ 700 in float64). ``v`` may have width 0."""
    centre = centre.detach()
    batch = q.shape[:-2]
    n_keys, width = k.shape[-2], v.shape[-1]
    q_aug = torch.cat([q, (centre / scale).unsqueeze(-1)], dim=-1)
    k_aug = torch.cat([k, k.new_zeros(*batch, n_keys, 1)], dim=-1)
    sentinel_key = k.new_zeros(*batch, 1, k.shape[-1] + 1)
    sentinel_key[..., -1] = 1.0
    sentinel_value = v.new_zeros(*batch, 1, width + 1)
    sentinel_value[..., -1] = 1.0
    keys = torch.cat([sentinel_key, k_aug], dim=-2)
    values = torch.cat([sentinel_value, torch.cat([v, v.new_zeros(*batch, n_keys, 1)], dim=-1)], dim=-2)
    if mask is not None:  # the sentinel (first key) is visible to every query
        visible = torch.cat([mask.new_ones(*mask.shape[:-1], 1), mask], dim=-1)
        out = softmax_average(q_aug, keys, values, scale=scale, mask=visible)
    elif causal:  # a dummy query in front, so that query i sees the sentinel and the keys ≤ i
        queries = torch.cat([q_aug.new_zeros(*batch, 1, q_aug.shape[-1]), q_aug], dim=-2)
        out = softmax_average(queries, keys, values, scale=scale, causal=True)[..., 1:, :]
    else:
        out = softmax_average(q_aug, keys, values, scale=scale)
    pi = out[..., -1]
    average = out[..., :width] / (1 - pi).unsqueeze(-1)
    return average, centre + torch.log1p(-pi) - torch.log(pi)


def softmax_log_normaliser(
    q: Tensor,
    k: Tensor,
    *,
    scale: float = 1.0,
    causal: bool = False,
    expected_score: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""L_i = log Σ_j exp(scale·q_i·k_j) over the keys j that query i sees (j ≤ i when ``causal``; where
    the boolean ``mask`` (Lq, Lk) is True when given), by the sentinel method centred on the expected
    score E_P[s_i] (entropy bound: L_i − log n ≤ E_P[s_i] ≤ L_i, so π_i ∈ [1/(1+n), 1/2] at any scale).

    ``expected_score`` (shape (..., Lq)) may be passed when the caller already has Σ_j P_ij k_j;
    otherwise one extra SDPA call computes it. Differentiable in q and k.
    """
    if expected_score is None:
        average = softmax_average(q, k, k, scale=scale, causal=causal, mask=mask)
        expected_score = scale * (q * average).sum(-1)
    empty = k.new_zeros(*k.shape[:-1], 0)
    return softmax_average_with_normaliser(q, k, empty, expected_score, scale=scale, causal=causal, mask=mask)[1]
