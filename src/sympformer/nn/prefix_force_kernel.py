r"""The v1 causal prefix force's softmax part in one materialised pass (CPU).

With one head of the full width d, scores S_ij = scale q_i·k_j (j ≤ i), E_ij = e^{S_ij},
L_i = log Σ_{j≤i} E_ij, z_i = e^{L_i} / i and b_i = ⟨B_θ p_i, p_i⟩, the oracle's force before W_O is

    g_i = (1/(2i)) Σ_{j≤i} E_ij (s_i + s_j + 2) w_j = c_i ((s_i + 2) y_i + y2_i),
    s_j = b_j / z_j²,   c_i = z_i / 2,   y_i = Σ_j P_ij w_j,   y2_i = Σ_j P_ij s_j w_j,

with P the causal softmax; the oracle also needs L itself. s depends on L, so the fused flash kernel
takes two calls (one for y and L, one for s·w), each of them scoring every (i, j) again, and it cannot
return [y, y2] in one call because its values must be as wide as its queries. Here the scores are
formed by ordinary batched products, block of query rows by block, each row block against only the
keys it can see: a block of R rows holds an R × (r₁) score matrix, never T × T. Rows are processed in
order, so when a block needs s_j for its keys j < r₁, every L_j is known; then one product with the
values [w, s·w] gives y and y2, and g follows row by row.

Only q, k, w, L and s are kept for the backward pass (not y, y2 or g). It recomputes each block's P
from q, k and L and runs the blocks in reverse. g_i is linear in the unnormalised E_i·, so its score
gradient needs no softmax correction D_i; what reaches L_i comes from the caller and through s_i,
which every row i ≥ j reads as a value weight s_j and row i as its own s_i. Row j's score gradient is
therefore ready only after all later rows are done. With G = ∂/∂g, A_ij = c_i G_i·w_j and
e_i = s_i + 2:

    dV_j  = Σ_i P_ij [e_i c_i G_i, c_i G_i]           (dV = [dV1, dV2]: w's and s·w's gradient)
    ds_j  = w_j·dV2_j + Σ_{j'≤j} P_jj' A_jj',          dL_j ← dL_j − 2 s_j ds_j,   db_j = ds_j / z_j²
    dS_ij = P_ij ((e_i + s_j) A_ij + dL_i)
    dq_i  = scale Σ_j dS_ij k_j,   dk_j = scale Σ_i dS_ij q_i,   dw_j = dV1_j + s_j dV2_j

On a 2-core CPU at the v1 benchmark shape (4 × 512 × 128) this is faster than the two flash calls
(benchmarks/kernels.py measures both); for multi-head attention of width 32 the flash kernel stays
faster, so baseline attention keeps it (at the heavy shape's 4 heads × 64 too, one-off).

Under torch.compile the oracle keeps the two flash calls, which inductor traces: this pass would be a
graph break, and dynamo then runs the whole block loop eagerly. (Tried with ``torch.compiler.disable``
around it, one-off: compiled v1_fe went from 1.30× to 1.10× compiled B, but compiled v1_pe ran slower
than eager.)
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from sympformer.row_block_softmax import block_probabilities, block_scores, block_softmax, row_blocks, strictly_above
from sympformer.softmax_ops import _cpu_flash_applies

ROW_BLOCK = 128  # query rows per score block (benchmarks/kernels.py: 64 and 128 alike, 256 slower)
_DTYPES = (torch.float32, torch.float64)


def materialised_applies(q: Tensor) -> bool:
    """True where :func:`prefix_force` serves the oracle: where the fused CPU kernel would
    (eager, CPU), in float32 or float64 and outside autocast (elsewhere: two flash calls)."""
    return _cpu_flash_applies(q, q, None) and q.dtype in _DTYPES and not torch.is_autocast_enabled("cpu")


def _log_positions(log_norm: Tensor, first: int) -> Tensor:
    """log j for the 1-based positions j = first + 1, first + 2, … of the last dimension of ``log_norm``."""
    positions = torch.arange(first + 1, first + log_norm.shape[-1] + 1, device=log_norm.device, dtype=log_norm.dtype)
    return positions.log()


def _inverse_z_squared(log_norm: Tensor, first: int = 0) -> Tensor:
    """1 / z_j² = (j e^{−L_j})² for the 1-based positions j = first + 1, first + 2, … of the last dimension."""
    return torch.exp(-2 * (log_norm - _log_positions(log_norm, first)))


def _half_z(log_norm: Tensor, first: int = 0) -> Tensor:
    """c_j = z_j / 2 = e^{L_j} / (2j) for the 1-based positions j = first + 1, … of the last dimension."""
    return 0.5 * torch.exp(log_norm - _log_positions(log_norm, first))


class _PrefixForce(torch.autograd.Function):
    """(g, L) with ``with_force``, else L alone (module docstring); inputs (B, T, d) and b (B, T)."""

    @staticmethod
    def forward(ctx, q, k, w, b, scale, block, with_force):
        batch, length = q.shape[:2]
        q_scaled = q * scale
        above = strictly_above(block, q.device)
        log_norm = q.new_empty(batch, length)
        if with_force:
            width = w.shape[-1]
            values = q.new_empty(batch, length, 2 * width)  # [w, s·w]
            values[..., :width] = w
            force = q.new_empty(w.shape)
            s = q.new_empty(batch, length)
        for r0, r1 in row_blocks(length, block):
            unnormalised, total, rows_log_norm = block_softmax(block_scores(q_scaled[:, r0:r1], k, r0, r1, above))
            log_norm[:, r0:r1] = rows_log_norm.squeeze(-1)
            if with_force:
                s[:, r0:r1] = b[:, r0:r1] * _inverse_z_squared(log_norm[:, r0:r1], r0)
                torch.mul(w[:, r0:r1], s[:, r0:r1].unsqueeze(-1), out=values[:, r0:r1, width:])
                sums = torch.bmm(unnormalised, values[:, :r1])  # total · [y, y2]
                per_row = _half_z(log_norm[:, r0:r1], r0).unsqueeze(-1) / total
                own = s[:, r0:r1].unsqueeze(-1) + 2
                torch.addcmul(sums[..., width:], own, sums[..., :width], out=force[:, r0:r1]).mul_(per_row)
        ctx.scale, ctx.block, ctx.with_force = scale, block, with_force
        if not with_force:
            ctx.save_for_backward(q, k, log_norm)
            return log_norm
        ctx.save_for_backward(q, k, log_norm, w, s)
        return force, log_norm

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        grad_force, grad_log_norm = grads if ctx.with_force else (None, grads[0])
        q, k, log_norm, *rest = ctx.saved_tensors
        length = q.shape[1]
        # dS = P (dP + dL); the s-terms add to dL in the loop below
        grad_log_norm = torch.zeros_like(log_norm) if grad_log_norm is None else grad_log_norm.clone()
        with_force = ctx.with_force and grad_force is not None
        if with_force:
            w, s = rest
            width = w.shape[-1]
            scaled_grad = grad_force * _half_z(log_norm).unsqueeze(-1)  # c_i G_i
            own = s + 2  # e_i
            grad_outputs = torch.cat([scaled_grad * own.unsqueeze(-1), scaled_grad], -1)  # [e c G, c G]
            grad_values = w.new_zeros(*w.shape[:-1], 2 * width)  # [dV1, dV2]: the gradients of w and s·w
            grad_s = torch.empty_like(s)
        q_scaled, k_scaled = q * ctx.scale, k * ctx.scale
        grad_q, grad_k = torch.empty_like(q), torch.zeros_like(k)
        above = strictly_above(ctx.block, q.device)
        for r0, r1 in reversed(row_blocks(length, ctx.block)):
            probs = block_probabilities(q_scaled[:, r0:r1], k, r0, r1, above, log_norm[:, r0:r1].unsqueeze(-1))
            if not with_force:
                grad_scores = probs.mul_(grad_log_norm[:, r0:r1].unsqueeze(-1))
            else:
                grad_values[:, :r1].baddbmm_(probs.mT, grad_outputs[:, r0:r1])  # keys < r1 final for [r0, r1)
                pair = torch.bmm(scaled_grad[:, r0:r1], w[:, :r1].mT)  # A_ij = c_i G_i·w_j
                grad_s[:, r0:r1] = torch.linalg.vecdot(w[:, r0:r1], grad_values[:, r0:r1, width:])
                grad_s[:, r0:r1] += torch.linalg.vecdot(probs, pair)  # the row's own s_i in e_i
                grad_log_norm[:, r0:r1] -= 2 * s[:, r0:r1] * grad_s[:, r0:r1]
                weight = s[:, None, :r1] + own[:, r0:r1, None]  # e_i + s_j
                grad_scores = pair.mul_(weight).add_(grad_log_norm[:, r0:r1].unsqueeze(-1)).mul_(probs)
            grad_q[:, r0:r1] = torch.bmm(grad_scores, k_scaled[:, :r1])
            grad_k[:, :r1].baddbmm_(grad_scores.mT, q_scaled[:, r0:r1])
        if not with_force:  # (with a force output that is not used, w and b move nothing)
            return grad_q, grad_k, None, None, None, None, None
        grad_w = torch.addcmul(grad_values[..., :width], s.unsqueeze(-1), grad_values[..., width:])
        grad_b = grad_s * _inverse_z_squared(log_norm)
        return grad_q, grad_k, grad_w, grad_b, None, None, None


def prefix_force(
    q: Tensor, k: Tensor, w: Tensor, b: Tensor, scale: float, block: int = ROW_BLOCK
) -> tuple[Tensor, Tensor]:
    """(g, L) of the module docstring for q, k of shape (B, T, d), w of shape (B, T, d_v) and b of
    shape (B, T)."""
    return _PrefixForce.apply(q, k, w, b, scale, block, True)


def prefix_log_normaliser(q: Tensor, k: Tensor, scale: float, block: int = ROW_BLOCK) -> Tensor:
    """L_i = log Σ_{j≤i} e^{scale q_i·k_j} alone (the oracle of a layer whose force is not read)."""
    return _PrefixForce.apply(q, k, None, None, scale, block, False)
