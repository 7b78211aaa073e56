r"""Oracles of the SympFormer v1 blocks: one kernel evaluation per layer returns the velocity
F = ∂H/∂P, the force G and the velocity map P' ↦ K(X) P' (the integrator contract of
:mod:`sympformer.integrators.oracle`). Inputs: x = the normalised stream LN(X) (the force is applied
to the raw stream, without the LN Jacobian), p = the momentum.

CausalPrefixForce (notes §7; the default): one kernel shared by the heads,
    S_ij = mean_h ⟨q_i^h, k_j^h⟩ / √d_h (j ≤ i),  E_ij = e^{S_ij},  z_i = (1/i) Σ_{j≤i} E_ij,
    F_i = B_θ p_i / z_i,  s_i = ⟨B_θ p_i, p_i⟩ / z_i²,
    G_i = W_O( (1/(2i)) Σ_{j≤i} E_ij (s_i + s_j + 2) w_j ),  w = W_V x.
  (1/i) Σ_j E_ij v_j = z_i Σ_j P_ij v_j with P the causal softmax. On CPU (float32/64, eager, no
  generation cache) one materialised pass gives log z and the average inside W_O (:mod:`prefix_force_kernel`);
  elsewhere one flash call on the values w that also returns log z (the CPU kernel's own normaliser,
  else a sentinel key), then one on s w (with the sentinel key, eager, outside autocast and with large
  activations, a checkpoint region: :meth:`CausalPrefixForce._flash_force`).

PrefixLinearForce (notes §2.4 with the prefix count 1/i in place of v1's 1/T):
    F_i = (1/i) Σ_{j≤i} ((A x_i)·x_j) p_j,   G_i = −(1/i) Σ_{j≤i} (p_i·p_j) A x_j + V x_i.

GlobalHamiltonianForce (research only; LEAKS): G = −∂H/∂x of the whole-sequence Hamiltonian
    H = Σ_i ½ ⟨B_θ p_i, p_i⟩ / z_i − ½ Σ_{j≤i} E_ij,  z_i = (1/T) Σ_{j≤i} E_ij  (the authors' v1 force)
  ∂H/∂x_i holds key-side terms of every later query j > i, and z divides by the full length T, so
  earlier tokens are moved by later ones. It exists as the witness that the causality audit catches.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sympformer.integrators.oracle import Evaluation
from sympformer.nn.attention import CallCounter, CausalSelfAttention
from sympformer.nn.linear_attention import prefix_linear
from sympformer.nn.prefix_force_kernel import materialised_applies, prefix_force, prefix_log_normaliser
from sympformer.nn.recompute import rebuilds, recomputed
from sympformer.softmax_ops import kernel_log_normaliser


def _through_metric(grad_bp: Tensor, p: Tensor, b_theta: Tensor) -> tuple[Tensor, Tensor]:
    """(∂/∂p, ∂/∂B_θ) of ⟨grad_bp, p B_θᵀ⟩: grad_bp B_θ and grad_bpᵀ p over every token."""
    return grad_bp @ b_theta, grad_bp.flatten(0, -2).mT @ p.flatten(0, -2)


class _Kinetic(torch.autograd.Function):
    """(⟨B_θ p_i, p_i⟩, B_θ p) keeping only p and B_θ (the backward pass forms B_θ p again: one product
    of (tokens × C) by (C × C) instead of a kept (tokens × C) tensor); B_θ p is returned without a
    gradient, for :class:`_MetricVelocity` to reuse."""

    @staticmethod
    def forward(ctx, p, b_theta):
        bp = p @ b_theta.T
        ctx.save_for_backward(p, b_theta)
        ctx.mark_non_differentiable(bp)
        return torch.linalg.vecdot(bp, p), bp

    @staticmethod
    def backward(ctx, grad_kinetic, _grad_bp):
        p, b_theta = ctx.saved_tensors
        grad_kinetic = grad_kinetic.unsqueeze(-1)
        grad_p, grad_b = _through_metric(grad_kinetic * p, p, b_theta)
        return grad_p + grad_kinetic * (p @ b_theta.T), grad_b


class _MetricVelocity(torch.autograd.Function):
    """base + scale · (B_θ p) · factor keeping p, B_θ, the per-token factor and the scale (not B_θ p: the
    backward pass forms it again); ``bp``, when given, is B_θ p already formed (no gradient flows
    through it); ``base`` None: no base."""

    @staticmethod
    def forward(ctx, p, b_theta, factor, bp, scale, base):
        ctx.save_for_backward(p, b_theta, factor, scale)
        ctx.with_base = base is not None
        velocity = (p @ b_theta.T if bp is None else bp) * (factor * scale)
        return velocity if base is None else velocity.add_(base)

    @staticmethod
    def backward(ctx, grad):
        p, b_theta, factor, scale = ctx.saved_tensors
        grad_velocity = grad * scale  # ∂/∂((B_θ p) · factor)
        bp_grad = torch.linalg.vecdot(grad, p @ b_theta.T).unsqueeze(-1)  # ⟨G_i, B_θ p_i⟩
        grad_factor = (bp_grad * scale).sum_to_size(factor.shape)
        grad_scale = (bp_grad * factor).sum().reshape(scale.shape)
        grad_p, grad_b = _through_metric(grad_velocity * factor, p, b_theta)
        return grad_p, grad_b, grad_factor, None, grad_scale, grad if ctx.with_base else None


def kinetic_terms(p: Tensor, b_theta: Tensor) -> tuple[Tensor, Tensor]:
    """(b_i = ⟨B_θ p_i, p_i⟩, B_θ p) where B_θ p is for :func:`metric_velocity` only (it carries no
    gradient); under autocast, plain operations (whose products run in the autocast dtype)."""
    if torch.is_autocast_enabled(p.device.type):
        bp = p @ b_theta.T
        return torch.linalg.vecdot(bp, p), bp
    return _Kinetic.apply(p, b_theta)


def metric_velocity(p: Tensor, b_theta: Tensor, factor: Tensor, bp: Tensor | None = None) -> Tensor:
    """(B_θ p_i) · factor_i, with ``bp`` = B_θ p from :func:`kinetic_terms` where already formed."""
    if torch.is_autocast_enabled(p.device.type):
        return (p @ b_theta.T if bp is None else bp) * factor
    return _MetricVelocity.apply(p, b_theta, factor, bp, factor.new_ones(()), None)


def metric_drift(x: Tensor, h: Tensor | float, p: Tensor, b_theta: Tensor, factor: Tensor) -> Tensor:
    """The schemes' drift X + h K(X) P' = x + h (B_θ p_i) · factor_i, keeping p, not the velocity."""
    if torch.is_autocast_enabled(p.device.type):
        return x + h * ((p @ b_theta.T) * factor)
    return _MetricVelocity.apply(
        p, b_theta, factor, None, torch.as_tensor(h, dtype=factor.dtype, device=factor.device), x
    )


class CausalPrefixForce(CausalSelfAttention):
    """The causal prefix force of notes §7 (module docstring); one attention evaluation per call."""

    def __init__(self, n_embd: int, n_head: int, bias: bool) -> None:
        super().__init__(n_embd, 1, bias, dropout=0.0)  # one kernel over the full width
        self.scale = 1.0 / (n_head * math.sqrt(n_embd // n_head))  # = mean over heads of q·k/√d_h
        self.b_theta = nn.Parameter(torch.eye(n_embd))

    def diagonal_score(self, q: Tensor, k: Tensor) -> Tensor:
        """s_ii = scale q_i·k_i (the sentinel's centre where one is needed)."""
        return self.scale * (q * k).sum(-1)

    def evaluate(
        self, x: Tensor, p: Tensor, need_force: bool = True, velocity_scale: Tensor | float = 1.0
    ) -> Evaluation:
        """F, G and the velocity map at (x, p); F and the map multiplied by ``velocity_scale`` (folded
        into the per-token factor 1/z, so the scale costs no pass over the stream)."""
        q, k, w = self.project(x)
        kinetic, bp = kinetic_terms(p, self.b_theta) if need_force else (None, None)  # ⟨B p_i, p_i⟩, B p
        if self.cache is None and materialised_applies(q):
            log_norm, inner = self._materialised_force(q, k, w, kinetic)
        elif not need_force:
            log_norm, inner = self._average_with_normaliser(q, k, w)[1], None
        elif self.cache is None and not kernel_log_normaliser(q, k) and rebuilds(q):
            # the sentinel key (a GPU), eager, outside autocast, large: see _flash_force
            log_norm, inner = recomputed(self._flash_force, q, k, w, kinetic)
        else:
            log_norm, inner = self._flash_force(q, k, w, kinetic)
        log_z = log_norm - torch.log(self.positions(q.shape[-2], log_norm))  # (B, T)
        inv_z = torch.exp(-log_z)
        velocity_factor = (velocity_scale * inv_z).unsqueeze(-1)
        velocity_map = lambda p_new: metric_velocity(p_new, self.b_theta, velocity_factor)
        velocity = metric_velocity(p, self.b_theta, velocity_factor, bp)
        drift = lambda x, h, p_new: metric_drift(x, h, p_new, self.b_theta, velocity_factor)
        if not need_force:
            return Evaluation(velocity, torch.zeros_like(p), velocity_map, drift_step=drift)
        return Evaluation(velocity, self.output(inner), velocity_map, drift_step=drift)

    def _flash_force(self, q: Tensor, k: Tensor, w: Tensor, kinetic: Tensor) -> tuple[Tensor, Tensor]:
        """(L, the force before W_O) from two fused calls: (y, L) from the first, y2 = Σ_j P_ij s_j w_j
        with s = b / z² (which needs L) from a second, then (z / 2) ((s + 2) y + y2).

        With the sentinel key (a GPU) where the CPU's paths rebuild (:func:`~sympformer.nn.recompute.rebuilds`:
        eager, outside autocast, large activations) the two calls and their algebra form a checkpoint
        region (:func:`~sympformer.nn.recompute.recomputed`): SDPA keeps what it is handed,
        here the sentinel call's q, keys and values one row and one column wider than q and the values
        s·w, and the algebra keeps y and more; the region keeps q, k, w and b, and the backward pass
        repeats both calls' forward passes. With a GPU's code on the CPU (benchmarks/memory.py
        --device-paths, the v1 shape) the one-call schemes' peaks went from 1.59–1.68× B's to 1.27–1.29×
        (as with the CPU's materialised pass), doubling's from 4.78× to 3.18×; the H200 measured
        1.81–1.97× with the calls kept. The time this costs on a GPU is not measured yet: in float32 a
        v1_fe training step with a GPU's paths dispatches 15 % more operators (996 against 864, counted as
        benchmarks/ops_per_step.py counts; one-off), and an eager GPU step at these shapes is bound by
        launching them. bfloat16 steps (the GPU timings) are as before."""
        (w_avg,), log_norm = self._average_with_normaliser(q, k, w)
        log_z = log_norm - torch.log(self.positions(q.shape[-2], log_norm))
        s = (kinetic * torch.exp(-log_z).square())[:, None, :, None]  # ⟨B p_i, p_i⟩ / z_i²
        (sw_avg,) = self.aggregate(q, k, [s * w], new_softmax=False, slot="second")
        return log_norm, torch.addcmul(sw_avg, s + 2, w_avg) * (0.5 * torch.exp(log_z))[:, None, :, None]

    def _materialised_force(self, q: Tensor, k: Tensor, w: Tensor, kinetic: Tensor | None):
        """(L, the force before W_O: (1/(2i)) Σ_j E_ij (s_i + s_j + 2) w_j) from ONE materialised pass
        (:mod:`prefix_force_kernel`); without a force (``kinetic`` None), L alone."""
        self.count(evaluations=1, kernel_calls=1)
        if kinetic is None:
            return prefix_log_normaliser(q[:, 0], k[:, 0], self.scale), None
        inner, log_norm = prefix_force(q[:, 0], k[:, 0], w[:, 0], kinetic, self.scale)
        return log_norm, inner.unsqueeze(1)

    def _average_with_normaliser(self, q: Tensor, k: Tensor, w: Tensor) -> tuple[list[Tensor], Tensor]:
        """([Σ_j P_ij w_j], L of shape (B, T)) from one fused kernel call (flash path)."""
        # on CPU the fused kernel's own L; elsewhere a sentinel key centred on the diagonal score s_ii
        # (always visible, L_i ≥ s_ii). If a row's mass sits ≳ 80 nats above its diagonal (float32
        # underflow of the sentinel), that layer falls back to the entropy-bounded centre (one more call).
        # Under torch.compile the check is skipped (a data-dependent branch would break the graph): such
        # a layer gives a non-finite loss, which stops training with the last good checkpoint kept
        averages, log_norm = self.aggregate_with_normaliser(q, k, [w], self.diagonal_score)
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(log_norm).all()):
            log_norm = self.log_normaliser(q, k, self.expected_score(q, k))
        return averages, log_norm.squeeze(1)


class PrefixLinearForce(CallCounter, nn.Module):
    """The v1 linear oracle with prefix normalisation (module docstring); one Gram evaluation per call."""

    def __init__(self, n_embd: int, chunk: int) -> None:
        super().__init__()
        self.c_A = nn.Linear(n_embd, n_embd, bias=False)
        self.c_V = nn.Linear(n_embd, n_embd, bias=False)
        self.chunk = chunk
        self.cache: dict[str, Tensor] | None = None
        self.reset_counters()

    def _prefix(self, slot: str, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        state = None if self.cache is None else self.cache.get(slot)
        out, final = prefix_linear(query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1), self.chunk, state)
        if self.cache is not None:
            self.cache[slot + ".next"] = final
        self.count(kernel_calls=1)
        return out.squeeze(1)

    def commit(self, length: int) -> None:
        """After a cached step: the states of this step become the prefix of the next."""
        if self.cache is not None:
            for slot in [s for s in self.cache if s.endswith(".next")]:
                self.cache[slot[: -len(".next")]] = self.cache.pop(slot)
            self.cache["count"] = int(self.cache.get("count", 0)) + length

    def evaluate(
        self, x: Tensor, p: Tensor, need_force: bool = True, velocity_scale: Tensor | float = 1.0
    ) -> Evaluation:
        """F, G and the velocity map at (x, p); F and the map multiplied by ``velocity_scale`` (folded
        into the per-position factor 1/i)."""
        start = 0 if self.cache is None else int(self.cache.get("count", 0))
        count = torch.arange(start + 1, start + x.shape[1] + 1, device=x.device, dtype=x.dtype).unsqueeze(-1)
        ax = self.c_A(x)
        self.count(evaluations=1)
        velocity_factor = velocity_scale / count
        velocity_map = lambda p_new, slot="p_new": self._prefix(slot, ax, x, p_new) * velocity_factor
        velocity = velocity_map(p, "p")
        if not need_force:
            return Evaluation(velocity, torch.zeros_like(p), velocity_map)
        force = -self._prefix("ax", p, p, ax) / count + self.c_V(x)
        return Evaluation(velocity, force, velocity_map)


class GlobalHamiltonianForce(CausalSelfAttention):
    """The authors' v1 whole-sequence force (research only; it leaks: module docstring)."""

    def __init__(self, n_embd: int, n_head: int, bias: bool) -> None:
        super().__init__(n_embd, n_head, bias, dropout=0.0)
        self.c_proj = None  # the force is −∂H/∂x: no value read-out
        self.b_theta = nn.Parameter(torch.eye(n_embd))

    def hamiltonian(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        q, k, _ = self.project(x)
        length = x.shape[1]
        scores = (q @ k.mT * self.scale).mean(1).clamp(-60, 60)  # head-averaged, (B, T, T)
        mask = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        energy = torch.where(mask, torch.exp(scores), torch.zeros_like(scores))
        z = energy.sum(-1) / length  # divided by the full length T: a second leak
        bp = p @ self.b_theta.T
        return (0.5 * (bp * p).sum(-1) / z).sum() - 0.5 * energy.sum(), z

    def evaluate(
        self, x: Tensor, p: Tensor, need_force: bool = True, velocity_scale: Tensor | float = 1.0
    ) -> Evaluation:
        """F, G and the velocity map at (x, p); F and the map multiplied by ``velocity_scale``."""
        self.count(evaluations=1, kernel_calls=1)
        build_graph = torch.is_grad_enabled() and x.requires_grad  # training backpropagates through G
        with torch.enable_grad():
            x_in = x if build_graph else x.detach().requires_grad_(True)
            h, z = self.hamiltonian(x_in, p if build_graph else p.detach())
            (grad,) = torch.autograd.grad(h, x_in, create_graph=build_graph)
        velocity_factor = (velocity_scale / z).unsqueeze(-1)
        velocity_map = lambda p_new: metric_velocity(p_new, self.b_theta, velocity_factor)
        return Evaluation(velocity_map(p), -grad if need_force else torch.zeros_like(p), velocity_map)
