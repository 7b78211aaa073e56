r"""Tensors kept as the recipe that forms them, where the recipe's inputs are kept anyway. Two uses:

- A custom autograd Function that takes :class:`Rebuilt` inputs keeps the recipe's inputs and forms
  the tensor again in its backward pass, under autograd where the inputs need gradients, which then
  flow through the recipe (:func:`flattened`, :func:`pieces_of`, :func:`through_recipes`):

      forward:   t = fn(*inputs)
      backward:  t = fn(*leaves), leaves = inputs detached;   ∂inputs = autograd.grad(t, leaves, ∂t)

  The CPU flash kernel's Function (:mod:`sympformer.softmax_ops`): H1/R2's value groups dk = W_K u and
  s·w along the velocity u.
- A :class:`Rebuilt` stream with its ``value`` already formed (with its own graph) reaches the
  LayerNorm of a weighted sum (:mod:`sympformer.nn.norm_sum`), which keeps the recipe where it would
  keep the value and forms the value again, without a graph, when its backward pass reads it; the
  gradient flows through the value's own graph: R2's V_a = LN_v(W − η C) and increment, from W and C.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Rebuilt:
    """A tensor given by the recipe that forms it, ``fn(*inputs)``: a Function that takes it keeps the
    inputs, not the tensor, and forms it again in its backward pass. ``width``: its last dimension (a
    softmax value piece's, known before it is formed); ``value``: the tensor already formed, for the
    forward pass (else it is formed there too)."""

    fn: Callable[..., Tensor]
    inputs: tuple[Tensor, ...]
    width: int | None = None
    value: Tensor | None = None

    def form(self) -> Tensor:
        return self.fn(*self.inputs) if self.value is None else self.value


Piece = Tensor | Rebuilt


def rebuilding_applies(t: Tensor) -> bool:
    """Whether a tensor like ``t`` may be kept as what rebuilds it, whatever its size: autograd records,
    eager (torch.compile chooses what to recompute itself) and outside autocast (a rebuilding Function
    would run outside it; and a bfloat16 step, the GPU timings, keeps its fewer launches). The size test
    is the caller's (``nn.recompute.rebuilds``)."""
    return (
        torch.is_grad_enabled() and not torch.compiler.is_compiling() and not torch.is_autocast_enabled(t.device.type)
    )


def piece_width(piece: Piece) -> int:
    return piece.width if isinstance(piece, Rebuilt) else piece.shape[-1]


def formed(pieces: Sequence[Piece]) -> list[Tensor]:
    """The pieces as tensors (a :class:`Rebuilt` one formed)."""
    return [p.form() if isinstance(p, Rebuilt) else p for p in pieces]


def flattened(pieces: Sequence[Piece], as_input: Callable[[Tensor], Tensor]) -> tuple[tuple, list[Tensor]]:
    """(recipes, tensors) for a Function that keeps recipes: one recipe per piece, None for a tensor (one
    entry of ``tensors``, passed through ``as_input``) or (fn, number of inputs) for a :class:`Rebuilt`
    piece (its inputs, and fn followed by ``as_input``)."""
    recipes, tensors = [], []
    for piece in pieces:
        if isinstance(piece, Rebuilt):
            recipes.append((lambda *xs, fn=piece.fn: as_input(fn(*xs)), len(piece.inputs)))
            tensors.extend(piece.inputs)
        else:
            recipes.append(None)
            tensors.append(as_input(piece))
    return tuple(recipes), tensors


def pieces_of(recipes: tuple, tensors: Sequence[Tensor], needs_grad: Sequence[bool] = ()) -> tuple[list, list]:
    """(pieces, graphs) from :func:`flattened`'s recipes and tensors: the rebuilt pieces formed again.
    Where ``needs_grad`` (one flag per tensor; the backward pass) asks for a rebuilt piece's input
    gradients, the piece is formed under autograd from detached inputs, and its graph entry is (the
    piece, those inputs) for :func:`through_recipes`; otherwise the entry is None."""
    pieces, graphs, at = [], [], 0
    for recipe in recipes:
        count = 1 if recipe is None else recipe[1]
        inputs, needs = tensors[at : at + count], list(needs_grad[at : at + count]) or [False] * count
        at += count
        if recipe is None:
            pieces.append(inputs[0])
            graphs.append(None)
        elif any(needs):
            with torch.enable_grad():
                leaves = [x.detach().requires_grad_(need) for x, need in zip(inputs, needs, strict=True)]
                piece = recipe[0](*leaves)
            pieces.append(piece.detach())
            graphs.append((piece, leaves))
        else:
            pieces.append(recipe[0](*inputs))
            graphs.append(None)
    return pieces, graphs


def through_recipes(recipes: tuple, graphs: list, grad_pieces) -> list[Tensor | None]:
    """The gradients of :func:`flattened`'s tensors from those of the pieces: a plain piece's is its own,
    a rebuilt piece's inputs' come through its graph from :func:`pieces_of` (None where not needed)."""
    grads = []
    for recipe, graph, grad in zip(recipes, graphs, grad_pieces, strict=True):
        if recipe is None:
            grads.append(grad)
            continue
        found = [None] * recipe[1]
        if graph is not None and grad is not None:
            piece, leaves = graph
            wanted = [i for i, leaf in enumerate(leaves) if leaf.requires_grad]
            for i, g in zip(wanted, torch.autograd.grad(piece, [leaves[i] for i in wanted], grad), strict=True):
                found[i] = g
        grads.extend(found)
    return grads
