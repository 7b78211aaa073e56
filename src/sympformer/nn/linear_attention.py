r"""Signed causal prefix-linear attention and the ridge connection proxy of H1_L / R2_L (notes §3.4).

Per head (head dimension r), with q, k = W_Q z / r^{1/4}, W_K z / r^{1/4}, w = W_V z and 1-based i:

    F_i = W_O merge_h( (1/i) Σ_{j≤i} (q_i · k_j) w_j )          no softmax, no feature map

computed by chunks: within a chunk the masked scores, across chunks the prefix state Σ k_j w_jᵀ
(O(T·r²) work beside the chunk scores); streaming keeps the state and the count, one token at a time.

Ridge connection proxy (λ = 1e-3). For the prefix up to i, Q, K ∈ R^{i×r}, a direction U ∈ R^{i×d}
(v for H1_L, W for R2_L), dQ = U W_Qᵀ / r^{1/4}, dK = U W_Kᵀ / r^{1/4}, P_Q = (QᵀQ + λI)⁻¹,
P_K = (KᵀK + λI)⁻¹, Inv = K P_K P_Q Qᵀ (the ridge pseudo-inverse of the score matrix Q Kᵀ) and
dG = dQ Kᵀ + Q dKᵀ, the reference forms the i×i matrix

    dense = −dG · Inv · U + (U Uᵀ) · Invᵀ · Q · W_K / r^{1/4},     C_i = mean_h (last row of dense).

Its last row only needs prefix sums, so the fast path never forms an i×i (let alone T×T) matrix:
    c_i  = G_KK dq_i + G_dKKᵀ q_i = Σ_{j≤i} k_j (k_j·dq_i + dk_j·q_i)      (one prefix-linear pass)
    m_i  = Σ_{j≤i} (u_i · u_j) q_j                                       (one pass, shared by heads)
    b_i  = P_Q P_K c_i,   y_i = P_K P_Q m_i                               (batched solves per position)
    t1_i = −Σ_{j≤i} (b_i · q_j) u_j,   t2_i = W_Kᵀ G_QK y_i / r^{1/4},  G_QK y = Σ_{j≤i} q_j (k_j·y)
    C_i  = mean_h (t1_i + t2_i)
No r×r matrix is formed per position: the ridge inverses (P_K, P_Q) of the stacked prefix Grams
[G_KK, G_QQ] + λI are held as one inverse per chunk of 16 positions plus the chunk's rank-one
Woodbury updates (:func:`chunked_ridge_inverse`), so each solve is two small products and a masked
pass, and one such inverse serves both solves and the backward pass of one autograd Function
(:class:`_RidgeProxySolves`); the gradient reaches k and q through a reverse prefix-linear pass
instead of (T, r, r) gradient tensors. The alternatives are timed in benchmarks/kernels.py
(RESULTS.md, "Kernel choices"): per-position Grams with one batched LU factorisation and `lu_solve`
per solve (LAPACK's per-matrix calls: 3–5× the chunked float64 inverses and solves), or
`torch.linalg.solve` or Cholesky solves under autograd (the derivative of the factorisation is the
cost); the r = 16 reverse pass is fastest with short chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from sympformer.nn.attention import AttentionBase
from sympformer.nn.norm_sum import Affine

RIDGE = 1e-3
SOLVE_DTYPE = torch.float64  # of the ridge inverses and solves (see _RidgeProxySolves)
RIDGE_CHUNK = 16  # positions per Woodbury chunk of the ridge inverses (benchmarks/kernels.py)


def prefix_linear(
    q: Tensor, k: Tensor, v: Tensor, chunk: int, state: Tensor | None = None, reverse: bool = False
) -> tuple[Tensor, Tensor]:
    """out_i = q_i · (state + Σ_{j≤i} k_j v_jᵀ) for (B, H, T, ·) inputs, by chunks of ``chunk`` positions;
    returns (out, final state). ``reverse``: the suffix sums out_i = q_i · Σ_{j≥i} k_j v_jᵀ instead
    (no state; the final state is then the total).

    Under autograd the chunk scores are not kept for the backward pass but recomputed there
    (:class:`_PrefixLinear`): they are chunk/r times the size of q (8× for the attention's 128-long
    chunks). Nor are the states the chunks read, (n, r, r) per head: as large as q where the chunk is as
    long as r is wide (the v1 linear oracle's single 128-wide head). A layer keeps only q, k, v. Under
    torch.compile the plain form is traced and the compiler decides what to keep."""
    if reverse and state is not None:
        raise ValueError("a reverse (suffix) pass takes no state")
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, state))
    if not needs_grad or torch.compiler.is_compiling():
        out, total, _ = _prefix_linear_terms(q, k, v, chunk, state, reverse)
        return out, total
    device = q.device.type
    if not torch.is_autocast_enabled(device):
        return _PrefixLinear.apply(q, k, v, chunk, state, reverse)
    # as autocast would run the products: in its dtype (the casts' own backward returns the gradients
    # in the inputs' dtypes), with the Function's forward and backward in that one dtype
    dtype = torch.get_autocast_dtype(device)
    q, k, v, state = (None if x is None else x.to(dtype) for x in (q, k, v, state))
    with torch.autocast(device, enabled=False):
        return _PrefixLinear.apply(q, k, v, chunk, state, reverse)


def _chunked(x: Tensor, chunk: int) -> Tensor:
    """(B, H, T, ...) → (B, H, n, chunk, ...), zero-padded at the end of the positions (zero keys,
    values or Gram rows add nothing)."""
    b, h, t, *rest = x.shape
    pad = (-t) % chunk
    if pad:
        x = F.pad(x, (0, 0) * len(rest) + (0, pad))
    return x.reshape(b, h, (t + pad) // chunk, chunk, *rest)


def _unchunked(x: Tensor, length: int) -> Tensor:
    """(B, H, n, chunk, ...) → (B, H, length, ...): :func:`_chunked` undone, the padding dropped."""
    return x.flatten(2, 3)[:, :, :length]


def _masked_scores(qc: Tensor, kc: Tensor, reverse: bool, group: int = 1) -> Tensor:
    """q kᵀ within each chunk, masked to the keys a query sees (``group`` keys to a position)."""
    scores = qc @ kc.mT  # masked in place: a product saves its inputs, not its output
    if group == 1:
        return scores.triu_() if reverse else scores.tril_()
    seen = torch.ones(qc.shape[-2], qc.shape[-2], dtype=torch.bool, device=qc.device)
    seen = (seen.triu() if reverse else seen.tril()).repeat_interleave(group, dim=1)
    return scores.masked_fill_(~seen, 0)


def _prefix_linear_terms(q, k, v, chunk, state, reverse, group=1):
    """The forward pass of :func:`prefix_linear`: (out, total, the state each chunk's queries read).
    ``group``: k and v hold ``group`` entries per position, side by side (length T·group), and
    out_i = q_i · Σ_{j≤i} Σ_p k_jp v_jpᵀ (j ≥ i when ``reverse``): several key/value pairs at once."""
    t = q.shape[2]
    chunk = min(chunk, t)  # a short input (a generated token) is one chunk, not padded to a long one
    qc, kc, vc = _chunked(q, chunk), _chunked(k, chunk * group), _chunked(v, chunk * group)
    intra = _masked_scores(qc, kc, reverse, group) @ vc
    others, total = _states_read(kc, vc, state, reverse)
    return _unchunked(intra + qc @ others, t), total, others


def _states_read(kc: Tensor, vc: Tensor, state: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
    """(the state Σ k_j v_jᵀ each chunk's queries read, over the chunks before it (after it when
    ``reverse``) plus ``state``; the total state), from the chunked keys and values."""
    chunk_states = kc.mT @ vc
    through = torch.cumsum(chunk_states, dim=2)  # the state through each chunk
    if reverse:
        total = through[:, :, -1]
        return total.unsqueeze(2) - through, total  # exclusive: the state after each chunk
    others = through - chunk_states  # exclusive: the state before each chunk
    if state is not None:
        others = others + state.unsqueeze(2)
    return others, others[:, :, -1] + chunk_states[:, :, -1]


class _PrefixLinear(torch.autograd.Function):
    r""":func:`prefix_linear` keeping q, k, v and the incoming state for the backward pass, not the chunk
    scores nor the states the chunks read: the backward pass forms both again. Per chunk, with
    S = mask(q kᵀ), the states R read by the chunk and the gradient dO of the output (and dT of the
    final state):

        dq = mask(dO vᵀ) k + dO Rᵀ,     dk = mask(dO vᵀ)ᵀ q + v dCᵀ,     dv = Sᵀ dO + k dC,

    where dC_m = Σ of qᵀ dO over the chunks that read chunk m's state (later chunks; earlier ones for a
    suffix pass) plus dT, and d(state) = Σ_chunks qᵀ dO + dT."""

    @staticmethod
    def forward(ctx, q, k, v, chunk, state, reverse):
        out, total, _ = _prefix_linear_terms(q, k, v, chunk, state, reverse)
        ctx.save_for_backward(q, k, v, state)
        ctx.chunk, ctx.reverse = min(chunk, q.shape[2]), reverse
        return out, total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_total):
        q, k, v, state = ctx.saved_tensors
        t = q.shape[2]
        qc, kc, vc = (_chunked(x, ctx.chunk) for x in (q, k, v))
        others, _ = _states_read(kc, vc, state, ctx.reverse)  # recomputed
        if grad_out is None:
            grad_out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
        go = _chunked(grad_out.contiguous(), ctx.chunk)
        masked_grad = _masked_scores(go, vc, ctx.reverse)  # mask(dO vᵀ)
        scores = _masked_scores(qc, kc, ctx.reverse)  # recomputed
        read = qc.mT @ go  # each chunk's gradient into the state it reads
        through = torch.cumsum(read, dim=2)
        if ctx.reverse:  # chunk m's state is read by the chunks before it
            grad_states = through - read
        else:  # ... by the chunks after it
            grad_states = through[:, :, -1:] - through
        if grad_total is not None:
            grad_states = grad_states + grad_total.unsqueeze(2)
        grad_q = masked_grad @ kc + go @ others.mT
        grad_k = masked_grad.mT @ qc + vc @ grad_states.mT
        grad_v = scores.mT @ go + kc @ grad_states
        grad_state = None
        if state is not None and ctx.needs_input_grad[4]:
            grad_state = through[:, :, -1] + (grad_total if grad_total is not None else 0)
        grad_q, grad_k, grad_v = (_unchunked(g, t) for g in (grad_q, grad_k, grad_v))
        return grad_q, grad_k, grad_v, None, grad_state, None


def chunked_ridge_inverse(
    a: Tensor, ridge: float, state: Tensor | None = None, chunk: int = 16
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The inverses P_i = (A_i)⁻¹ of A_i = state + Σ_{j≤i} a_j a_jᵀ + λI at every position i of a
    (B, S, T, r) (S independent systems, say heads), in a form that never holds one r×r matrix per
    position.

    By chunks of c positions. Before a chunk (after position s) one batched LU inverse P_s = A_s⁻¹;
    within it the chunk's rows K (c×r) enter by Woodbury: with M = I + K P_s Kᵀ = R Rᵀ (Cholesky;
    M ⪰ I) and U = P_s Kᵀ R⁻ᵀ,

        P_{s+j} = P_s − Σ_{k≤j} u_k u_kᵀ,

    because the leading j×j block of the lower-triangular R factors the leading block of M. A solve
    is then one product with P_s and one masked pass within the chunk (:func:`apply_ridge_inverse`).
    Returns (P_s per chunk (B, S, n, r, r), Uᵀ per chunk (B, S, n, c, r), the last prefix Gram
    without the ridge (B, S, r, r), for the generation cache). The systems lie before the positions
    so that every chunk is contiguous: with the (…, T, m, r) layout this replaced, the chunk
    transposes' copies and strided products cost 22 % more in `_RidgeProxySolves` (one-off timing)."""
    rows = _chunked(a, min(chunk, a.shape[2]))  # K per chunk: (B, S, n, c, r)
    totals = rows.mT @ rows
    before = torch.cumsum(totals, dim=2) - totals  # the Gram before each chunk
    if state is not None:
        before = before + state.unsqueeze(2)
    last = before[:, :, -1] + totals[:, :, -1]
    before.diagonal(dim1=-2, dim2=-1).add_(ridge)
    start = torch.linalg.inv_ex(before)[0]  # LU with pivoting: no failure mode on an ill-conditioned A_s
    start = (start + start.mT) / 2
    rows_p = rows @ start  # K P_s
    small = rows_p @ rows.mT
    small.diagonal(dim1=-2, dim2=-1).add_(1.0)
    factor = torch.linalg.cholesky_ex(small)[0]
    updates = torch.linalg.solve_triangular(factor, rows_p, upper=False)  # Uᵀ = R⁻¹ K P_s
    return start, updates, last


def apply_ridge_inverse(start: Tensor, updates: Tensor, rhs: Tensor) -> Tensor:
    """P_i x_i at every position i of a (B, S, T, r) ``rhs``, from :func:`chunked_ridge_inverse`'s
    P_s and Uᵀ: x_i P_s − Σ_{k≤j} (x_i·u_k) u_kᵀ, with i the j-th position of its chunk."""
    x = _chunked(rhs, updates.shape[-2])  # (B, S, n, c, r)
    out = x @ start - (x @ updates.mT).tril_() @ updates
    return _unchunked(out, rhs.shape[2])


def swap_systems(x: Tensor) -> Tensor:
    """(B, 2H, …) with the K systems' heads first and the Q systems' after: the two halves exchanged."""
    return x.unflatten(1, (2, -1)).flip(1).flatten(1, 2)


class _RidgeProxySolves(torch.autograd.Function):
    r"""The ridge solves of the connection proxy at every position i, for a = [k, q] (B, 2H, T, r), the
    K systems' heads first (k and q are kept for the backward pass, which the attention's own pass keeps
    anyway, and joined again there):

        A_i = [G_KK, G_QQ]_i + λI = state + Σ_{j≤i} a_j a_jᵀ + λI     (prefix Grams)
        X₁ = A⁻¹ [c, m] = [P_K c, P_Q m],   X₂ = A⁻¹ swap(X₁) = [P_K P_Q m, P_Q P_K c]

    One chunked inverse (:func:`chunked_ridge_inverse`) serves both solves and the backward pass
    (A = Aᵀ). Backward, with Ȳ₂ = A⁻¹ X̄₂ and Ȳ₁ = A⁻¹ (X̄₁ + swap(Ȳ₂)):  c̄, m̄ = Ȳ₁ and
    Ā_i = −(Ȳ₂ X₂ᵀ + Ȳ₁ X₁ᵀ)_i, whose effect on a_j, ā_j = Σ_{i≥j} (Ā_i + Ā_iᵀ) a_j, is a reverse
    prefix-linear pass with four key/value pairs, so no (T, r, r) gradient is ever formed. The
    inverses and solves run in float64 (autocast off): P_s − Σ u uᵀ cancels when the chunk's tokens
    dominate the Gram before it (the first chunk, where P_0 = I/λ), which costs float32 6–14×
    the error of a per-position LU solve (a one-off comparison), while float64 stays at float32's rounding of the result
    (tests/nn/test_linear_attention.py). Returns (X₂ in a's dtype, the last prefix Gram in float64 for
    the cache)."""

    @staticmethod
    def forward(ctx, k, q, rhs, ridge, state, chunk):
        with torch.autocast(k.device.type, enabled=False):
            a = torch.cat([k, q], 1).to(SOLVE_DTYPE)
            start, updates, last = chunked_ridge_inverse(a, ridge, state, RIDGE_CHUNK)
            first = apply_ridge_inverse(start, updates, rhs.to(SOLVE_DTYPE))
            second = apply_ridge_inverse(start, updates, swap_systems(first))
        first, second = first.to(rhs.dtype), second.to(rhs.dtype)
        ctx.save_for_backward(k, q, start, updates, first, second)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(last)
        return second, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_second, _):
        k, q, start, updates, first, second = ctx.saved_tensors
        a = torch.cat([k, q], 1).to(first.dtype)
        with torch.autocast(a.device.type, enabled=False):
            bar2 = apply_ridge_inverse(start, updates, grad_second.to(SOLVE_DTYPE))
            bar1 = apply_ridge_inverse(start, updates, swap_systems(bar2))
            bar2, bar1 = bar2.to(a.dtype), bar1.to(a.dtype)
            # ā_j = −Σ_{i≥j} [Ȳ₂ (X₂·a_j) + X₂ (Ȳ₂·a_j) + Ȳ₁ (X₁·a_j) + X₁ (Ȳ₁·a_j)]_i: one suffix pass
            # with the four key/value pairs side by side at each position
            b, systems, t, r = a.shape
            pairs = lambda *ts: torch.stack(ts, 3).reshape(b, systems, t * 4, r)
            keys, values = pairs(second, bar2, first, bar1), pairs(bar2, second, bar1, first)
            # chunks of 16 positions (64 keys): the fastest of 8–64 (benchmarks/kernels.py)
            grad_a, _, _ = _prefix_linear_terms(a, keys, values, min(ctx.chunk, 16), None, True, group=4)
        grad_k, grad_q = (-g for g in grad_a.split(k.shape[1], 1))
        return grad_k.to(k.dtype), grad_q.to(q.dtype), bar1, None, None, None


class PrefixLinearAttention(AttentionBase):
    """Drop-in for :class:`~sympformer.nn.attention.CausalSelfAttention` with the signed prefix-linear
    attention: same parameters, same methods (forward, with_connection, then_connection), counters,
    and a generation cache holding the prefix states instead of keys."""

    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float, chunk: int = 512) -> None:
        super().__init__(n_embd, n_head, bias, dropout)
        self.chunk = chunk
        self.qk_scale = self.head_dim**-0.25

    def _state(self, name: str) -> Tensor | None:
        return None if self.cache is None else self.cache.get(name)

    def _keep(self, name: str, value: Tensor) -> None:
        if self.cache is not None:
            self.cache[name] = value

    def _positions(self, length: int, like: Tensor) -> Tensor:
        """1-based absolute positions i of the new tokens, shaped to divide (B, H, T, ·)."""
        start = 0 if self.cache is None else int(self.cache.get("count", 0))
        return torch.arange(start + 1, start + length + 1, device=like.device, dtype=like.dtype)[:, None]

    def project(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, w = self.c_attn(z).split(self.c_attn.out_features // 3, dim=-1)
        return self.split_heads(q) * self.qk_scale, self.split_heads(k) * self.qk_scale, self.split_heads(w)

    def _attend(self, q: Tensor, k: Tensor, w: Tensor) -> Tensor:
        """(1/i) Σ_{j≤i} (q_i·k_j) w_j, continuing the cached prefix state."""
        out, state = prefix_linear(q, k, w, self.chunk, self._state("kw"))
        self._keep("kw", state)
        self.count(evaluations=1, kernel_calls=1)
        return out / self._positions(q.shape[-2], out)

    def _finish(self, length: int) -> None:
        if self.cache is not None:
            self.cache["count"] = int(self.cache.get("count", 0)) + length

    def forward(self, z: Tensor, deferred: bool = False) -> Tensor:
        """The attention output (``deferred``: as an Affine term, see :meth:`AttentionBase.output`)."""
        q, k, w = self.project(z)
        out = self.output(self._attend(q, k, w), deferred)
        self._finish(z.shape[1])
        return out

    def _connection(self, q: Tensor, k: Tensor, u: Tensor) -> Tensor:
        """C(z; u) by prefix-linear passes and per-position batched solves (module docstring)."""
        dq, dk = self.directions(u)
        heads, r = q.shape[1], q.shape[-1]

        def prefix(name, query, key, value):
            out, state = prefix_linear(query, key, value, self.chunk, self._state(name))
            self._keep(name, state)
            self.count(kernel_calls=1)
            return out

        # c_i = G_KK dq_i + G_dKKᵀ q_i = Σ_{j≤i} k_j (k_j·dq_i + dk_j·q_i): one pass, query [dq, q], key [k, dk]
        c = prefix("c", torch.cat([dq, q], -1), torch.cat([k, dk], -1), k)
        # m_i = Σ_{j≤i} (u_i·u_j) q_j: scores shared by the heads, one pass on the head-merged values
        merged_q = self.merge_heads(q).unsqueeze(1)  # (B, 1, T, C): kept once, for this pass and t1's
        m = self.split_heads(prefix("m", u.unsqueeze(1), u.unsqueeze(1), merged_q).squeeze(1))
        # b_i = P_Q P_K c_i and P_K P_Q m_i: the ridge systems of the prefix Grams [G_KK, G_QQ] + λI
        solve_dtype = torch.promote_types(q.dtype, torch.float32)  # the solves themselves run in float64
        rhs = torch.cat([c, m], 1).to(solve_dtype)  # (B, 2H, T, r)
        second, last_gram = _RidgeProxySolves.apply(k, q, rhs, RIDGE, self._state("grams"), self.chunk)
        self._keep("grams", last_gram)
        pkpq_m, b = second.split(heads, 1)
        # t2_i = W_Kᵀ G_QK P_K P_Q m_i / r^{1/4}, with G_QK y = Σ_{j≤i} q_j (k_j·y)
        inner = prefix("qk", pkpq_m, k, q)
        w_k = self.projection_weight("k").view(heads, r, -1)  # (H, r, d)
        t2 = torch.einsum("bhtr,hrd->btd", inner, w_k) * (self.qk_scale / heads)
        # mean_h t1_i = −Σ_{j≤i} (mean_h b_i^h·q_j^h) u_j: one pass on head-merged queries and keys
        t1 = prefix("bq", self.merge_heads(b).unsqueeze(1), merged_q, u.unsqueeze(1))
        return t2 - t1.squeeze(1) / heads

    def with_connection(self, z: Tensor, u: Tensor, deferred: bool = False) -> tuple[Tensor | Affine, Tensor]:
        q, k, w = self.project(z)
        out = self.output(self._attend(q, k, w), deferred)
        connection = self._connection(q, k, u)
        self._finish(z.shape[1])
        return out, connection

    def then_connection(self, z: Tensor, direction, deferred: bool = False) -> tuple[Tensor | Affine, Tensor, Tensor]:
        q, k, w = self.project(z)
        out = self.output(self._attend(q, k, w), deferred)
        u = direction(out)
        connection = self._connection(q, k, u)
        self._finish(z.shape[1])
        return out, u, connection


def linear_connection_reference(attn: PrefixLinearAttention, z: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """(F, C) by the dense per-prefix formulas of the module docstring (i×i matrices; tests only)."""
    q, k, w = attn.project(z)
    dq, dk = attn.directions(u)
    batch, heads, length, r = q.shape
    n = attn.c_attn.out_features // 3
    w_k = attn.c_attn.weight[n : 2 * n].view(heads, r, -1)
    eye = torch.eye(r, dtype=q.dtype)
    y = torch.zeros_like(w)
    connection = torch.zeros_like(u)
    for bi in range(batch):
        for h in range(heads):
            for i in range(length):
                Q, K, U = q[bi, h, : i + 1], k[bi, h, : i + 1], u[bi, : i + 1]
                dQ, dK = dq[bi, h, : i + 1], dk[bi, h, : i + 1]
                y[bi, h, i] = ((Q @ K.T)[-1] @ w[bi, h, : i + 1]) / (i + 1)
                inv = K @ torch.linalg.inv(K.T @ K + RIDGE * eye) @ torch.linalg.inv(Q.T @ Q + RIDGE * eye) @ Q.T
                dG = dQ @ K.T + Q @ dK.T
                dense = -dG @ inv @ U + (U @ U.T) @ inv.T @ Q @ w_k[h] * attn.qk_scale
                connection[bi, i] += dense[-1] / heads
    return attn.c_proj(attn.merge_heads(y)), connection
