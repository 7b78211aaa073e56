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


def _pad_width(t: Tensor, width: int) -> Tensor:
    return t if t.shape[-1] == width else F.pad(t, (0, width - t.shape[-1]))


def softmax_average(
    q: Tensor, k: Tensor, v: Tensor, *, scale: float = 1.0, causal: bool = False, mask: Tensor | None = None
) -> Tensor:
    """Σ_j softmax_j(scale·q_i·k_j) v_j (j ≤ i when ``causal``; j where ``mask`` is True when a boolean
    mask is given), shapes (..., L, d), one SDPA call."""
    width = max(q.shape[-1], v.shape[-1])
    out = F.scaled_dot_product_attention(
        _pad_width(q, width),
        _pad_width(k, width),
        _pad_width(v, width),
        attn_mask=mask,
        scale=scale,
        is_causal=causal and mask is None,
    )
    return out[..., : v.shape[-1]]


def softmax_log_normaliser(
    q: Tensor, k: Tensor, *, scale: float = 1.0, causal: bool = False, expected_score: Tensor | None = None
) -> Tensor:
    r"""L_i = log Σ_j exp(scale·q_i·k_j) (j ≤ i when ``causal``) by the sentinel-key method.

    ``expected_score`` (E_P[scale·q_i·k_j], shape (..., L)) may be passed when the caller already has
    Σ_j P_ij k_j; otherwise one extra SDPA call computes it. Differentiable in q and k.
    """
    if expected_score is None:
        expected_score = scale * (q * softmax_average(q, k, k, scale=scale, causal=causal)).sum(-1)
    centre = expected_score.detach()
    batch = q.shape[:-2]
    n_keys = k.shape[-2]
    q_aug = torch.cat([q, (centre / scale).unsqueeze(-1)], dim=-1)
    k_aug = torch.cat([k, k.new_zeros(*batch, n_keys, 1)], dim=-1)
    sentinel = k.new_zeros(*batch, 1, k.shape[-1] + 1)
    sentinel[..., -1] = 1.0
    hit = k.new_ones(*batch, 1, 1)
    miss = k.new_zeros(*batch, n_keys, 1)
    if causal:  # the sentinel goes first, with a dummy query in front so that query i sees it and keys ≤ i
        queries = torch.cat([q_aug.new_zeros(*batch, 1, q_aug.shape[-1]), q_aug], dim=-2)
        keys, values = torch.cat([sentinel, k_aug], dim=-2), torch.cat([hit, miss], dim=-2)
        pi = softmax_average(queries, keys, values, scale=scale, causal=True)[..., 1:, 0]
    else:
        keys, values = torch.cat([k_aug, sentinel], dim=-2), torch.cat([miss, hit], dim=-2)
        pi = softmax_average(q_aug, keys, values, scale=scale)[..., 0]
    return centre + torch.log1p(-pi) - torch.log(pi)
