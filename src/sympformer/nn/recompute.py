"""Recompute-in-backward for cheap algebra (activation checkpointing at the scale of a few elementwise
ops and small products), which trades a little arithmetic for fewer saved (B, T, C) tensors. Used for
the H1/R2 connection term; the LayerNorms of weighted sums have their own cheaper function
(:mod:`sympformer.nn.norm_sum`).

Each recomputed region costs a fixed Python and autograd overhead (a checkpoint frame, its hooks, a
second forward), so small activations are not recomputed: below ``MIN_ELEMENTS`` elements in the
region's first input the saving is about 1 MiB a layer and the overhead is what shows (at the paper's
primary shape, 8 × 128 × 64, checkpointing the momentum LayerNorm sums cost Y and H0 4–8 % of a
training step; benchmarks/momentum_algebra.py measures the designs side by side).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from sympformer.rebuilt import rebuilding_applies

MIN_ELEMENTS = 1 << 18  # 1 MiB of float32: the v1 and heavy benchmark shapes recompute, primary does not


def rebuilds(t: Tensor) -> bool:
    """Whether a tensor like ``t`` is worth keeping as what rebuilds it (a recipe, a product's input):
    autograd records, ``t`` is large (``MIN_ELEMENTS``), eager (torch.compile chooses what to recompute
    itself) and outside autocast (the rebuilding would run outside it)."""
    return t.numel() >= MIN_ELEMENTS and rebuilding_applies(t)


def recomputed(fn, *inputs: Tensor) -> Tensor:
    """``fn(*inputs)``; when gradients are recorded and the activations are large (``MIN_ELEMENTS``),
    fn's intermediate tensors are not saved but recomputed in the backward pass (only ``inputs`` are
    kept). For cheap elementwise algebra and LayerNorms, whose saved inputs would otherwise be extra
    (B, T, C) tensors per block. Either way the values and gradients are bitwise the same."""
    if not torch.is_grad_enabled() or inputs[0].numel() < MIN_ELEMENTS:
        return fn(*inputs)
    return checkpoint(fn, *inputs, use_reentrant=False, preserve_rng_state=False)
