r"""Attention blocks with the signature ``block(x, v) -> (x, v)``: x the token positions (the residual
stream), v their velocities. B passes v through untouched.

Momentum blocks (notes §2.5–2.6) share one LN_v per block and the MLP half-step

    f  = MLP(LN_M(x_a + μ₂ V_a)),   v⁺ = LN_v(β₂ V_a + g₂ f),   x⁺ = x_a + v⁺,

after an attention half-step that differs per block. W = β₁ v + g₁ F with F the attention output;
μ, β = sigmoid scalars (init 0.9), γ = softplus (init 1), g = γ + gain floor (1e-6); η = 1, or
learned per layer as exp(raw) starting at exactly 1.

Memory: every LayerNorm of a weighted sum (LN_A's look-ahead base, LN_v of a combination, LN_M's
base) is :func:`layer_norm_of_sum`, which rebuilds the sum in the backward pass, so autograd keeps
only the streams it combines (x, v, F, C, V_a, f), most of which are kept anyway, instead of every
intermediate sum.
"""

from __future__ import annotations

from torch import Tensor, nn

from sympformer.nn import recompute
from sympformer.nn.attention import CausalSelfAttention
from sympformer.nn.layers import MLP, ConstrainedScalar, LayerNorm
from sympformer.nn.linear_attention import PrefixLinearAttention
from sympformer.nn.norm_sum import (
    Affine,
    Stream,
    layer_norm_of_sum,
    rebuilt_layer_norm_of_sum,
    stream_value,
    weighted_sum,
)


def make_attention(config) -> nn.Module:
    """Softmax attention, or the signed prefix-linear attention for the *_L architectures."""
    if config.attention_kind == "linear":
        return PrefixLinearAttention(config.n_embd, config.n_head, config.bias, config.dropout, config.linear_chunk)
    return CausalSelfAttention(config.n_embd, config.n_head, config.bias, config.dropout)


class B(nn.Module):
    r"""Pre-LN GPT block (the classical baseline: one Euler step of the attention flow).

    x ← x + Attn(LN_A(x));   x ← x + MLP(LN_M(x));   v unchanged
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.ln_a = LayerNorm(config.n_embd, config.bias)
        self.attn = make_attention(config)
        self.ln_m = LayerNorm(config.n_embd, config.bias)
        self.mlp = MLP(config.n_embd, config.bias, config.dropout)

    def forward(self, x: Tensor, v: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x = x + self.attn(self.ln_a(x))
        return x + self.mlp(self.ln_m(x)), v


class MomentumBlock(nn.Module):
    """Shared parts of the momentum blocks: LN_v, the scalars and the MLP half-step."""

    lookahead = False  # attention base LN_A(x + μ₁ v) instead of LN_A(x)
    connection = False

    def __init__(self, config) -> None:
        super().__init__()
        n, bias = config.n_embd, config.bias
        self.gain_floor = config.gain_floor
        self.ln_a = LayerNorm(n, bias)
        self.attn = make_attention(config)
        self.ln_m = LayerNorm(n, bias)
        self.mlp = MLP(n, bias, config.dropout)
        self.ln_v = LayerNorm(n, bias)
        if self.lookahead:
            self.mu1 = ConstrainedScalar(0.9, "unit")
        self.beta1 = ConstrainedScalar(0.9, "unit")
        self.gamma1 = ConstrainedScalar(1.0, "pos")
        self.mu2 = ConstrainedScalar(0.9, "unit")
        self.beta2 = ConstrainedScalar(0.9, "unit")
        self.gamma2 = ConstrainedScalar(1.0, "pos")
        if self.connection and config.connection_strength == "learned":
            self.eta = ConstrainedScalar(1.0, "exp")

    def strength(self):
        """η: exp(raw) when learned, else the fixed 1."""
        return self.eta() if hasattr(self, "eta") else 1.0

    def attention_base(self, x: Tensor, v: Tensor) -> Tensor:
        if self.lookahead:
            return layer_norm_of_sum(self.ln_a, (1, x), (self.mu1(), v))
        return self.ln_a(x)

    def gain1(self) -> Tensor:
        """g₁ = γ₁ + gain floor."""
        return self.gamma1() + self.gain_floor

    def momentum(self, v: Tensor, attention_out: Tensor | Affine) -> Tensor:
        """W = β₁ v + g₁ F (F may be an Affine term: rebuilt in the backward pass, not kept)."""
        return weighted_sum((self.beta1(), v), (self.gain1(), attention_out))

    def attention_half_step(self, x: Tensor, v: Tensor) -> tuple[Stream, Stream]:
        """(x_a − x, V_a): the position increment and the velocity after the attention half-step (tensors,
        or streams that the LayerNorms below rebuild instead of keeping)."""
        raise NotImplementedError

    def forward(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        increment, v_a = self.attention_half_step(x, v)
        # x_a = x + increment is formed twice (here and in the result) on purpose: passing x_a to the
        # LayerNorm would keep one more (B, T, C) tensor, x and the increment are kept anyway
        base = layer_norm_of_sum(self.ln_m, (1, x), (1, increment), (self.mu2(), v_a))
        f = self.mlp(base)
        v_new = layer_norm_of_sum(self.ln_v, (self.beta2(), v_a), (self.gamma2() + self.gain_floor, f))
        return x + stream_value(increment) + v_new, v_new


class H0(MomentumBlock):
    r"""Normalised heavy ball (v4 `H0`): the YuriiFormer block without the attention look-ahead.

    F = Attn(LN_A(x));   V_a = LN_v(β₁ v + g₁ F);   x_a = x + V_a;   then the MLP half-step
    """

    def attention_half_step(self, x, v):
        f = self.attn(self.attention_base(x, v), deferred=True)  # F is rebuilt in the backward pass (C × C)
        v_a = layer_norm_of_sum(self.ln_v, (self.beta1(), v), (self.gain1(), f))
        return v_a, v_a


class Y(H0):
    r"""YuriiFormer Lie–Trotter Nesterov block (Zimin, Polyanskiy, Rigollet; notes §2.5).

    F = Attn(LN_A(x + μ₁ v));   V_a = LN_v(β₁ v + g₁ F);   x_a = x + V_a;   then the MLP half-step
    """

    lookahead = True


class H1(MomentumBlock):
    r"""Connection-corrected heavy ball (v4 `H1`): the velocity is transported by the contracted
    Levi-Civita connection of the attention metric along the incoming velocity (notes §2.6).

        z = LN_A(x);   F, C = Attn(z), C(z; v)   (one SDPA call)
        V_a = LN_v(β₁ v + g₁ F − η C);   x_a = x + V_a;   then the MLP half-step
    """

    connection = True

    def attention_half_step(self, x, v):
        f, c = self.attn.with_connection(self.attention_base(x, v), v, deferred=True)  # F rebuilt in the backward
        v_a = layer_norm_of_sum(self.ln_v, (self.beta1(), v), (self.gain1(), f), (-self.strength(), c))
        return v_a, v_a


class R2(MomentumBlock):
    r"""Second-order connection correction (v4 `R2`): C evaluated along the new momentum W.

    z = LN_A(x);   F = Attn(z);   W = β₁ v + g₁ F;   C = C(z; W)   (same softmax, one more SDPA pass)
    V_a = LN_v(W − η C);   x_a = x + LN_v(W − ½ η C);   then the MLP half-step

    With large activations under autograd (eager, outside autocast, blocks not checkpointed), V_a and the
    increment reach LN_M and the MLP half-step's LN_v as :class:`Rebuilt` streams: those keep their recipe
    (W and C, kept anyway) and normalise W and C again when their backward passes read them, instead of
    keeping two (B, T, C) tensors a layer, which R2 had beyond H1 (whose increment is V_a).
    """

    connection = True

    def __init__(self, config) -> None:
        super().__init__(config)
        self.checkpointed = config.activation_checkpointing  # the whole block is recomputed in the backward pass

    def attention_half_step(self, x, v):
        # F is W's term only: deferred, it is rebuilt from the attention average in the backward pass
        _, w, c = self.attn.then_connection(self.attention_base(x, v), lambda f: self.momentum(v, f), deferred=True)
        eta = self.strength()
        # not in a block recomputed as a whole: there the recipe would keep W and C alive
        rebuild = recompute.rebuilds(w) and not self.checkpointed
        normalised = rebuilt_layer_norm_of_sum if rebuild else layer_norm_of_sum
        return normalised(self.ln_v, (1, w), (-0.5 * eta, c)), normalised(self.ln_v, (1, w), (-eta, c))


class H1_LA(H1):
    r"""H1 with the attention look-ahead: z = LN_A(x + μ₁ v); C(z; v) along the raw velocity v.

    V_a = LN_v(β₁ v + g₁ F − η C(z; v));   x_a = x + V_a;   then the MLP half-step
    """

    lookahead = True


class R2_LA(R2):
    r"""R2 with the attention look-ahead: z = LN_A(x + μ₁ v); C(z; W) along W = β₁ v + g₁ F.

    V_a = LN_v(W − η C);   x_a = x + LN_v(W − ½ η C);   then the MLP half-step
    """

    lookahead = True


BLOCKS: dict[str, type[nn.Module]] = {
    "B": B,
    "Y": Y,
    "H0": H0,
    "H1": H1,
    "R2": R2,
    "H1_LA": H1_LA,
    "R2_LA": R2_LA,
}
