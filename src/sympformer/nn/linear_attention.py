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
Only G_KK and G_QQ are formed at every position (r×r each, by chunks: :func:`prefix_grams`), for the
solves, in one autograd Function (:class:`_RidgeProxySolves`): one batched LU factorisation of the
stacked [G_KK, G_QQ] + λI serves both solves and the backward pass, and the gradient reaches k and q
through a reverse prefix-linear pass instead of (T, r, r) gradient tensors. The alternatives are
timed in benchmarks/kernels.py (RESULTS.md, "Kernel choices"): two `torch.linalg.solve` calls, or
`lu_factor` + `lu_solve`, or Cholesky solves under autograd all take longer forward + backward (the
derivative of the factorisation is the cost), and the r = 16 reverse pass is fastest with short chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from sympformer.nn.attention import AttentionBase

RIDGE = 1e-3


def prefix_linear(q: Tensor, k: Tensor, v: Tensor, chunk: int, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """out_i = q_i · (state + Σ_{j≤i} k_j v_jᵀ) for (B, H, T, ·) inputs, by chunks of ``chunk`` positions;
    returns (out, final state)."""
    b, h, t, dk = q.shape
    chunk = min(chunk, t)  # a short input (a generated token) is one chunk, not padded to a long one
    pad = (-t) % chunk
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    n = (t + pad) // chunk
    qc, kc, vc = (x.reshape(b, h, n, chunk, x.shape[-1]) for x in (q, k, v))
    intra = torch.tril(qc @ kc.mT) @ vc
    chunk_states = kc.mT @ vc
    prefix = torch.cumsum(chunk_states, dim=2) - chunk_states  # exclusive: the state before each chunk
    if state is not None:
        prefix = prefix + state.unsqueeze(2)
    out = (intra + qc @ prefix).reshape(b, h, n * chunk, -1)[:, :, :t]
    return out, prefix[:, :, -1] + chunk_states[:, :, -1]


def prefix_grams(a: Tensor, state: Tensor | None = None, chunk: int = 32) -> Tensor:
    """state + Σ_{j≤i} a_j a_jᵀ at every position i, for a (B, H, T, m, r): (B, H, T, m, r, r).

    By chunks of positions: within a chunk one product with a lower-triangular matrix of ones, across
    chunks a running sum of the chunk totals, written straight into the layout the factorisation
    reads (a running sum along the positions of the (T, r, r) layout is 2–4× slower, and one along
    the last dimension needs a layout copy; benchmarks/kernels.py)."""
    b, h, t, m, r = a.shape
    chunk = min(chunk, t)
    pad = (-t) % chunk
    if pad:
        a = F.pad(a, (0, 0, 0, 0, 0, pad))
    n = (t + pad) // chunk
    outer = (a.unsqueeze(-1) * a.unsqueeze(-2)).reshape(b, h, n, chunk, m * r * r)
    ones = torch.ones(chunk, chunk, dtype=a.dtype, device=a.device).tril_()
    with torch.autocast(a.device.type, enabled=False):  # the sums stay in a's precision under autocast
        within = ones @ outer
    totals = within[:, :, :, -1:]
    before = torch.cumsum(totals, dim=2) - totals
    if state is not None:
        before = before + state.reshape(b, h, 1, 1, m * r * r)
    return within.add_(before).reshape(b, h, n * chunk, m, r, r)[:, :, :t]


class _RidgeProxySolves(torch.autograd.Function):
    r"""The ridge solves of the connection proxy at every position i, for a = [k, q] (B, H, T, 2, r):

        A_i = [G_KK, G_QQ]_i + λI = state + Σ_{j≤i} a_j a_jᵀ + λI     (prefix Grams)
        X₁ = A⁻¹ [c, m] = [P_K c, P_Q m],   X₂ = A⁻¹ swap(X₁) = [P_K P_Q m, P_Q P_K c]

    One LU factorisation serves both solves and the backward pass (A = Aᵀ). Backward, with
    Ȳ₂ = A⁻¹ X̄₂ and Ȳ₁ = A⁻¹ (X̄₁ + swap(Ȳ₂)):  c̄, m̄ = Ȳ₁ and Ā_i = −(Ȳ₂ X₂ᵀ + Ȳ₁ X₁ᵀ)_i, whose effect
    on a_j, ā_j = Σ_{i≥j} (Ā_i + Ā_iᵀ) a_j, is a reverse prefix-linear pass with four key/value pairs,
    so no (T, r, r) gradient is ever formed. Returns (X₂, the last prefix Gram for the cache)."""

    @staticmethod
    def forward(ctx, a, rhs, ridge, state, chunk):
        grams = prefix_grams(a, state)
        last = grams[:, :, -1].clone()  # the cache's state: the prefix Gram without the ridge
        grams.diagonal(dim1=-2, dim2=-1).add_(ridge)
        lu, pivots, _ = torch.linalg.lu_factor_ex(grams)  # G + λI is positive definite: nothing to check
        first = torch.linalg.lu_solve(lu, pivots, rhs.unsqueeze(-1)).squeeze(-1)
        second = torch.linalg.lu_solve(lu, pivots, first.flip(-2).unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(a, lu, pivots, first, second)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(last)
        return second, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_second, _):
        a, lu, pivots, first, second = ctx.saved_tensors
        solve = lambda g: torch.linalg.lu_solve(lu, pivots, g.unsqueeze(-1)).squeeze(-1)
        bar2 = solve(grad_second)
        bar1 = solve(bar2.flip(-2))
        # ā_j = −Σ_{i≥j} [Ȳ₂ (X₂·a_j) + X₂ (Ȳ₂·a_j) + Ȳ₁ (X₁·a_j) + X₁ (Ȳ₁·a_j)]_i: reverse the positions,
        # run one prefix-linear pass with the four pairs as heads, and reverse back
        b, h, t, two, r = a.shape
        heads = lambda *ts: torch.stack(ts, 3).flip(2).permute(0, 1, 3, 4, 2, 5).reshape(b, -1, t, r)
        query = heads(a, a, a, a)
        keys, values = heads(second, bar2, first, bar1), heads(bar2, second, bar1, first)
        out, _ = prefix_linear(query, keys, values, min(ctx.chunk, 32))  # r = 16 features: short chunks
        grad_a = out.reshape(b, h, 4, two, t, r).sum(2).permute(0, 1, 3, 2, 4).flip(2)
        return -grad_a, bar1, None, None, None


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
        m = self.split_heads(prefix("m", u.unsqueeze(1), u.unsqueeze(1), self.merge_heads(q).unsqueeze(1)).squeeze(1))
        # b_i = P_Q P_K c_i and P_K P_Q m_i: the ridge systems of the prefix Grams [G_KK, G_QQ] + λI
        solve_dtype = torch.promote_types(q.dtype, torch.float32)  # LU has no half-precision kernels
        kq, rhs = torch.stack([k, q], 3).to(solve_dtype), torch.stack([c, m], 3).to(solve_dtype)
        second, last_gram = _RidgeProxySolves.apply(kq, rhs, RIDGE, self._state("grams"), self.chunk)
        self._keep("grams", last_gram)
        pkpq_m, b = second.unbind(3)
        # t2_i = W_Kᵀ G_QK P_K P_Q m_i / r^{1/4}, with G_QK y = Σ_{j≤i} q_j (k_j·y)
        inner = prefix("qk", pkpq_m, k, q)
        n = self.c_attn.out_features // 3
        w_k = self.c_attn.weight[n : 2 * n].view(heads, r, -1)  # (H, r, d)
        t2 = torch.einsum("bhtr,hrd->btd", inner, w_k) * (self.qk_scale / heads)
        # mean_h t1_i = −Σ_{j≤i} (mean_h b_i^h·q_j^h) u_j: one pass on head-merged queries and keys
        t1 = prefix("bq", self.merge_heads(b).unsqueeze(1), self.merge_heads(q).unsqueeze(1) / heads, u.unsqueeze(1))
        return t2 - t1.squeeze(1)

    def with_connection(self, z: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        q, k, w = self.project(z)
        out = self.output(self._attend(q, k, w))
        connection = self._connection(q, k, u)
        self._finish(z.shape[1])
        return out, connection

    def then_connection(self, z: Tensor, direction) -> tuple[Tensor, Tensor, Tensor]:
        q, k, w = self.project(z)
        out = self.output(self._attend(q, k, w))
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
