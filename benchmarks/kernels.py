"""Micro-benchmarks behind the design choices in the attention code. The variants of one question are
timed interleaved in one process (one call of each per round, the order rotated every round, as the
step benchmarks do), and each row is the median over the rounds:

- the ridge inverses of the proxy (16×16 systems at every position) and two solves, forward: per-position
  Grams with one batched LU factorisation and two `lu_solve` (the previous choice) against the chunked
  Woodbury inverses (`chunked_ridge_inverse`) by chunk length and precision;
- the ridge solves forward + backward: two `torch.linalg.solve` under autograd, `lu_factor` +
  `lu_solve` under autograd, Cholesky solves, and `_RidgeProxySolves` (which also builds the inverses);
- the ridge backward's suffix pass over four key/value pairs: the pairs as heads (the previous
  choice) against the pairs side by side at each position, by chunk length; prefix-linear attention
  with r = 16 features and 4 heads (the attention itself) and with one 128-wide head (the v1 linear
  oracle) by chunk length (the `linear_chunk` setting, which serves both);
- the connection's four value groups at the heavy shape: one flash call with q and k padded to their
  width, two calls of two, one call per group, or the materialised pass of `row_block_softmax` by row
  block (`attention._value_group_calls`), time and allocator peak;
- the CPU flash kernel: B's 4 heads × 32, one 128-wide head (the v1 oracle's flash path, which on
  CPU now serves only bfloat16 and autocast) and 129 wide with one more key and query (the v1
  sentinel pass); the gradient of its log-normaliser through one more column or folded into the
  output; B's attention through SDPA's math backend (the T × T matrix materialised) against its flash
  kernel;
- the v1 oracle's force g_i = (z_i / 2) Σ_j P_ij (s_i + s_j + 2) w_j and L (with s = b / z², which
  depends on L): two flash calls and the algebra after them (the flash path) against the materialised
  pass of `nn/prefix_force_kernel.py` by row block, and L alone (a last layer whose force is not read)
  either way;
- one chunk of the fused head + cross-entropy (the primary shape's 256 tokens × 50 304 logits turned
  into the loss and softmax − one-hot): separate max, subtract, exponential, sum and scale passes (the
  previous choice) against PyTorch's softmax kernel written over the logits; and the whole fused loss
  at the primary shape, its tokens split evenly into chunks (used) or into full chunks and the rest;
- the AdamW step: for-loop, foreach and fused implementations.

    python benchmarks/kernels.py
"""

from __future__ import annotations

import argparse

import options
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sympformer import row_block_softmax, softmax_ops
from sympformer.allocator import apply_allocator_choice
from sympformer.benchmarking import interleaved_times, median, peak_allocated, write_section
from sympformer.nn import loss as loss_module
from sympformer.nn import prefix_force_kernel
from sympformer.nn.linear_attention import (
    _prefix_linear_terms,
    _RidgeProxySolves,
    apply_ridge_inverse,
    chunked_ridge_inverse,
    prefix_linear,
    swap_systems,
)
from sympformer.softmax_ops import softmax_average, softmax_average_of, softmax_average_with_normaliser
from sympformer.utils import markdown_table

B, H, T, R = 4, 4, 512, 16  # the linear shape's batch, heads, context and head width


def interleaved_rows(rows: list, variants: dict, rounds: int) -> None:
    """Append [label, median ms] for each variant of one question, timed interleaved (one call of each per
    round, the order rotated every round): the machine's slow and fast phases, which last seconds to
    minutes, then fall on every variant alike instead of on whichever ran during them."""
    times = interleaved_times(variants, rounds=rounds, repeats=1)
    rows.extend([label, 1e3 * median(times[label])] for label in variants)


def backward(fn, *inputs):
    """fn(*inputs) and the backward pass of the sum of its outputs."""

    def run():
        outputs = fn(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        sum(o.sum() for o in outputs if o.requires_grad).backward()

    return run


def _two_flash_calls(q, k, w, kinetic, scale):
    """The v1 oracle's (g, L) as its flash path forms them: (y, L) from one flash call, y2 = Σ P s w
    with s = kinetic / z² from a second, then g = (z / 2) ((s + 2) y + y2)."""
    y, log_norm = softmax_average_with_normaliser(q, k, w, None, scale=scale, causal=True)
    s = (kinetic * prefix_force_kernel._inverse_z_squared(log_norm.squeeze(1)))[:, None, :, None]
    y2 = softmax_average(q, k, s * w, scale=scale, causal=True)
    half_z = prefix_force_kernel._half_z(log_norm.squeeze(1))[:, None, :, None]
    return torch.addcmul(y2, s + 2, y) * half_z, log_norm


def _sum_average_and_normaliser(q, k, v, weights):
    average, log_norm = softmax_average_with_normaliser(q, k, v, None, scale=q.shape[-1] ** -0.5, causal=True)
    return (average * weights).sum() + log_norm.sum()


def _chunk_by_passes(logits, index, weights, h_chunk, head):
    """The cross-entropy chunk as it was: one pass over the chunk per operation (the contender)."""
    target_logit = logits.gather(1, index)
    top = logits.amax(1, keepdim=True)
    exps = logits.sub_(top).exp_()
    sums = exps.sum(1, keepdim=True)
    loss = (top + sums.log() - target_logit).sum()
    grad = exps.mul_(weights / sums)
    grad.scatter_add_(1, index, -weights)
    return loss


def _chunk_by_softmax(logits, index, weights, h_chunk, head):
    """The cross-entropy chunk as :mod:`sympformer.nn.loss` forms it: the softmax kernel over the logits,
    the row weights left to the thin factors."""
    probs = loss_module._softmax_over_logits(logits, logits.dtype)
    counted = torch.ones_like(index[:, 0], dtype=torch.bool)
    loss = loss_module._row_losses(probs, logits, index, counted, h_chunk, head).sum()
    probs.scatter_add_(1, index, -torch.ones_like(weights))
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_count(parser, "--repeats", 9, "timed calls per variant and round")
    options.add_results(parser)
    args = parser.parse_args()
    apply_allocator_choice()  # as the sympformer command does (SYMPFORMER_CPU_ALLOCATOR)
    g = torch.Generator().manual_seed(0)
    rows = []

    eye = torch.eye(R)
    grams = lambda x: (x.unsqueeze(-1) * x.unsqueeze(-2)).cumsum(2) + 1e-3 * eye  # per position, with the ridge

    with torch.no_grad():
        a, rhs = (torch.randn(B, 2 * H, T, R, generator=g) for _ in range(2))  # the K and Q systems

        def lu_per_position():
            lu, pivots, _ = torch.linalg.lu_factor_ex(grams(a))
            first = torch.linalg.lu_solve(lu, pivots, rhs.unsqueeze(-1))
            return torch.linalg.lu_solve(lu, pivots, swap_systems(first))

        def chunked(dtype, chunk):
            start, updates, _ = chunked_ridge_inverse(a.to(dtype), 1e-3, None, chunk)
            first = apply_ridge_inverse(start, updates, rhs.to(dtype))
            return apply_ridge_inverse(start, updates, swap_systems(first)).float()

        inverse_rows = {
            "ridge inverses + two solves (4, 8, 512, 16): per-position Grams, `lu_factor_ex`, two `lu_solve`": (
                lu_per_position
            ),
            **{
                f"… chunked Woodbury inverses, float32, chunk {c}": lambda c=c: chunked(torch.float32, c)
                for c in (8, 16, 32)
            },
            "… chunked Woodbury inverses, float64, chunk 16 (used)": lambda: chunked(torch.float64, 16),
        }
        interleaved_rows(rows, {name: torch.no_grad()(fn) for name, fn in inverse_rows.items()}, args.repeats)

    kq = torch.randn(B, 2 * H, T, R, generator=g, requires_grad=True)
    rhs = torch.randn(B, 2 * H, T, R, generator=g, requires_grad=True)

    def two_solves(kq, rhs):
        systems = grams(kq)
        first = torch.linalg.solve(systems, rhs)
        return torch.linalg.solve(systems, swap_systems(first))

    def lu_once(kq, rhs):
        lu, pivots = torch.linalg.lu_factor(grams(kq))
        first = torch.linalg.lu_solve(lu, pivots, rhs.unsqueeze(-1))
        return torch.linalg.lu_solve(lu, pivots, swap_systems(first))

    def cholesky(kq, rhs):
        factor = torch.linalg.cholesky(grams(kq))
        first = torch.cholesky_solve(rhs.unsqueeze(-1), factor)
        return torch.cholesky_solve(swap_systems(first), factor)

    solves = {
        "ridge solves, forward + backward: two `linalg.solve`": two_solves,
        "… `lu_factor` + two `lu_solve` under autograd": lu_once,
        "… Cholesky factor + two `cholesky_solve`": cholesky,
        "… `_RidgeProxySolves` (used)": lambda kq, rhs: _RidgeProxySolves.apply(*kq.chunk(2, 1), rhs, 1e-3, None, 128)[
            0
        ],
    }
    interleaved_rows(rows, {name: backward(fn, kq, rhs) for name, fn in solves.items()}, args.repeats)

    with torch.no_grad():  # the ridge backward's suffix pass over four key/value pairs, on the 8 systems
        query, *pairs = (torch.randn(B, 2 * H, T, R, generator=g) for _ in range(9))

        def pairs_as_heads(chunk):
            out, _ = prefix_linear(
                torch.cat([query] * 4, 1), torch.cat(pairs[:4], 1), torch.cat(pairs[4:], 1), chunk, reverse=True
            )
            return out.unflatten(1, (4, -1)).sum(1)

        def grouped(chunk):
            side_by_side = lambda ts: torch.stack(ts, 3).reshape(B, 2 * H, 4 * T, R)
            return _prefix_linear_terms(query, side_by_side(pairs[:4]), side_by_side(pairs[4:]), chunk, None, True, 4)

        suffix = {
            f"suffix pass, four pairs as 32 heads × r = 16, chunk {chunk}": lambda chunk=chunk: pairs_as_heads(chunk)
            for chunk in (16, 32)
        }
        for chunk in (8, 16, 32, 64):
            label = f"… the pairs side by side at each position, chunk {chunk}" + (" (used)" if chunk == 16 else "")
            suffix[label] = lambda chunk=chunk: grouped(chunk)
        interleaved_rows(rows, {label: torch.no_grad()(fn) for label, fn in suffix.items()}, args.repeats)

    # the one `linear_chunk` setting serves the attention (4 heads × r = 16) and the v1 linear oracle (one
    # head × r = 128, the v1 shape's width, batch and context)
    attention = [torch.randn(B, H, T, R, generator=g, requires_grad=True) for _ in range(3)]
    oracle = [torch.randn(4, 1, 512, 128, generator=g, requires_grad=True) for _ in range(3)]
    for what, inputs in (("4 heads × r = 16 (the attention)", attention), ("1 head × r = 128 (the v1 oracle)", oracle)):
        by_chunk = {}
        for chunk in (32, 64, 128, 512):
            label = (
                f"prefix-linear, {what}, chunk {chunk}" + (" (used)" if chunk == 64 else "") + ", forward + backward"
            )
            by_chunk[label] = backward(lambda q, k, v, c=chunk: prefix_linear(q, k, v, c)[0], *inputs)
        interleaved_rows(rows, by_chunk, args.repeats)

    attention = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def math_backend(step):
        def run():
            with sdpa_kernel(SDPBackend.MATH):
                step()

        return run

    flash = {}
    for heads, length, width, label in [
        (4, T, 32, "flash attention, causal, 4 heads × 32 (B), forward + backward"),
        (1, T, 128, "… 1 head × 128 (a v1 oracle pass on the flash path)"),
        (1, T + 1, 129, "… 1 head × 129, one more query and key (the v1 sentinel pass)"),
    ]:
        x = [torch.randn(B, heads, length, width, generator=g, requires_grad=True) for _ in range(3)]
        flash[label] = backward(attention, *x)
        if heads == 4:
            flash["… the same through SDPA's math backend (the T × T matrix materialised)"] = math_backend(flash[label])
    interleaved_rows(rows, flash, args.repeats)

    # the connection's four value groups [w, k, dk, s·w] at the heavy shape (4 heads × 64): one call with q
    # and k padded to 256, two calls of two groups (padded to 128), one call per group (no padding; used
    # where the materialised pass does not serve), or the materialised pass by row block (used on the CPU)
    q, k, *groups = (torch.randn(2, 4, 1024, 64, generator=g, requires_grad=True) for _ in range(6))
    splits = {
        "one call, q and k padded to 4 × 64": [groups],
        "two calls of two groups, padded to 2 × 64": [groups[:2], groups[2:]],
        "one call per group, no padding": [[v] for v in groups],
    }

    def averages(calls):  # forward and backward
        outs = [softmax_average_of(q, k, call, scale=64**-0.5, causal=True) for call in calls]
        sum(out.square().sum() for out in outs).backward()

    def materialised(block):
        outs = row_block_softmax.causal_averages(q, k, groups, 64**-0.5, block)
        sum(out.square().sum() for out in outs).backward()

    steps = {name: lambda calls=calls: averages(calls) for name, calls in splits.items()}
    for block in (64, 128, 256):
        used = " (used)" if block == row_block_softmax.ROW_BLOCK else ""
        steps[f"one materialised pass, row block {block}{used}"] = lambda block=block: materialised(block)
    times = interleaved_times(steps, rounds=args.repeats, repeats=1)
    for n, (name, step) in enumerate(steps.items()):
        label = "connection value groups, 2 × 4 heads × 1024 × 4 × 64, forward + backward: " if n == 0 else "… "
        peak = peak_allocated(step) / 2**20
        rows.append([f"{label}{name}; peak {peak:.1f} MiB", 1e3 * median(times[name])])

    # the v1 oracle at the v1 shape: one head of width 128, score scale 1 / (4 √32)
    scale = 1 / (4 * 32**0.5)
    q, k, w = (0.5 * torch.randn(B, 1, T, 128, generator=g) for _ in range(3))
    q, k, w = (t.requires_grad_(True) for t in (q, k, w))
    kinetic = torch.rand(B, T, generator=g, requires_grad=True)
    label = "v1 oracle force g and L, 1 head × 128, forward + backward: two flash calls and the algebra"
    force = {label: backward(_two_flash_calls, q, k, w, kinetic, scale)}
    for block in (64, 128, 256):
        used = " (used)" if block == prefix_force_kernel.ROW_BLOCK else ""
        fused = lambda q, k, w, b, block=block: prefix_force_kernel.prefix_force(q, k, w, b, scale, block)
        force[f"… one materialised pass, row block {block}{used}"] = backward(fused, q[:, 0], k[:, 0], w[:, 0], kinetic)
    interleaved_rows(rows, force, args.repeats)
    only_flash = lambda q, k, w: softmax_average_with_normaliser(q, k, w, None, scale=scale, causal=True)[1]
    only = lambda q, k: prefix_force_kernel.prefix_log_normaliser(q, k, scale)
    normaliser = {
        "v1 oracle L alone (the force not read), forward + backward: one flash call": backward(only_flash, q, k, w),
        "… the materialised pass (used)": backward(only, q[:, 0], k[:, 0]),
    }
    interleaved_rows(rows, normaliser, args.repeats)

    # the v1 oracle's first pass returns the average and L; dL reaches the kernel's backward pass either
    # through one more column or folded into the output it is handed (softmax_ops._fold_log_norm_gradient)
    x = [torch.randn(B, 1, T, 128, generator=g, requires_grad=True) for _ in range(3)]
    weights = torch.randn(B, 1, T, 128, generator=g)
    with_normaliser = backward(lambda q, k, v: _sum_average_and_normaliser(q, k, v, weights), *x)

    def with_fold_floor(floor):  # the step with softmax_ops._FOLD_FLOOR set to ``floor`` while it runs
        def run():
            default, softmax_ops._FOLD_FLOOR = softmax_ops._FOLD_FLOOR, floor
            try:
                with_normaliser()
            finally:
                softmax_ops._FOLD_FLOOR = default

        return run

    fold = {
        "(average, L) of 1 head × 128, forward + backward with dL: one more column (129 wide)": with_fold_floor(
            float("inf")
        ),
        "… dL folded into the output handed to the kernel (used on the flash path)": with_normaliser,
    }
    interleaved_rows(rows, fold, args.repeats)

    vocab, tokens = 50304, 1024
    rows_per_chunk = loss_module.rows_per_chunk(tokens, vocab)  # the chunk the fused loss uses here
    h_chunk, head = torch.randn(rows_per_chunk, 64, generator=g), 0.3 * torch.randn(vocab, 64, generator=g)
    source = h_chunk @ head.T
    chunk, index = torch.empty_like(source), torch.randint(0, vocab, (rows_per_chunk, 1), generator=g)
    weights = torch.full((rows_per_chunk, 1), 1.0 / tokens)
    cross_entropy = {
        label: lambda fn=fn: fn(chunk.copy_(source), index, weights, h_chunk, head)
        for fn, label in [
            (
                _chunk_by_passes,
                f"cross-entropy chunk ({rows_per_chunk} × {vocab} logits): max, subtract, exp, sum, scale",
            ),
            (_chunk_by_softmax, "… the softmax kernel written over the logits (used)"),
        ]
    }
    cross_entropy["… copying the chunk in, included in both"] = lambda: chunk.copy_(source)
    interleaved_rows(rows, cross_entropy, args.repeats)
    h = torch.randn(tokens, 64, generator=g, requires_grad=True)
    head = (0.02 * torch.randn(vocab, 64, generator=g)).requires_grad_(True)
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    even, full = loss_module.rows_per_chunk, loss_module.CHUNK_ELEMENTS // vocab
    fused = backward(loss_module.linear_cross_entropy, h, head, targets)

    def uneven_chunks():  # the earlier split: full chunks and the rest
        loss_module.rows_per_chunk = lambda tokens, vocab, budget=None: loss_module.CHUNK_ELEMENTS // vocab
        try:
            fused()
        finally:
            loss_module.rows_per_chunk = even

    label = f"fused head + cross-entropy, {tokens} tokens × {vocab} (the primary shape), forward + backward"
    splits = {
        f"{label}: chunks of {rows_per_chunk} tokens (used: split evenly)": fused,
        f"… chunks of {full} tokens and the rest ({tokens % full})": uneven_chunks,
    }
    interleaved_rows(rows, splits, args.repeats)

    from sympformer.nn import SympFormerConfig, SympFormerLM

    model = SympFormerLM(SympFormerConfig(vocab_size=50304, n_layer=4, n_head=4, n_embd=64, block_size=128, arch="H0"))
    for parameter in model.parameters():
        parameter.grad = torch.randn(parameter.shape, generator=g)
    optimizers = {}
    for kind in ("for-loop", "foreach", "fused"):
        flags = {"foreach": kind == "foreach", "fused": kind == "fused"}
        used = " (used)" if kind == "fused" else ""
        label = f"AdamW step over H0's parameters at the primary shape (6.7 M), {kind}{used}"
        optimizers[label] = torch.optim.AdamW(model.parameters(), lr=1e-4, **flags).step
    interleaved_rows(rows, optimizers, args.repeats)

    body = markdown_table(["operation", "ms (median)"], [[name, f"{ms:.1f}"] for name, ms in rows])
    print(body)
    write_section(args.results, "kernels-cpu", "Kernel choices (cpu, fp32)", body)


if __name__ == "__main__":
    main()
