r"""Language-model head and cross-entropy fused by chunks of tokens.

    loss = mean_i [ logsumexp_v(h_i · W_v) − h_i · W_{y_i} ]   over the tokens with y_i ≠ −1

The gradients are formed chunk by chunk during the forward pass, where each chunk's logits are
still at hand (∂loss/∂logits = softmax − one-hot, divided by the token count):
    ∂loss/∂h = G W,   ∂loss/∂W = Gᵀ h.
The full (tokens × vocabulary) logit matrix and its log-softmax are never stored, which saves their
memory and two passes over them; the matrix products are those of the plain head. Without
gradients (evaluation) the chunks only accumulate the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MiB in float32): large enough for efficient products


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, need_grad: bool) -> Tensor:
        n, vocab = h.shape[0], weight.shape[0]
        rows = max(1, CHUNK_ELEMENTS // vocab)
        acc = torch.promote_types(h.dtype, torch.float32)  # float32 for bf16/fp32 inputs, float64 stays
        valid = targets != -1
        count = valid.sum().clamp_min(1)
        total = torch.zeros((), dtype=acc, device=h.device)
        grad_h = torch.zeros_like(h) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=h.device) if need_grad else None
        for start in range(0, n, rows):
            h_c, y_c, v_c = h[start : start + rows], targets[start : start + rows], valid[start : start + rows]
            log_p = torch.log_softmax(F.linear(h_c, weight).to(acc), dim=-1)  # one fused pass
            index = y_c.clamp_min(0).unsqueeze(1)
            total -= (log_p.gather(1, index).squeeze(1) * v_c).sum()
            if need_grad:
                grad = log_p.exp_()  # softmax, in place
                grad.scatter_add_(1, index, -torch.ones_like(index, dtype=acc))
                grad *= (v_c.to(acc) / count).unsqueeze(1)
                grad_h[start : start + rows] = grad @ weight.to(acc)
                grad_w += grad.T @ h_c.to(acc)
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total / count

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_output.to(grad_h.dtype), grad_w * grad_output.to(grad_w.dtype), None, None


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of the logits h Wᵀ against ``targets`` (−1 entries ignored), by chunks.
    h: (N, C), weight: (V, C), targets: (N,)."""
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _ChunkedLinearCrossEntropy.apply(h, weight, targets, need_grad)
