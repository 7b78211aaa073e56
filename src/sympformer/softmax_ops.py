r"""Softmax-weighted sums without a score matrix, through ``scaled_dot_product_attention``.

Every softmax force in the package is a softmax average Σ_j P_ij v_j, P_ij ∝ exp(scale·q_i·k_j),
for some values v; several averages with the same P are one SDPA call on concatenated values.
Fused kernels (flash / memory-efficient, CPU included) need q, k and v of one width, so the
helpers zero-pad to a common width (padding q and k adds nothing to the scores). On the CPU the
attention takes several causal value groups in one materialised pass instead where
:func:`row_blocks_serve` (:mod:`sympformer.row_block_softmax`).

The normaliser L_i = log Σ_j exp(scale·q_i·k_j) comes from the fused CPU kernel itself, which
computes it anyway (its gradient folded into the kernel's backward pass). SDPA does not return it, so
elsewhere (GPU, masks) it is recovered from a *sentinel key*: one extra key whose score for query i
is a chosen centre c_i, and whose one-hot value returns π_i = e^{c_i} / (e^{c_i} + e^{L_i}); then
L_i = c_i + log(1 − π_i) − log π_i exactly, for any c_i. With c_i the expected score E_P[s_i]
(entropy bound: L_i − log n ≤ E_P[s_i] ≤ L_i), π_i ∈ [1/(1+n), 1/2], so nothing overflows or
underflows at any scale of the scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from sympformer.rebuilt import Piece, Rebuilt, formed, piece_width, rebuilding_applies  # noqa: F401 (re-exported)
from sympformer.rebuilt import flattened as _flattened
from sympformer.rebuilt import pieces_of as _pieces_of
from sympformer.rebuilt import through_recipes as _through_recipes


def _pad_width(t: Tensor, width: int) -> Tensor:
    return t if t.shape[-1] == width else F.pad(t, (0, width - t.shape[-1]))


_CPU_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16)

# The CPU's own kernels: the fused CPU flash kernel's Function (L from the kernel, recipes kept), the
# materialised pass of several value groups and the v1 oracle's. False: the CPU takes the code a GPU takes
# (SDPA with the sentinel key for L, one call per value group, the oracle's two flash calls), to test it
# and to estimate a GPU run's memory (tests/nn/test_device_paths.py, benchmarks/memory.py --device-paths)
CPU_KERNELS = True


# |dO_i|² below this takes the extra column: above it dO_i / |dO_i|² ≤ 1e15 and the squared norm sits far
# above float32's subnormal range (1.2e-38), so the fold is exact to rounding (rows of 1e-22 are common)
_FOLD_FLOOR = 1e-30


class _CPUFlashAverage(torch.autograd.Function):
    r"""(Σ_j softmax_j(scale·q_i·k_j) v_j, L_i) through PyTorch's fused CPU kernel, with v given as pieces
    of any widths and L_i = log Σ_j exp(scale·q_i·k_j) the row log-normaliser the kernel computes anyway.
    The kernel wants q, k and v of one width W, so they are zero-padded to W inside; what is saved for
    the backward pass is the *unpadded* q, k and pieces (a :class:`Rebuilt` piece's inputs instead,
    ``recipes`` from :func:`_flattened`) plus the output and L, and the padding is rebuilt in the
    backward pass. Compared with padding outside the autograd graph this keeps neither
    the padded q, k nor the concatenated values alive between the forward and the backward pass (H1's
    saved activations at the heavy shape: 352.8 → 224.5 MiB together with the recomputed connection
    algebra; benchmarks/profile_steps.py). Inputs are (B, H, L, ·); no mask, no dropout.

    The gradient through L rides on the kernel's own backward pass. With dS_ij the gradient of the
    score s_ij, the kernel forms dS_ij = P_ij (dP_ij − D_i) with D_i = Σ_c dO_ic O_ic, and
    ∂L_i/∂s_ij = P_ij, so a gradient dL_i adds P_ij dL_i: the same as D_i − dL_i, which a changed
    output handed to the backward kernel gives (:func:`_fold_log_norm_gradient`)."""

    @staticmethod
    def forward(ctx, q, k, scale, causal, recipes, *tensors):
        ctx.set_materialize_grads(False)
        pieces, _ = _pieces_of(recipes, tensors)
        widths = [v.shape[-1] for v in pieces]
        width = max(q.shape[-1], sum(widths))
        values = _pad_width(torch.cat(pieces, -1) if len(pieces) > 1 else pieces[0], width)
        out, log_norm = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            _pad_width(q, width), _pad_width(k, width), values, 0.0, causal, scale=scale
        )
        ctx.save_for_backward(q, k, out, log_norm, *tensors)
        ctx.scale, ctx.causal, ctx.width, ctx.recipes = scale, causal, width, recipes
        # a rebuilt piece is formed again as it was formed here: under autocast when this ran under it
        ctx.autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        return out[..., : sum(widths)], log_norm

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_log_norm):
        q, k, out, log_norm, *tensors = ctx.saved_tensors
        width, average_used = ctx.width, grad_out is not None
        if not average_used and grad_log_norm is None:
            return (None,) * (5 + len(tensors))
        with _autocast_as(ctx.autocast):  # a rebuilt piece's graph, where its inputs need gradients
            pieces, graphs = _pieces_of(ctx.recipes, tensors, ctx.needs_input_grad[5:])
        widths = [v.shape[-1] for v in pieces]
        if not average_used:  # only L is (a log-normaliser alone, the last v1 layer's oracle)
            grad_out, out, values = _log_norm_only_gradient(out, grad_log_norm)
        else:
            grad_out = _pad_width(grad_out.contiguous(), width)
            if grad_log_norm is not None:
                out, width = _fold_log_norm_gradient(out, grad_out, grad_log_norm)
                if width > ctx.width:  # the extra column
                    grad_out = _pad_width(grad_out, width)
                    grad_out[..., -1] = -grad_log_norm
            values = _pad_width(torch.cat(pieces, -1) if len(pieces) > 1 else pieces[0], width)
        grad_q, grad_k, grad_v = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out,
            _pad_width(q, width),
            _pad_width(k, width),
            values,
            out,
            log_norm,
            0.0,
            ctx.causal,
            scale=ctx.scale,
        )
        grad_pieces = grad_v[..., : sum(widths)].split(widths, -1) if average_used else [None] * len(pieces)
        grad_tensors = _through_recipes(ctx.recipes, graphs, grad_pieces)
        return grad_q[..., : q.shape[-1]], grad_k[..., : k.shape[-1]], None, None, None, *grad_tensors


def _autocast_as(dtype: torch.dtype | None):
    """CPU autocast to ``dtype``, or none."""
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)


def _log_norm_only_gradient(out: Tensor, grad_log_norm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""(dO, O', values) that make the kernel's backward pass give the gradient of L alone at the
    same width, exactly: with zero values dP_ij = dO_i·v_j = 0, and with dO_i = e₁, O'_i = −dL_i e₁ the
    kernel's D_i = dO_i·O'_i = −dL_i, so dS_ij = P_ij (dP_ij − D_i) = P_ij dL_i = dL_i ∂L_i/∂s_ij.
    The values' gradient it returns is then not theirs (the average is not used: it is dropped). Before,
    such a call took the extra column of :func:`_fold_log_norm_gradient`, 129 wide for a v1 oracle."""
    grad_out = torch.zeros_like(out)
    grad_out[..., 0] = 1.0
    folded = torch.zeros_like(out)
    folded[..., 0] = -grad_log_norm
    return grad_out, folded, torch.zeros_like(out)


def _fold_log_norm_gradient(out: Tensor, grad_out: Tensor, grad_log_norm: Tensor) -> tuple[Tensor, int]:
    r"""The output to hand the kernel's backward pass so that it adds the gradient dL of the log-normaliser:
    the kernel reads the output only for D_i = Σ_c dO_ic O_ic, and D_i − dL_i is what it needs.

    Where every row of dO is clearly nonzero, O'_i = O_i − dL_i dO_i / |dO_i|² gives exactly that at
    the same width (each term of the kernel's sum stays within |dO_i||O_i| + |dL_i|). Otherwise (a zero
    row: an average partly unused) one more column: one in the output, −dL_i in dO (the caller pads
    dO), zero in q, k and v. Returns (the output, the width to run at)."""
    wide = grad_out.to(torch.promote_types(grad_out.dtype, torch.float32))
    norm2 = (wide * wide).sum(-1)
    if bool((norm2 > _FOLD_FLOOR).all()):
        correction = grad_log_norm.unsqueeze(-1) * (wide / norm2.unsqueeze(-1))  # ≤ 1e15 |dL_i| per entry
        return (out - correction).to(out.dtype), out.shape[-1]
    return torch.cat([out, torch.ones_like(out[..., :1])], -1), out.shape[-1] + 1


def _cpu_flash_applies(q: Tensor, k: Tensor, mask: Tensor | None, dropout_p: float = 0.0) -> bool:
    """True where :class:`_CPUFlashAverage` serves the call: eager mode on CPU, a kernel dtype, no mask,
    no dropout. Under torch.compile SDPA itself is traced (inductor picks the kernel and what to save):
    in torch 2.13, dynamo's tracing of this autograd.Function fails once a second model compiles in the
    same process ("lift_tracked_freevar_to_input should not be called on root SubgraphTracer")."""
    eligible = (
        CPU_KERNELS and q.device.type == "cpu" and q.dtype in _CPU_FLASH_DTYPES and mask is None and dropout_p == 0
    )
    return eligible and q.shape[-2] > 0 and k.shape[-2] > 0 and not torch.compiler.is_compiling()


_ROW_BLOCK_DTYPES = (torch.float32, torch.float64)


def row_blocks_serve(q: Tensor, k: Tensor, widths: Sequence[int], causal: bool, mask=None, dropout_p=0.0) -> bool:
    """True where the causal softmax averages of value groups as wide as ``widths`` take one materialised
    pass (:func:`sympformer.row_block_softmax.causal_averages`) rather than the fused kernel: where that
    kernel would serve the call, causal over keys that are the queries' own positions, in float32 or
    float64 outside autocast, and only where the values are wider than q (several groups, for which the
    fused kernel pads q and k to their total width or takes one call each)."""
    serves = causal and q.shape[-2] == k.shape[-2] and _cpu_flash_applies(q, k, mask, dropout_p)
    wider = sum(widths) > q.shape[-1]
    return serves and wider and q.dtype in _ROW_BLOCK_DTYPES and not torch.is_autocast_enabled("cpu")


# the most bytes of scores one generic (unfused, score-materialising) SDPA call may hold: above it, query
# rows go in chunks. The particle lab's float64 on a GPU, 10⁵ particles: 80 GB of scores → 128 MiB chunks
# of 167 rows (at a 1 GiB budget an H200 held 2.27 GB for one evaluation, against the < 1 GB target)
SCORE_BUDGET_BYTES = 2**27


def _query_rows_per_call(q: Tensor, k: Tensor, mask: Tensor | None, causal: bool, dropout_p: float) -> int:
    """How many query rows one SDPA call takes. All of them, unless the call would take SDPA's generic
    path, which materialises the (queries × keys) scores: float64 off the CPU flash kernel (no GPU
    kernel fuses float64). Then as many as keep the scores within SCORE_BUDGET_BYTES (unmasked,
    non-causal calls only: a query chunk's average over all keys is the same average)."""
    n_q = q.shape[-2]
    if q.dtype != torch.float64 or mask is not None or causal or dropout_p != 0:
        return n_q
    row_bytes = math.prod(q.shape[:-2]) * k.shape[-2] * q.element_size()
    return max(1, min(n_q, SCORE_BUDGET_BYTES // max(row_bytes, 1)))


def kernel_log_normaliser(q: Tensor, k: Tensor, mask: Tensor | None = None) -> bool:
    """True where :func:`softmax_average_with_normaliser` takes L from the fused CPU kernel (no sentinel
    key, so no centre needed)."""
    return _cpu_flash_applies(q, k, mask)


def _as4d(t: Tensor) -> Tensor:
    return t.reshape(math.prod(t.shape[:-2]), 1, *t.shape[-2:]) if t.ndim != 4 else t  # kernels want (B, H, L, E)


def _cpu_flash(q: Tensor, k: Tensor, pieces: Sequence[Piece], scale: float, causal: bool) -> tuple[Tensor, Tensor]:
    """(Σ_j P_ij [v¹_j, v², …], L_i) by :class:`_CPUFlashAverage`, shapes (..., L, d) and (..., L)."""
    batch, length = q.shape[:-2], q.shape[-2]
    # like SDPA under autocast, compute in the autocast dtype (else in q's dtype)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    as_input = lambda t: _as4d(t).to(dtype)
    recipes, tensors = _flattened(pieces, as_input)
    out, log_norm = _CPUFlashAverage.apply(as_input(q), as_input(k), scale, causal, recipes, *tensors)
    return out.reshape(*batch, length, out.shape[-1]), log_norm.reshape(*batch, length)


def _recipe_alone(q: Tensor, pieces: Sequence[Piece]) -> bool:
    """One value group given by its recipe (a :class:`Rebuilt` piece not yet formed) where rebuilding
    applies (:func:`~sympformer.rebuilt.rebuilding_applies`; the recipe itself exists only for large
    activations): the call for :func:`_average_of_recipe`."""
    alone = len(pieces) == 1 and isinstance(pieces[0], Rebuilt) and pieces[0].value is None
    return alone and rebuilding_applies(q)


def _average_of_recipe(q: Tensor, k: Tensor, piece: Rebuilt, **options) -> Tensor:
    """Σ_j P_ij v_j for a value v given by its recipe, through SDPA as a checkpoint region. SDPA keeps the
    values it is handed for its backward pass; here only q, k and the recipe's inputs are kept (H1/R2's
    dk = W_K u and s·w along u: u, W_K and w, which the connection keeps anyway), and the backward pass
    forms v again and repeats the call's forward pass before its own: one more fused forward pass for a
    (B, T, C) tensor a group. What the CPU kernel's Function does by itself (:class:`_CPUFlashAverage`),
    for the other devices, one call per value group (``attention._value_group_calls``)."""
    call = lambda q, k, *inputs: softmax_average_of(q, k, [piece.fn(*inputs)], **options)
    random = options.get("dropout_p", 0.0) > 0  # the same dropout mask when the call is repeated
    return checkpoint(call, q, k, *piece.inputs, use_reentrant=False, preserve_rng_state=random)


def softmax_average_of(
    q: Tensor,
    k: Tensor,
    pieces: Sequence[Piece],
    *,
    scale: float = 1.0,
    causal: bool = False,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Σ_j softmax_j(scale·q_i·k_j) [v¹_j, v², …] for value ``pieces`` of any widths, concatenated in the
    last dimension (j ≤ i when ``causal``; j where ``mask`` is True when a boolean mask is given);
    shapes (..., L, d), one fused kernel call (with attention dropout ``dropout_p``: SDPA's own). A piece
    may be :class:`Rebuilt`."""
    if _cpu_flash_applies(q, k, mask, dropout_p):
        return _cpu_flash(q, k, pieces, scale, causal)[0]
    if _recipe_alone(q, pieces):
        return _average_of_recipe(q, k, pieces[0], scale=scale, causal=causal, mask=mask, dropout_p=dropout_p)
    pieces = formed(pieces)
    rows = _query_rows_per_call(q, k, mask, causal, dropout_p)
    if rows < q.shape[-2]:  # no fused kernel for the dtype: keep each call's score matrix within budget
        chunks = [softmax_average_of(q_c, k, pieces, scale=scale) for q_c in q.split(rows, dim=-2)]
        return torch.cat(chunks, dim=-2)
    batch = q.shape[:-2]
    width = sum(v.shape[-1] for v in pieces)
    full = max(q.shape[-1], width)
    values = torch.cat([_as4d(v) for v in pieces], -1) if len(pieces) > 1 else _as4d(pieces[0])
    out = F.scaled_dot_product_attention(
        _pad_width(_as4d(q), full),
        _pad_width(_as4d(k), full),
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
    centre: Tensor | None,
    *,
    scale: float = 1.0,
    causal: bool = False,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""(Σ_j P_ij v_j, L_i) from ONE kernel call. On the CPU flash path (no mask) L is the kernel's own
    row log-normaliser, exact at any scale, and ``centre`` is not used. Elsewhere SDPA does not return
    L, so the keys get a sentinel whose score for query i is ``centre`` (..., Lq) and whose one-hot
    value returns π_i = e^{c_i} / (e^{c_i} + e^{L_i}). Then L_i = c_i + log(1 − π_i) − log π_i, and the
    real keys' weights are P_ij (1 − π_i), so Σ_j P_ij v_j = out_i / (1 − π_i). Exact for any centre
    that keeps π_i away from 0 and 1 in the working precision (|c_i − L_i| ≲ 80 in float32, ≲ 700 in
    float64). ``centre`` may be None where :func:`kernel_log_normaliser` is True. ``v`` may have width 0."""
    if _cpu_flash_applies(q, k, mask):
        return _cpu_flash(q, k, [v], scale, causal)
    if centre is None:
        raise ValueError("the sentinel key needs a centre: only the CPU flash kernel returns L by itself")
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
    the boolean ``mask`` (Lq, Lk) is True when given). Off the CPU flash path, by the sentinel method
    centred on the expected score E_P[s_i] (entropy bound: L_i − log n ≤ E_P[s_i] ≤ L_i, so
    π_i ∈ [1/(1+n), 1/2] at any scale).

    ``expected_score`` (shape (..., Lq)) may be passed when the caller already has Σ_j P_ij k_j;
    otherwise, where the sentinel is used, one extra SDPA call computes it. Differentiable in q and k.
    """
    if expected_score is None and not kernel_log_normaliser(q, k, mask):
        expected_score = scale * (q * softmax_average(q, k, k, scale=scale, causal=causal, mask=mask)).sum(-1)
    empty = k.new_zeros(*k.shape[:-1], 0)
    return softmax_average_with_normaliser(q, k, empty, expected_score, scale=scale, causal=causal, mask=mask)[1]
