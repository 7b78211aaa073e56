r"""Causal softmax averages of several value groups in one materialised pass (CPU), block of query rows by
block.

With scores S_ij = scale q_i·k_j (j ≤ i), P the causal softmax and values V = [v¹, v², …] (the groups
side by side, of any widths), the average is O_i = Σ_j P_ij V_j and L_i = log Σ_j e^{S_ij}. PyTorch's
fused CPU kernel wants the values as wide as q and k, so several groups cost either one call with q and
k zero-padded to the groups' total width (the scores formed at that width) or one call per group (the
scores formed once per group). Here the scores of a block of R query rows against the keys they see
(keys < r₁) are formed once, at q's width, by an ordinary batched product; the block holds R × r₁
scores, never T × T; one product per group gives its average. Backward, block by block with the block's
P formed again from q, k and L (D_i = Σ_g dO^g_i·O^g_i):

    dV_j = Σ_i P_ij dO_i,      dS_ij = P_ij (Σ_g dO^g_i·V^g_j − D_i),
    dq_i = scale Σ_j dS_ij k_j,   dk_j = scale Σ_i dS_ij q_i

What is kept for the backward pass is what the fused kernel's Function keeps: q, k, the value groups
(a :class:`~sympformer.rebuilt.Rebuilt` group as its recipe's inputs, formed again there), each group's
average and L. For the memory of a training step the pass differs from one call per group in that every
group's gradient is ready at once; so each average is its own tensor laid out as the attention's heads
are (merging its heads is a view, as of the fused kernel's output), a group that is the keys themselves
(H1/R2's Σ P k) adds its value gradient to dk instead of a buffer of its own, and a rebuilt group and its
gradient are let go as soon as its recipe has taken them. H1's and R2's peaks at the attention-heavy
benchmark shape are then those of one call per group.

Four groups of 64 at that shape (2 × 4 heads, context 1024), forward and backward: 78 ms at row block
128 (80 at 64, 84 at 256), against 139 ms for one fused call with q and k padded and 151 ms for one call
per group (benchmarks/kernels.py, the variants interleaved; an earlier sequential run read 103, 93 and
96 against 156 and 174). For one group of q's width the pass is no faster than the
fused kernel (38.0 ms against 37.8, 42.4 and 51.0 at row blocks of 64, 128 and 256; one-off), so a
single group keeps the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from sympformer.rebuilt import Piece, flattened, pieces_of, through_recipes

ROW_BLOCK = 128  # query rows per score block (benchmarks/kernels.py)


def row_blocks(length: int, block: int) -> list[tuple[int, int]]:
    """[r0, r1) of each block of ``block`` query rows."""
    return [(r0, min(r0 + block, length)) for r0 in range(0, length, block)]


def block_scores(rows_scaled: Tensor, k: Tensor, r0: int, r1: int, above: Tensor) -> Tensor:
    """S for the query rows [r0, r1) (``rows_scaled``: those rows of q, times the scale) against keys
    [0, r1), keys after the row at −inf; (batch, ·, d) inputs, ``above`` the strict upper triangle of a
    block."""
    scores = torch.bmm(rows_scaled, k[:, :r1].mT)
    rows = r1 - r0
    scores[:, :, r0:r1].masked_fill_(above[:rows, :rows], float("-inf"))
    return scores


def block_softmax(scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(e^{S − m}, its row sums Σ, the rows' L = m + log Σ) of a score block, with m the rows' maxima
    (subtracted from ``scores`` in place)."""
    peak = scores.amax(-1, keepdim=True)
    unnormalised = scores.sub_(peak).exp_()
    total = unnormalised.sum(-1, keepdim=True)
    return unnormalised, total, peak + total.log()


def block_probabilities(rows_scaled: Tensor, k: Tensor, r0: int, r1: int, above: Tensor, log_norm: Tensor) -> Tensor:
    """P for the query rows [r0, r1) against keys [0, r1), formed again from the rows' L (…, rows, 1)."""
    return block_scores(rows_scaled, k, r0, r1, above).sub_(log_norm).exp_()


def strictly_above(block: int, device: torch.device) -> Tensor:
    """The strict upper triangle of a block × block score block: the keys after each row."""
    return torch.ones(block, block, dtype=torch.bool, device=device).triu(1)


def _matrices(t: Tensor) -> list[Tensor]:
    """(…, H, T, d) as 3-D (H, T, d) views, one per entry of the leading dimensions: batched products
    read them in place, also where the heads are a transposed view (the attention's q, k and values),
    which flattening the batch and the heads together would copy."""
    if t.ndim < 4:
        return [t.reshape(-1, *t.shape[-2:])]
    return list(t.reshape(-1, *t.shape[-3:]).unbind(0))


def _outputs(like: Tensor, width: int) -> Tensor:
    """An empty (…, H, T, width) for results, laid out as the attention's q, k and values are (positions
    outside the heads), so that merging the heads of an average is a view, as it is of the fused
    kernel's output: a copy of it would be one more tensor a layer for the blocks' LayerNorms to keep."""
    if like.ndim < 4:
        return like.new_empty(*like.shape[:-1], width)
    *batch, heads, length, _ = like.shape
    return like.new_empty(*batch, length, heads, width).transpose(-3, -2)


class _RowBlockAverage(torch.autograd.Function):
    """(O¹, O², …, L) of the module docstring, one average per value group, for q, k (…, T, d) and value
    groups given as :func:`flattened`'s recipes and tensors."""

    @staticmethod
    def forward(ctx, q, k, scale, block, recipes, *tensors):
        pieces, _ = pieces_of(recipes, tensors)
        outs = [_outputs(q, v.shape[-1]) for v in pieces]
        log_norm = _outputs(q, 1)[..., 0]
        above = strictly_above(block, q.device)
        length = q.shape[-2]
        for q_m, k_m, log_norm_m, *groups in zip(
            *(_matrices(t) for t in (q, k, log_norm.unsqueeze(-1), *pieces, *outs)), strict=True
        ):
            values_m, outs_m = groups[: len(pieces)], groups[len(pieces) :]
            for r0, r1 in row_blocks(length, block):
                scores = block_scores(q_m[:, r0:r1] * scale, k_m, r0, r1, above)
                unnormalised, total, log_norm_m[:, r0:r1] = block_softmax(scores)
                for v, out in zip(values_m, outs_m, strict=True):
                    torch.div(torch.bmm(unnormalised, v[:, :r1]), total, out=out[:, r0:r1])
        ctx.save_for_backward(q, k, log_norm, *outs, *tensors)
        ctx.scale, ctx.block, ctx.recipes, ctx.groups = scale, block, recipes, len(pieces)
        ctx.keys_as_values = _keys_as_values(recipes, tensors, k)
        ctx.mark_non_differentiable(log_norm)
        return *outs, log_norm

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        q, k, log_norm, *rest = ctx.saved_tensors
        outs, tensors = rest[: ctx.groups], rest[ctx.groups :]
        pieces, graphs = pieces_of(ctx.recipes, tensors, ctx.needs_input_grad[5:])
        grad_q, grad_k, grad_values = _gradients(
            q, k, log_norm, outs, pieces, grads[: ctx.groups], ctx.scale, ctx.block, ctx.keys_as_values
        )
        # a rebuilt group's piece and gradient are let go as soon as its recipe has taken them (the
        # gradients of every group are ready at once, unlike one kernel call per group): only its graph
        # holds the piece from here (H1's heavy peak 191.9 MiB above the step's start with the list kept,
        # 189.9 without, by the profiler's allocation events; one-off)
        del pieces
        grad_tensors = []
        for i, recipe in enumerate(ctx.recipes):
            grad_tensors += through_recipes((recipe,), graphs[i : i + 1], grad_values[i : i + 1])
            graphs[i] = grad_values[i] = None
        return grad_q, grad_k, None, None, None, *grad_tensors


def _keys_as_values(recipes: tuple, tensors: Sequence[Tensor], k: Tensor) -> tuple[bool, ...]:
    """For each value group, whether it is the keys themselves (H1/R2's Σ P k)."""
    found, at = [], 0
    for recipe in recipes:
        found.append(recipe is None and tensors[at] is k)
        at += 1 if recipe is None else recipe[1]
    return tuple(found)


def _gradients(q, k, log_norm, outs, values, grad_outs, scale, block, keys_as_values):
    """(dq, dk, [dV of each group]) of the module docstring, block of query rows by block. A group that is
    the keys themselves adds its dV to dk (its own entry is None): one buffer, and no sum after."""
    out_dot = sum(torch.linalg.vecdot(g, o) for g, o in zip(grad_outs, outs, strict=True))  # D_i
    grad_q, grad_k = _outputs(q, q.shape[-1]), _outputs(k, k.shape[-1]).zero_()
    grad_values = [
        grad_k if is_k else _outputs(q, v.shape[-1]).zero_() for v, is_k in zip(values, keys_as_values, strict=True)
    ]
    above = strictly_above(block, q.device)
    length, groups = q.shape[-2], len(values)
    for q_m, k_m, log_norm_m, out_dot_m, grad_q_m, grad_k_m, *rest in zip(
        *(
            _matrices(t)
            for t in (
                q,
                k,
                log_norm.unsqueeze(-1),
                out_dot.unsqueeze(-1),
                grad_q,
                grad_k,
                *values,
                *grad_outs,
                *grad_values,
            )
        ),
        strict=True,
    ):
        values_m, grad_outs_m, grad_values_m = rest[:groups], rest[groups : 2 * groups], rest[2 * groups :]
        for r0, r1 in row_blocks(length, block):
            q_scaled = q_m[:, r0:r1] * scale
            probs = block_probabilities(q_scaled, k_m, r0, r1, above, log_norm_m[:, r0:r1])
            grad_probs = None
            for v, grad_out, grad_v in zip(values_m, grad_outs_m, grad_values_m, strict=True):
                grad_v[:, :r1].baddbmm_(probs.mT, grad_out[:, r0:r1])
                product = (grad_out[:, r0:r1], v[:, :r1].mT)
                grad_probs = torch.bmm(*product) if grad_probs is None else grad_probs.baddbmm_(*product)
            grad_scores = grad_probs.sub_(out_dot_m[:, r0:r1]).mul_(probs)
            torch.bmm(grad_scores, k_m[:, :r1], out=grad_q_m[:, r0:r1])
            grad_k_m[:, :r1].baddbmm_(grad_scores.mT, q_scaled)
    grad_q.mul_(scale)  # dk is already scaled: it was formed from the scaled q
    return grad_q, grad_k, [None if is_k else g for g, is_k in zip(grad_values, keys_as_values, strict=True)]


def causal_averages(
    q: Tensor, k: Tensor, pieces: Sequence[Piece], scale: float, block: int = ROW_BLOCK
) -> list[Tensor]:
    """[Σ_{j≤i} softmax_j(scale·q_i·k_j) v_j for v in ``pieces``] (tensors or
    :class:`~sympformer.rebuilt.Rebuilt` recipes, of any widths), q and k (…, T, d): one materialised
    pass (module docstring); each average its own tensor."""
    recipes, tensors = flattened(pieces, lambda t: t)
    *averages, _ = _RowBlockAverage.apply(q, k, scale, block, recipes, *tensors)
    return averages
