r"""Damping schedules for the damped Hamiltonian system  Ẋ = ∂H/∂P,  Ṗ = −∂H/∂X − α(t) P.

A schedule is given by its integrated friction η(t) = ∫_{t0}^{t} α(s) ds; the momentum is multiplied
by the exact friction factor exp(−(η(t+h) − η(t))) over a step of length h (pure damping flow).

Modes (notes §2.2):
    none      η = 0                               α = 0
    constant  η = α·(t − t0)                      α = alpha
    linear    η = c_lin·(t − t0)                  α = c_lin      (the v1 name of `constant`)
    log       η = c_log·log(t / t0)               α = c_log / t  (c_log = 3: Nesterov's 3/t)
    loglin    η = c_log·log(t / t0) + c_lin·(t − t0)

With ``eta_clip`` set, η is clamped to [−eta_clip, eta_clip] (the v1 models use 12–50) and α is 0
wherever the clamp is active. Coefficients may be floats or tensors (learned coefficients keep their
gradient); every method returns a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MODES = ("none", "constant", "linear", "log", "loglin")


def _tensor(value, like: Tensor | None = None) -> Tensor:
    if isinstance(value, Tensor):
        return value
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.get_default_dtype()
    return torch.tensor(float(value), dtype=dtype)


@dataclass(frozen=True)
class Damping:
    """A damping schedule α(t) with its integral η(t); see the module docstring for the modes."""

    mode: str = "log"
    c_log: float | Tensor = 3.0
    c_lin: float | Tensor = 0.0
    alpha: float | Tensor = 0.0
    t0: float = 1.0
    eta_clip: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown damping mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        if self.mode in ("log", "loglin") and not self.t0 > 0:
            raise ValueError(f"the log damping schedules need t0 > 0 (got t0={self.t0})")
        if self.eta_clip is not None and not self.eta_clip > 0:
            raise ValueError(f"eta_clip must be positive or None (got {self.eta_clip})")

    def _time(self, t) -> Tensor:
        """t as a tensor of the coefficients' dtype (learned float64 coefficients keep float64 times)."""
        if isinstance(t, Tensor):
            return t
        for coefficient in (self.c_log, self.c_lin, self.alpha):
            if isinstance(coefficient, Tensor) and coefficient.is_floating_point():
                return torch.tensor(float(t), dtype=coefficient.dtype, device=coefficient.device)
        return _tensor(t)

    def _raw_eta(self, t: Tensor) -> Tensor:
        zero = torch.zeros_like(t)
        if self.mode == "none":
            return zero
        if self.mode == "constant":
            return _tensor(self.alpha, t) * (t - self.t0)
        eta = zero
        if self.mode in ("log", "loglin"):
            if not torch.compiler.is_compiling() and bool((t <= 0).any()):
                raise ValueError(f"log damping is defined for t > 0 only (got t={t.min().item()})")
            eta = eta + _tensor(self.c_log, t) * torch.log(t / self.t0)
        if self.mode in ("linear", "loglin"):
            eta = eta + _tensor(self.c_lin, t) * (t - self.t0)
        return eta

    def eta(self, t: float | Tensor) -> Tensor:
        """η(t) = ∫_{t0}^{t} α(s) ds, clamped to ±eta_clip when a clip is set."""
        eta = self._raw_eta(self._time(t))
        if self.eta_clip is not None:
            eta = eta.clamp(-self.eta_clip, self.eta_clip)
        return eta

    def alpha_at(self, t: float | Tensor) -> Tensor:
        """α(t) = dη/dt (zero where the clip is active)."""
        t = self._time(t)
        alpha = torch.zeros_like(t)
        if self.mode == "constant":
            alpha = alpha + _tensor(self.alpha, t)
        if self.mode in ("log", "loglin"):
            alpha = alpha + _tensor(self.c_log, t) / t
        if self.mode in ("linear", "loglin"):
            alpha = alpha + _tensor(self.c_lin, t)
        if self.eta_clip is not None:
            alpha = torch.where(self._raw_eta(t).abs() < self.eta_clip, alpha, torch.zeros_like(alpha))
        return alpha

    def delta_eta(self, t: float | Tensor, h: float | Tensor) -> Tensor:
        """η(t + h) − η(t); h may be a tensor that keeps its gradient (learned step sizes)."""
        t = self._time(t)
        return self.eta(t + h) - self.eta(t)

    def factor(self, t: float | Tensor, h: float | Tensor) -> Tensor:
        """Exact friction factor over [t, t + h]: exp(−(η(t + h) − η(t)))."""
        return torch.exp(-self.delta_eta(t, h))


NO_DAMPING = Damping(mode="none")


class _Damp(torch.autograd.Function):
    """y = e^{−Δη} p keeping y (and the factor), not p: ∂p = e^{−Δη} ∂y, ∂Δη = −⟨∂y, y⟩."""

    @staticmethod
    def forward(ctx, p, delta_eta):
        factor = torch.exp(-delta_eta)
        damped = factor * p
        ctx.save_for_backward(factor, damped)
        return damped

    @staticmethod
    def backward(ctx, grad):
        factor, damped = ctx.saved_tensors
        if factor.dim() == 0:  # one dot product, no (…, C) temporary
            grad_delta = -torch.dot(grad.flatten(), damped.flatten())
        else:
            grad_delta = -(grad * damped).sum_to_size(factor.shape)
        return grad * factor, grad_delta.to(factor.dtype)


def damp(p: Tensor, delta_eta: Tensor) -> Tensor:
    """e^{−Δη} p: the momentum after the pure damping flow over an interval with friction integral Δη.

    Where Δη carries a gradient (learned damping), autograd keeps the damped momentum for the backward
    pass, not p (∂Δη = −⟨∂y, y⟩ needs no more): the oracle that reads the damped momentum next keeps it
    anyway, so the damping keeps nothing of its own (the half-damped schemes' first half step). The
    same value as ``exp(−Δη) * p``, which it is under torch.compile and without gradients."""
    needs_grad = torch.is_grad_enabled() and isinstance(delta_eta, Tensor) and delta_eta.requires_grad
    if not needs_grad or torch.compiler.is_compiling():
        return torch.exp(-delta_eta) * p
    return _Damp.apply(p, delta_eta)


def phi1(a: Tensor) -> Tensor:
    """φ₁(a) = (1 − e^{−a}) / a, with its series 1 − a/2 + a²/6 near a = 0 (no 0/0)."""
    small = a.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(a), a)
    return torch.where(small, 1 - a / 2 + a * a / 6, -torch.expm1(-safe) / safe)
