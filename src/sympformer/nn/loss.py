r"""Language-model head and cross-entropy fused by chunks of tokens.

    loss = mean_i [ logsumexp_v(h_i · W_v) − h_i · W_{y_i} ]   over the tokens with y_i ≠ −1

The gradients are formed chunk by chunk during the forward pass, where each chunk's logits are
still at hand (∂loss/∂logits = (softmax − one-hot) w_i, with w_i = 1/count for a counted token, else 0):
    ∂loss/∂h = diag(w) (S − Y) W,   ∂loss/∂W = (S − Y)ᵀ diag(w) h,
so the row weights scale the thin (tokens × C) factors, not the chunk. Each chunk's logits become
the softmax S (in place on CPU) by PyTorch's softmax kernel, which handles a row at a time while it sits in
cache (max, exponentials and sum, scale); the loss of a token is then −log S_{i,y_i}. The full
(tokens × vocabulary) logit matrix and its log-softmax are never stored, which saves their memory
and passes over them; the matrix products are those of the plain head. Against separate max,
subtract, exponential, sum and scale passes over the chunk, a chunk's softmax work takes 27–54 %
less time on CPU (benchmarks/kernels.py, "cross-entropy chunk", two runs). Without gradients
(evaluation) the chunks only accumulate the loss.

Mixed precision (bf16 autocast, or bf16 inputs): the logits product and the two gradient products run
in the low precision, as autograd would run a plain head's linear layer and its backward pass under
autocast; the softmax, the loss and the accumulated gradients are float32, as autocast runs
cross-entropy. On a GPU the softmax reads the low-precision logits itself, so a chunk holds 6 bytes a
logit at most (bf16 logits beside the float32 softmax, then the softmax beside its bf16 copy for the
products), where a float32 copy of the logits made it 8. Operands are cast explicitly, not by autocast,
whose cache would otherwise keep a copy of W made below autograd for the rest of the autocast region
(a later plain use of W there would then pass no gradient to W).
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 24  # logits per chunk at most (64 MiB in float32): large enough for efficient products
# On a GPU: 256 MiB chunks. At the benchmark shapes a GPU step is bound by launching its operators (an H200
# took ~37 µs per operator, benchmarks/RESULTS.md "Operators dispatched per training step"), and each chunk
# costs 20 of them; the primary shape's 1024 × 50304 logits are then one chunk instead of four (28 operators
# in all instead of 88, counted with benchmarks/ops_per_step.py's OperatorCount; 111 before the row losses
# came from the kept logits).
GPU_CHUNK_ELEMENTS = 1 << 26


def chunk_elements(device: torch.device) -> int:
    """The most logits one chunk holds on ``device``."""
    return CHUNK_ELEMENTS if device.type == "cpu" else GPU_CHUNK_ELEMENTS


# Below this, a target's softmax probability is recomputed from the logits: −log S_iy stays exact to
# rounding down to float32's smallest normal number (1.2e-38); 1e-30 means a loss above 69 nats
_SMALLEST_TARGET_PROBABILITY = 1e-30


def _softmax_over_logits(logits: Tensor, dtype: torch.dtype) -> Tensor:
    """The row softmax of a chunk of logits, in ``dtype``. On CPU written over the logits (the kernel reads
    a whole row before it writes it, checked against the plain formula by tests/nn/test_loss.py), or over
    a copy of low-precision logits in ``dtype`` (the CPU kernel would copy them anyway). Elsewhere a new
    tensor (an in-place softmax is not something the GPU kernels promise); the CUDA kernel reads bf16 or
    fp16 logits into a float32 softmax itself, with no copy of the chunk."""
    if logits.device.type == "cpu":
        own = logits if logits.dtype == dtype else logits.to(dtype)
        return torch.ops.aten._softmax.out(own, 1, False, out=own)
    return torch.softmax(logits, 1, dtype=dtype)


def _row_losses(probs: Tensor, logits: Tensor, index: Tensor, counted: Tensor, h_c: Tensor, weight: Tensor) -> Tensor:
    r"""−log S_{i,y_i} per row.

    Where the logits are still at hand (the softmax made a new tensor), from the row's most probable
    class m: logsumexp_i = z_im − log S_im, and S_im ≥ 1/V never underflows, so

        −log S_iy = (z_im − z_iy) − log S_im,

    exact at any loss (to the logits' own values, which the softmax read) with no wait for the device.
    Where the softmax overwrote them (CPU), −log S_iy, and counted rows whose target probability
    underflows (a loss of more than 69 nats) get logsumexp − z_y from their logits, recomputed (an
    uncounted row may be inf)."""
    if probs.data_ptr() != logits.data_ptr():
        top, most_probable = probs.max(1, keepdim=True)
        gap = logits.gather(1, most_probable).to(probs.dtype) - logits.gather(1, index).to(probs.dtype)
        return (gap - top.log()).squeeze(1)
    target = probs.gather(1, index).squeeze(1)
    row_loss = -target.log()
    far = (target < _SMALLEST_TARGET_PROBABILITY) & counted
    if bool(far.any()):
        with torch.autocast(h_c.device.type, enabled=False):
            logits = h_c[far].to(weight.dtype) @ weight.T
        row_loss[far] = torch.logsumexp(logits, 1) - logits.gather(1, index[far]).squeeze(1)
    return row_loss


def rows_per_chunk(tokens: int, vocab: int, budget: int | None = None) -> int:
    """Tokens per chunk: the fewest chunks of at most ``budget`` logits (default CHUNK_ELEMENTS), the
    tokens split evenly among them, so that the reused buffer is no larger than one such chunk (the
    primary shape's 1024 tokens on CPU: 4 × 256 rows and a 49 MiB buffer, where full chunks and the rest,
    3 × 333 + 25, needed 64 MiB; the same speed within 2 % in benchmarks/kernels.py)."""
    most = max(1, (CHUNK_ELEMENTS if budget is None else budget) // vocab)
    chunks = max(1, -(-tokens // most))
    return max(1, -(-tokens // chunks))


def _loss_and_gradients(h: Tensor, weight: Tensor, targets: Tensor, need_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(mean loss, ∂loss/∂h, ∂loss/∂W) by chunks of tokens (empty gradients without ``need_grad``)."""
    n, vocab = h.shape[0], weight.shape[0]
    rows = rows_per_chunk(n, vocab, chunk_elements(h.device))
    acc = torch.promote_types(h.dtype, torch.float32)  # float32 for bf16/fp32 inputs, float64 stays
    low = _product_dtype(h, weight)
    valid = targets != -1
    count = valid.sum().clamp_min(1)
    total = torch.zeros((), dtype=acc, device=h.device)
    grad_h = torch.zeros_like(h) if need_grad else h.new_empty(0)
    grad_w = torch.zeros(weight.shape, dtype=acc, device=h.device) if need_grad else None
    # products in the accumulation dtype: one buffer for every chunk's logits, no allocation per chunk
    reuse = h.dtype == weight.dtype == acc == low
    buffer = torch.empty(min(rows, n), vocab, dtype=acc, device=h.device) if reuse else None
    h_low, weight_low = h.to(low), weight.to(low)  # the operands of the products (no copy when reused)
    for start in range(0, n, rows):
        h_c, y_c, v_c = h_low[start : start + rows], targets[start : start + rows], valid[start : start + rows]
        logits = torch.mm(h_c, weight_low.T, out=buffer[: h_c.shape[0]] if reuse else None)
        index = y_c.clamp_min(0).unsqueeze(1)
        probs = _softmax_over_logits(logits, acc)
        row_loss = _row_losses(probs, logits, index, v_c, h_c, weight_low)
        total += torch.where(v_c, row_loss, 0).sum()
        if need_grad:
            del logits  # kept beside the softmax only for the row losses
            probs.scatter_add_(1, index, -v_c.to(acc).unsqueeze(1))  # S − Y (no target: the row is weighted 0)
            weights = (v_c.to(acc) / count).unsqueeze(1)
            factor = probs.to(low)  # in the products' dtype, as autograd hands a linear layer its gradient
            grad_h[start : start + rows] = (factor @ weight_low) * weights
            weighted_h = (h[start : start + rows].to(acc) * weights).to(low)
            if reuse:
                grad_w.addmm_(factor.T, weighted_h)
            else:
                grad_w += factor.T @ weighted_h
    grad_w = grad_w.to(weight.dtype) if need_grad else weight.new_empty(0)
    return total / count, grad_h, grad_w


def _product_dtype(h: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype of the head's products: the autocast dtype under autocast, else that of h and W together."""
    device = h.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(h.dtype, weight.dtype)


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
