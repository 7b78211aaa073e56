"""Recompute-in-backward for cheap algebra (activation checkpointing at the scale of a few elementwise
ops, LayerNorms and small products), which trades a little arithmetic for fewer saved (B, T, C) tensors."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def recomputed(fn, *inputs: Tensor) -> Tensor:
    """``fn(*inputs)``; when gradients are recorded, fn's intermediate tensors are not saved but
    recomputed in the backward pass (only ``inputs`` are kept). For cheap elementwise algebra and
    LayerNorms, whose saved inputs would otherwise be extra (B, T, C) tensors per block."""
    if not torch.is_grad_enabled():
        return fn(*inputs)
    return checkpoint(fn, *inputs, use_reentrant=False, preserve_rng_state=False)
