r"""Causal multi-head softmax attention through ``scaled_dot_product_attention``, and the connection
term C(z; u) of the normalised heavy-ball blocks H1/R2 (notes §2.6), computed without a T×T matrix.

Per head r, with q, k, w = W_Q z, W_K z, W_V z and P_r = causal softmax(q_r k_rᵀ / √d_h):

    F_i     = W_O merge_r(Σ_j P_r,ij w_r,j)                   (the attention output)
    dq, dk  = W_Q u, W_K u                                     (raw weights: no LN Jacobian)
    drift_i = mean_r Σ_j P_r,ij (dq_r,i · k_r,j + q_r,i · dk_r,j) / √d_h
            = mean_r (dq_r,i · Σ_j P k_r,j + q_r,i · Σ_j P dk_r,j) / √d_h
    s_j     = ‖u_j‖²
    C_i     = drift_i u_i − ½ [ s_i F_i + W_O merge_r(Σ_j P_r,ij s_j w_r,j) ]

Every Σ_j P_ij (·)_j is the same softmax applied to other values, so when u is known before the
attention (H1) one SDPA call on the concatenated values [w, k, dk, s·w] gives F and C together; when
u depends on F (R2: u = W = β v + g F) a second call on [dk, s·w] re-aggregates with the same softmax.
With large activations the groups take one materialised pass on the CPU (the scores formed once, at q's
width: :mod:`sympformer.row_block_softmax`) or elsewhere one kernel call each (the same products, none of
the joined call's padded copies of q and k; :func:`_value_group_calls`), and the groups along u, dk and
s·w, are formed again in the backward pass instead of kept (:meth:`CausalSelfAttention._direction_values`).
:func:`connection_reference` is the per-row loop that materialises P (tests only).

Generation cache: while ``self.cache`` is a dict, the keys and every value group ("slot") of the
positions seen so far are kept, and new queries attend over them. The value groups of H1/R2 carry
the velocity stream (dk = W_K u, s = ‖u‖² with u the velocity), so the cache carries it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sympformer.nn import recompute
from sympformer.nn.norm_sum import Affine
from sympformer.nn.recompute import recomputed
from sympformer.row_block_softmax import causal_averages
from sympformer.softmax_ops import (
    Piece,
    Rebuilt,
    formed,
    kernel_log_normaliser,
    piece_width,
    row_blocks_serve,
    softmax_average,
    softmax_average_of,
    softmax_average_with_normaliser,
    softmax_log_normaliser,
)


def _pieces(out: Tensor, widths: list[int]) -> list[Tensor]:
    """The averages of each value group: one group is the output itself (a split would copy it in the
    backward pass)."""
    return [out] if len(widths) == 1 else list(out.split(widths, dim=-1))


def _value_group_calls(q: Tensor, k: Tensor, widths: list[int], dropout: float) -> str:
    """How the softmax averages of several value groups are formed: "row blocks" (one materialised pass,
    :func:`~sympformer.row_block_softmax.causal_averages`), "per group" (one fused kernel call each) or
    "joined" (one fused call on their concatenation). Large activations (:data:`recompute.MIN_ELEMENTS`
    in q) take row blocks where they serve (:func:`~sympformer.softmax_ops.row_blocks_serve`: eager CPU,
    float32/float64, no dropout), else one call per group where the groups are as wide as q; small ones
    and the rest the joined call.

    The fused kernels want q, k and the values of one width, so the joined call pads q and k to the
    values' total width: the same arithmetic as one call per group (Σ_g (q·k over d + P v over d)
    against q·k over Σ_g d + P v over Σ_g d), but the padded q, k, their gradients and the padded output
    gradient live through the kernel's backward pass. At the attention-heavy shape (the connection's
    four groups of 64, forward and backward on the CPU) the joined call peaked at 74 MiB in 139 ms, two
    calls of two groups at 50 MiB in 140 ms, one call per group at 28 MiB in 151 ms: each call runs its
    own softmax pass (benchmarks/kernels.py, the variants interleaved). Row blocks form the scores once,
    at q's width, for every group: H1's step at that shape 1.69× H0's against 2.34× with a call per
    group, R2's 2.12× against 2.43×, at the same peak memory (one-off interleaved run). Small activations
    keep the one fused call, whose per-call overhead shows there (H1's primary shape: 4.2–6.0 against
    6.2–6.8 ms a layer for a call per group; with row blocks H1's step 4.7 % and R2's 14.4 % slower,
    one-off interleaved run)."""
    if q.numel() < recompute.MIN_ELEMENTS or len(widths) < 2:
        return "joined"
    if row_blocks_serve(q, k, widths, causal=True, dropout_p=dropout):
        return "row blocks"
    many_as_wide = all(width == q.shape[-1] for width in widths)
    return "per group" if many_as_wide and dropout == 0 else "joined"


class CallCounter:
    """``evaluations`` (attention evaluations: distinct softmax distributions or Gram evaluations, the
    paper's oracle calls) and ``kernel_calls`` (kernel passes) since the last :meth:`reset_counters`.
    Nothing is counted while torch.compile traces (a counter bumped inside a checkpointed region
    would break the graph); read the counters after an eager forward."""

    def reset_counters(self) -> None:
        self.evaluations = 0
        self.kernel_calls = 0

    def count(self, evaluations: int = 0, kernel_calls: int = 0) -> None:
        if not torch.compiler.is_compiling():
            self.evaluations += evaluations
            self.kernel_calls += kernel_calls


class AttentionBase(CallCounter, nn.Module):
    """What every attention kind shares: W_QKV (``c_attn``), W_O (``c_proj``), the head split and merge,
    directional projections, the counters (:class:`CallCounter`) and the generation cache (``cache``:
    None, or a dict). ``qk_scale`` multiplies q, k and their directions (1 for softmax attention,
    whose score scale is separate; r^{-1/4} for the linear attention)."""

    qk_scale = 1.0

    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head, self.head_dim = n_head, n_embd // n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.cache: dict[str, Tensor] | None = None
        self.reset_counters()

    def split_heads(self, t: Tensor) -> Tensor:
        b, n, c = t.shape
        return t.view(b, n, self.n_head, c // self.n_head).transpose(1, 2)

    @staticmethod
    def merge_heads(t: Tensor) -> Tensor:
        b, h, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, h * d)

    def projection_weight(self, part: str) -> Tensor:
        """W_Q or W_K (part "q" or "k"): their rows of ``c_attn``'s weight."""
        n = self.c_attn.out_features // 3
        return self.c_attn.weight[{"q": slice(0, n), "k": slice(n, 2 * n)}[part]]

    def directional(self, u: Tensor, weight: Tensor) -> Tensor:
        """weight · u split into heads and scaled by qk_scale, for W_Q or W_K (weights only: a directional
        derivative has no bias)."""
        d = self.split_heads(F.linear(u, weight))
        return d if self.qk_scale == 1.0 else d * self.qk_scale

    def direction(self, u: Tensor, part: str) -> Tensor:
        """W_part u for part "q" or "k" (:meth:`directional`)."""
        return self.directional(u, self.projection_weight(part))

    def directions(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """dq = W_Q u and dk = W_K u (:meth:`direction`)."""
        return self.direction(u, "q"), self.direction(u, "k")

    def output(self, y: Tensor, deferred: bool = False) -> Tensor | Affine:
        """The attention output c_proj(merge(y)) with residual dropout; with ``deferred`` and no dropout
        active, as an :class:`Affine` term for :func:`layer_norm_of_sum` (the product is not kept)."""
        if deferred and not (self.training and self.resid_dropout.p > 0):
            return Affine(self.merge_heads(y), self.c_proj.weight, self.c_proj.bias)
        return self.resid_dropout(self.c_proj(self.merge_heads(y)))


class CausalSelfAttention(AttentionBase):
    """Multi-head causal self-attention with SDPA, plus the pieces the connection term reuses."""

    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float) -> None:
        super().__init__(n_embd, n_head, bias, dropout)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def project(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, w (values) of the new positions, each (B, H, T, d_h); with a cache, the keys are
        appended to it (the scores use every cached key)."""
        q, k, w = self.c_attn(z).split(self.c_attn.out_features // 3, dim=-1)
        q, k, w = self.split_heads(q), self.split_heads(k), self.split_heads(w)
        if self.cache is not None:
            self._extend("keys", k)
        return q, k, w

    def keys_seen(self, k: Tensor) -> Tensor:
        """Every key the new queries score against: the cached keys (the new ones appended) with a
        cache, else the new keys ``k`` themselves."""
        return k if self.cache is None else self.cache["keys"]

    def _extend(self, slot: str, new: Tensor) -> Tensor:
        old = self.cache.get(slot)
        self.cache[slot] = new if old is None else torch.cat([old, new], dim=-2)
        return self.cache[slot]

    def output_linear(self, y: Tensor) -> Tensor:
        """W_O merge(y) without the bias (the linear part of the output projection)."""
        return F.linear(self.merge_heads(y), self.c_proj.weight)

    def aggregate(
        self, q: Tensor, k: Tensor, values: list[Piece], new_softmax: bool = True, slot: str = "values"
    ) -> list[Tensor]:
        """Σ_j P_ij v_j for every v in ``values`` (tensors or :class:`Rebuilt` recipes): one SDPA call on
        their concatenation, one call per value group or one materialised pass where that pays
        (:func:`_value_group_calls`); ``slot`` names the group in the generation cache."""
        widths = [piece_width(v) for v in values]
        if self.cache is not None:
            return self._aggregate_cached(q, k, torch.cat(formed(values), -1), widths, new_softmax, slot)
        dropout = self.dropout if self.training else 0.0
        self.count(evaluations=int(new_softmax))
        calls = _value_group_calls(q, k, widths, dropout)
        if calls == "per group":
            self.count(kernel_calls=len(values))
            return [softmax_average_of(q, k, [v], scale=self.scale, causal=True) for v in values]
        self.count(kernel_calls=1)
        if calls == "row blocks":
            return causal_averages(q, k, values, self.scale)
        out = softmax_average_of(q, k, values, scale=self.scale, causal=True, dropout_p=dropout)
        return _pieces(out, widths)

    def _cached_mask(self, n_new: int) -> Tensor | None:
        """With a cache, new query i sits at absolute position total − new + i and sees the keys up to
        it; a single new query sees them all (no mask)."""
        keys = self.cache["keys"]
        total = keys.shape[-2]
        if n_new == 1:
            return None
        rows = torch.arange(total - n_new, total, device=keys.device).unsqueeze(-1)
        return torch.arange(total, device=keys.device) <= rows

    def positions(self, n_new: int, like: Tensor) -> Tensor:
        """1-based absolute positions i of the newest ``n_new`` queries (the prefix counts)."""
        total = n_new if self.cache is None else self.cache["keys"].shape[-2]
        return torch.arange(total - n_new + 1, total + 1, device=like.device, dtype=like.dtype)

    def aggregate_with_normaliser(
        self,
        q: Tensor,
        k: Tensor,
        values: list[Tensor],
        centre: Callable[[Tensor, Tensor], Tensor],
        slot: str = "values",
    ) -> tuple[list[Tensor], Tensor]:
        """(Σ_j P_ij v_j for every v, L_i = log Σ_{j≤i} e^{scale q_i·k_j}) from ONE kernel call: the CPU
        kernel's own L, or a sentinel key scored ``centre(q, k)`` of the new queries and keys (evaluated
        only then; see :func:`softmax_average_with_normaliser`); one attention evaluation."""
        widths = [v.shape[-1] for v in values]
        joined = torch.cat(values, -1) if len(values) > 1 else values[0]
        self.count(evaluations=1, kernel_calls=1)
        mask = None if self.cache is None else self._cached_mask(q.shape[-2])
        if self.cache is not None:
            joined = self._extend(slot, joined)
        keys = self.keys_seen(k)
        scored = None if kernel_log_normaliser(q, keys, mask) else centre(q, k)
        out, log_norm = softmax_average_with_normaliser(
            q, keys, joined, scored, scale=self.scale, causal=self.cache is None, mask=mask
        )
        return _pieces(out, widths), log_norm

    def expected_score(self, q: Tensor, k: Tensor) -> Tensor:
        """E_P[scale q_i·k_j] = scale q_i·Σ_j P_ij k_j over every key seen so far (cache included): the
        values are the keys themselves, so no value group needs caching."""
        mask = None if self.cache is None else self._cached_mask(q.shape[-2])
        keys = self.keys_seen(k)
        average = softmax_average(q, keys, keys, scale=self.scale, causal=self.cache is None, mask=mask)
        self.count(kernel_calls=1)
        return self.scale * (q * average).sum(-1)

    def log_normaliser(self, q: Tensor, k: Tensor, expected_score: Tensor) -> Tensor:
        """L_i = log Σ_{j≤i} exp(scale q_i·k_j) over every key seen so far (cache included)."""
        self.count(kernel_calls=1)  # one more call on the same softmax: no new evaluation
        if self.cache is None:
            return softmax_log_normaliser(q, k, scale=self.scale, causal=True, expected_score=expected_score)
        mask = self._cached_mask(q.shape[-2])
        return softmax_log_normaliser(q, self.keys_seen(k), scale=self.scale, expected_score=expected_score, mask=mask)

    def _aggregate_cached(self, q, k, values, widths, new_softmax, slot):
        keys, values = self.keys_seen(k), self._extend(slot, values)
        out = softmax_average(q, keys, values, scale=self.scale, mask=self._cached_mask(q.shape[-2]))
        self.count(evaluations=int(new_softmax), kernel_calls=1)
        return _pieces(out, widths)

    def forward(self, z: Tensor, deferred: bool = False) -> Tensor | Affine:
        """The attention output (``deferred``: as an Affine term, see :meth:`output`)."""
        q, k, w = self.project(z)
        (y,) = self.aggregate(q, k, [w])
        return self.output(y, deferred)

    # --- the connection term -------------------------------------------------------------------

    def _connection(self, q, k_avg, dk_avg, y, sw_avg, u) -> Tensor:
        """C_i = drift_i u_i − ½ W_O merge(s_i y_i + Σ_j P_ij s_j w_j)  (W_O merge(s_i y_i) = s_i F_i's linear
        part). The algebra is recomputed in the backward pass (its inputs are kept anyway), dq = W_Q u with it."""

        def connection(q, k_avg, dk_avg, y, sw_avg, u):
            dq = self.direction(u, "q")
            drift = (self.scale * ((dq * k_avg).sum(-1) + (q * dk_avg).sum(-1))).mean(1)  # (B, T)
            s = u.square().sum(-1)
            return drift.unsqueeze(-1) * u - 0.5 * self.output_linear(s[:, None, :, None] * y + sw_avg)

        return recomputed(connection, q, k_avg, dk_avg, y, sw_avg, u)

    def _direction_values(self, q: Tensor, w: Tensor, u: Tensor) -> list[Piece]:
        """The connection's value groups along u, [dk, s·w] with dk = W_K u and s_j = ‖u_j‖². With large
        activations under autograd, as :class:`Rebuilt` recipes: the CPU kernel then keeps u and w (kept
        anyway, by the connection's algebra and the first call) and forms dk and s·w again in its
        backward pass, a (tokens × C) by (C × C) product and a scaling, instead of keeping two (B, T, C)
        tensors a layer (H1 at the attention-heavy shape: 249.6 → 233.5 MiB). Elsewhere (a GPU) each of
        the two groups takes its own SDPA call as a checkpoint region, which also repeats the call's
        forward pass (``softmax_ops._average_of_recipe``; the same shape with those paths forced on the
        CPU: 249.6 → 233.3 MiB)."""
        w_k = self.projection_weight("k")
        sw = lambda u, w: u.square().sum(-1)[:, None, :, None] * w
        if torch.is_grad_enabled() and q.numel() >= recompute.MIN_ELEMENTS:
            return [Rebuilt(self.directional, (u, w_k), self.head_dim), Rebuilt(sw, (u, w), self.head_dim)]
        return [self.directional(u, w_k), sw(u, w)]

    def with_connection(self, z: Tensor, u: Tensor, deferred: bool = False) -> tuple[Tensor | Affine, Tensor]:
        """(F, C(z; u)) for a direction u known before the attention: one attention evaluation, one SDPA call
        (one per value group with large activations; ``deferred``: F as an Affine term, see :meth:`output`)."""
        q, k, w = self.project(z)
        y, k_avg, dk_avg, sw_avg = self.aggregate(q, k, [w, k, *self._direction_values(q, w, u)])
        return self.output(y, deferred), self._connection(q, k_avg, dk_avg, y, sw_avg, u)

    def then_connection(self, z: Tensor, direction, deferred: bool = False) -> tuple[Tensor | Affine, Tensor, Tensor]:
        """(F, u, C(z; u)) for a direction u = direction(F) that needs the attention output (R2):
        one attention evaluation, a second SDPA call re-aggregates [dk, s·w] with the same softmax
        (``deferred``: F as an Affine term, see :meth:`output`)."""
        q, k, w = self.project(z)
        y, k_avg = self.aggregate(q, k, [w, k])
        out = self.output(y, deferred)
        u = direction(out)
        dk_avg, sw_avg = self.aggregate(q, k, self._direction_values(q, w, u), new_softmax=False, slot="second")
        return out, u, self._connection(q, k_avg, dk_avg, y, sw_avg, u)


def connection_reference(attn: CausalSelfAttention, z: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """(F, C) by explicit loops over batch, head and row with the softmax row materialised (tests)."""
    q, k, w = attn.project(z)
    dq, dk = attn.directions(u)
    batch, heads, length, _ = q.shape
    s = u.square().sum(-1)
    y = torch.zeros_like(w)
    sw = torch.zeros_like(w)
    drift = z.new_zeros(batch, length)
    for b in range(batch):
        for r in range(heads):
            for i in range(length):
                scores = torch.stack([q[b, r, i] @ k[b, r, j] for j in range(i + 1)]) * attn.scale
                p = torch.softmax(scores, 0)
                for j in range(i + 1):
                    y[b, r, i] += p[j] * w[b, r, j]
                    sw[b, r, i] += p[j] * s[b, j] * w[b, r, j]
                    drift[b, i] += p[j] * attn.scale * (dq[b, r, i] @ k[b, r, j] + q[b, r, i] @ dk[b, r, j]) / heads
    f_linear = attn.output_linear(y)
    connection = drift.unsqueeze(-1) * u - 0.5 * (s.unsqueeze(-1) * f_linear + attn.output_linear(sw))
    return attn.c_proj(attn.merge_heads(y)), connection
