r"""Language-model head and cross-entropy fused by chunks of tokens.

    loss = mean_i [ logsumexp_v(h_i · W_v) − h_i · W_{y_i} ]   over the tokens with y_i ≠ −1

The gradients are formed chunk by chunk during the forward pass, where each chunk's logits are
still at hand (∂loss/∂logits = softmax − one-hot, divided by the token count):
    ∂loss/∂h = G W,   ∂loss/∂W = Gᵀ h.
The full (tokens × vocabulary) logit matrix and its log-softmax are never stored, which saves their
memory and two passes over them; the matrix products are those of the plain head. Each chunk's
logits are turned into the gradient in place, with one exponential per logit (the log-softmax and
then its exponential took two, and a second chunk-sized tensor). Without
gradients (evaluation) the chunks only accumulate the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MiB in float32): large enough for efficient products


def _loss_and_gradients(h: Tensor, weight: Tensor, targets: Tensor, need_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(mean loss, ∂loss/∂h, ∂loss/∂W) by chunks of tokens (empty gradients without ``need_grad``)."""
    n, vocab = h.shape[0], weight.shape[0]
    rows = max(1, CHUNK_ELEMENTS // vocab)
    acc = torch.promote_types(h.dtype, torch.float32)  # float32 for bf16/fp32 inputs, float64 stays
    valid = targets != -1
    count = valid.sum().clamp_min(1)
    total = torch.zeros((), dtype=acc, device=h.device)
    grad_h = torch.zeros_like(h) if need_grad else h.new_empty(0)
    grad_w = torch.zeros(weight.shape, dtype=acc, device=h.device) if need_grad else None
    # one buffer for every chunk's logits: no chunk-sized allocation per chunk (under autocast the
    # product runs in the autocast dtype, and a fresh float32 copy is made per chunk)
    reuse = h.dtype == weight.dtype == acc and not torch.is_autocast_enabled(h.device.type)
    buffer = torch.empty(min(rows, n), vocab, dtype=acc, device=h.device) if reuse else None
    weight_acc = weight.to(acc)
    for start in range(0, n, rows):
        h_c, y_c, v_c = h[start : start + rows], targets[start : start + rows], valid[start : start + rows]
        if reuse:
            logits = torch.mm(h_c, weight.T, out=buffer[: h_c.shape[0]])
        else:
            logits = F.linear(h_c, weight).to(acc)
        index = y_c.clamp_min(0).unsqueeze(1)
        target_logit = logits.gather(1, index)
        top = logits.amax(1, keepdim=True)
        exps = logits.sub_(top).exp_()  # e^{z − max z}, in place: one exponential per logit
        sums = exps.sum(1, keepdim=True)
        total += ((top + sums.log() - target_logit).squeeze(1) * v_c).sum()  # logsumexp − z_y
        if need_grad:
            weights = (v_c.to(acc) / count).unsqueeze(1)
            grad = exps.mul_(weights / sums)  # (softmax − one-hot) · weight, in place
            grad.scatter_add_(1, index, -weights)
            grad_h[start : start + rows] = grad @ weight_acc
            grad_w.addmm_(grad.T, h_c.to(acc))
    grad_w = grad_w.to(weight.dtype) if need_grad else weight.new_empty(0)
    return total / count, grad_h, grad_w


# A custom operator, not an autograd.Function: torch.compile then calls this eager code (one reused
# buffer, in-place softmax) instead of generating its own loops over the (tokens × vocabulary) chunks,
# which were slower and allocated each chunk afresh (R2 at the primary shape: compiled 0.93× eager).
@torch.library.custom_op("sympformer::chunked_linear_cross_entropy", mutates_args=())
def _chunked_linear_cross_entropy(
    h: Tensor, weight: Tensor, targets: Tensor, need_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return _loss_and_gradients(h, weight, targets, need_grad)


@_chunked_linear_cross_entropy.register_fake
def _(h, weight, targets, need_grad):
    acc = torch.promote_types(h.dtype, torch.float32)
    grad_h = torch.empty_like(h) if need_grad else h.new_empty(0)
    grad_w = torch.empty_like(weight) if need_grad else weight.new_empty(0)
    return h.new_empty((), dtype=acc), grad_h, grad_w


def _save_gradients(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1], output[2])


def _backward(ctx, grad_loss, _grad_h, _grad_w):
    grad_h, grad_w = ctx.saved_tensors
    return grad_h * grad_loss.to(grad_h.dtype), grad_w * grad_loss.to(grad_w.dtype), None, None


_chunked_linear_cross_entropy.register_autograd(_backward, setup_context=_save_gradients)


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of the logits h Wᵀ against ``targets`` (−1 entries ignored), by chunks.
    h: (N, C), weight: (V, C), targets: (N,)."""
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _chunked_linear_cross_entropy(h, weight, targets, need_grad)[0]
