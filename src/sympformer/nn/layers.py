"""Small building blocks: LayerNorm with optional bias, the GPT MLP, constrained learned scalars."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.LayerNorm):
    """nanoGPT LayerNorm: learned weight, optional bias, eps 1e-5."""

    def __init__(self, n_embd: int, bias: bool) -> None:
        super().__init__(n_embd, eps=1e-5, bias=bias)


class MLP(nn.Module):
    """x ↦ W₂ GELU(W₁ x) with hidden width 4·n_embd."""

    def __init__(self, n_embd: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class ConstrainedScalar(nn.Module):
    """A learned scalar kept in its range through a fixed map of a raw parameter ``raw``:

    kind "unit": sigmoid(raw) ∈ (0, 1) (momentum retentions β, look-aheads μ);
    kind "pos":  softplus(raw) > 0 (gains γ, step sizes h);
    kind "exp":  exp(raw) > 0 (the connection strength η, exactly 1 at raw = 0).

    The optimiser gives every parameter named ``*.raw`` the scalar learning rate and no decay.
    """

    KINDS = ("unit", "pos", "exp")

    def __init__(self, init: float, kind: str) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"unknown scalar kind {kind!r}; valid: {', '.join(self.KINDS)}")
        self.kind = kind
        self.init = float(init)
        self.raw = nn.Parameter(torch.tensor(self.inverse(self.init, kind)))

    @staticmethod
    def inverse(value: float, kind: str) -> float:
        if kind == "unit":
            if not 0 < value < 1:
                raise ValueError(f"a unit scalar must start in (0, 1), got {value}")
            return math.log(value / (1 - value))
        if not value > 0:
            raise ValueError(f"a {kind} scalar must start positive, got {value}")
        if kind == "pos":
            return value + math.log(-math.expm1(-value))  # log(e^v − 1), stable
        return math.log(value)

    def reset(self) -> None:
        with torch.no_grad():
            self.raw.fill_(self.inverse(self.init, self.kind))

    def forward(self) -> Tensor:
        if self.kind == "unit":
            return torch.sigmoid(self.raw)
        if self.kind == "pos":
            return F.softplus(self.raw)
        return torch.exp(self.raw)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, init={self.init}"


def scalars_off_their_start(model: nn.Module, size: float = 0.3) -> None:
    """Move every learned scalar's raw value by size · sin(len(name)), a different amount each, so that no
    term sits at a special value it starts at (η = 1, equal gains): for checks that every term acts (the
    causality audit, the device check, tests)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".raw"):
                param.add_(size * math.sin(len(name)))
