r"""SympFormer v1 blocks: the damped Hamiltonian attention dynamics discretised by the schemes of
:mod:`sympformer.integrators` (the same code the particle lab runs), with a learned oracle.

Per layer k, with the stream X, the momentum P, learned step sizes h_X, h_P (softplus), the layer
time t_k (t_0 > 0, t_{k+1} = t_k + h_P, a detached float) and the damping schedule η:

    (X, P) ← scheme.step(oracle, X, P, t_k, h_P, damping)     one oracle evaluation
    P ← LN_p(P)                                               (momentum LayerNorm, placement "end")
    then the MLP substep (default: the Nesterov velocity stream
        v ← LN_v(β v + γ MLP(LN_M(X + μ v))),  X ← X + v,  with v = 0 before the first layer)

The oracle is evaluated at (LN(X + μ_la P) or LN(X), P) and returns F, G and the velocity map; its
velocity is multiplied by h_X / h_P, so that a scheme stepping with h_P moves X by h_X F
(separate position and momentum step sizes as an oracle rescaling). Schemes:

    v1_fe            forward Euler                 X⁺ = X + h_X F(X, P),  P⁺ = P + h_P (G − α P)
    v1_pe            presymplectic Euler            P⁺ = σ (P + h_P G),    X⁺ = X + h_X K P⁺
    v1_exp_pe        exponential Euler              P⁺ = σ P + h_P φ₁(Δη) G,  X⁺ = X + h_X K P⁺
    v1_halfdamp_pe   half-damped (Strang) Euler     exact half-step friction around a kick–drift
    v1_ab2           variable-step AB2 on (F, G − α P), previous right-hand side from the layer below
    v1_etd_ab2       ETD-AB2 in Π = e^{η} P, drift with the new momentum
    v1_doubling      explicit 2nd-order doubling integrator in Π with coupling ξ (4 oracle calls)
    v1_strang        exact half-step friction around the doubling step (4 oracle calls)
    v1_lin_*         the same on the prefix-linear oracle
    v1_global_euler  forward Euler on the leaky whole-sequence force (research only)

In the last layer the momentum is not read any more: its LN_p is not built, and for the schemes that
drift with the old momentum (fe, ab2, global) neither is the force head, so every parameter of every
configuration gets a gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sympformer.integrators import (
    AdamsBashforth2,
    ConformalStrang,
    Damping,
    Doubling,
    ETDAdamsBashforth2,
    Evaluation,
    ExponentialEuler,
    ForwardEuler,
    KickDrift,
)
from sympformer.nn.layers import MLP, ConstrainedScalar, LayerNorm
from sympformer.nn.norm_sum import layer_norm_of_sum
from sympformer.nn.v1_oracles import CausalPrefixForce, GlobalHamiltonianForce, PrefixLinearForce

SCHEMES = {
    "fe": ForwardEuler(),
    "pe": KickDrift(),
    "exp_pe": ExponentialEuler("new"),
    "halfdamp_pe": ConformalStrang(KickDrift()),
    "ab2": AdamsBashforth2(),
    "etd_ab2": ETDAdamsBashforth2("new"),
}
MULTI_CALL = ("doubling", "strang")  # four oracle calls per layer (the v1 `presymp`, `presymp_strang`)
OLD_MOMENTUM_DRIFT = ("fe", "ab2")  # X⁺ does not read P⁺
V1_ARCHS: dict[str, tuple[str, str]] = {  # arch: (oracle, scheme)
    **{f"v1_{name}": ("softmax", name) for name in (*SCHEMES, *MULTI_CALL)},
    **{f"v1_lin_{name}": ("linear", name) for name in SCHEMES},
    "v1_global_euler": ("global", "fe"),
}
NONCAUSAL_ARCHS = ("v1_global_euler",)
MLP_VARIANTS = ("nesterov", "attn_vel", "plain", "none")
LNP_MODES = ("end", "none")


def _no_velocity_map(p_new: Tensor) -> Tensor:
    raise RuntimeError("the multi-call schemes drift with the oracle's velocity, not with its velocity map")


class V1State(NamedTuple):
    """What flows between v1 blocks beside X: momentum, MLP velocity, multistep memory, layer time."""

    p: Tensor
    mlp_v: Tensor | None
    memory: Any
    t: Tensor  # the layer time, detached (0-d)


class V1Block(nn.Module):
    """One v1 layer (module docstring): ``block(x, state) -> (x, state)``."""

    def __init__(self, config, last: bool = False) -> None:
        super().__init__()
        oracle_kind, scheme_name = V1_ARCHS[config.arch]
        if scheme_name == "doubling":
            self.scheme = Doubling(config.v1_xi)
        elif scheme_name == "strang":
            self.scheme = ConformalStrang(Doubling(config.v1_xi))
        else:
            self.scheme = SCHEMES[scheme_name]
        self.need_force = not (last and scheme_name in OLD_MOMENTUM_DRIFT)
        # under activation checkpointing, the four oracle calls of a multi-call layer are recomputed one
        # by one too, so that the block's recomputation never holds all four calls' activations
        self.recompute_calls = config.activation_checkpointing and scheme_name in MULTI_CALL
        n, bias = config.n_embd, config.bias
        self.ln_x = LayerNorm(n, bias)
        if oracle_kind == "softmax":
            self.attn = CausalPrefixForce(n, config.n_head, bias)
        elif oracle_kind == "linear":
            self.attn = PrefixLinearForce(n, config.linear_chunk)
        else:
            self.attn = GlobalHamiltonianForce(n, config.n_head, bias)
        if not self.need_force:
            for name in ("c_proj", "c_V"):  # the force head cannot reach the output here
                if hasattr(self.attn, name):
                    setattr(self.attn, name, None)
        self.h_x = ConstrainedScalar(config.v1_h0, "pos")
        self.h_p = ConstrainedScalar(config.v1_h0, "pos")
        mode = config.v1_damping
        self.damping_mode, self.t0, self.eta_clip = mode, config.v1_t0, config.v1_eta_clip
        learn = config.v1_learn_damping and self.need_force  # friction only acts on a momentum that is read
        if mode in ("log", "loglin"):
            self.c_log = ConstrainedScalar(config.v1_c_log, "pos") if learn else None
        if mode in ("linear", "loglin"):
            self.c_lin = ConstrainedScalar(config.v1_c_lin, "pos") if learn else None
        self.fixed = (config.v1_c_log, config.v1_c_lin)
        if config.v1_lookahead:
            self.mu_la = ConstrainedScalar(0.001, "unit")
        self.ln_p = LayerNorm(n, bias) if config.v1_lnp == "end" and not last else None
        self.mlp_variant = config.v1_mlp
        if self.mlp_variant != "none":
            self.ln_m = LayerNorm(n, bias)
            self.mlp = MLP(n, bias, config.dropout)
        if self.mlp_variant in ("nesterov", "attn_vel"):
            self.mu = ConstrainedScalar(0.9, "unit")
            self.gamma = ConstrainedScalar(1.0, "pos")
        if self.mlp_variant == "nesterov":
            self.beta = ConstrainedScalar(0.9, "unit")
            self.ln_v = LayerNorm(n, bias)

    def damping(self) -> Damping:
        c_log = self.c_log() if getattr(self, "c_log", None) is not None else self.fixed[0]
        c_lin = self.c_lin() if getattr(self, "c_lin", None) is not None else self.fixed[1]
        return Damping(self.damping_mode, c_log=c_log, c_lin=c_lin, t0=self.t0, eta_clip=self.eta_clip)

    def oracle(self, ratio: Tensor):
        """The learned oracle in the integrator contract, velocity scaled by h_X / h_P."""

        def attend(base: Tensor, p: Tensor) -> Evaluation:
            return self.attn.evaluate(self.ln_x(base), p, self.need_force, velocity_scale=ratio)

        def velocity_and_force(base: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:  # what a checkpoint returns
            ev = attend(base, p)
            return ev.velocity, ev.force

        def evaluate(x: Tensor, p: Tensor) -> Evaluation:
            base = x + self.mu_la() * p if hasattr(self, "mu_la") else x
            # (not under torch.compile, which cannot yet nest this checkpoint inside the block's)
            if self.recompute_calls and torch.is_grad_enabled() and not torch.compiler.is_compiling():
                velocity, force = checkpoint(velocity_and_force, base, p, use_reentrant=False)
                return Evaluation(velocity, force, _no_velocity_map)
            return attend(base, p)

        return evaluate

    def mlp_substep(self, x_before: Tensor, x: Tensor, h_x: Tensor, v: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.mlp_variant == "none":
            return x, v
        if self.mlp_variant == "plain":
            return x + self.mlp(self.ln_m(x)), v
        if self.mlp_variant == "attn_vel":  # Variant A: the attention step's velocity as look-ahead
            v_attn = (x - x_before) / h_x
            return x + self.gamma() * self.mlp(self.ln_m(x + self.mu() * v_attn)), v
        v = torch.zeros_like(x) if v is None else v
        f = self.mlp(layer_norm_of_sum(self.ln_m, (1, x), (self.mu(), v)))  # (sums rebuilt in the backward pass)
        v = layer_norm_of_sum(self.ln_v, (self.beta(), v), (self.gamma(), f))
        return x + v, v

    def forward(self, x: Tensor, state: V1State) -> tuple[Tensor, V1State]:
        h_x, h_p = self.h_x(), self.h_p()
        oracle = self.oracle(h_x / h_p)
        (x_new, p_new, memory), last_factor = self.scheme.step_parts(
            oracle, x, state.p, state.t, h_p, self.damping(), state.memory
        )
        if self.ln_p is not None and last_factor is not None:
            # LN_P(σ P): the scheme's last factor on the momentum folded into the norm, which keeps P (kept
            # by the drift or the last oracle step anyway), not a scaled copy
            p_new = layer_norm_of_sum(self.ln_p, (last_factor, p_new))
        elif self.ln_p is not None:
            p_new = self.ln_p(p_new)  # (autocast runs layer_norm in fp32)
        elif last_factor is not None:
            p_new = last_factor * p_new
        if isinstance(self.attn, PrefixLinearForce):
            self.attn.commit(x.shape[1])
        x_out, mlp_v = self.mlp_substep(x, x_new, h_x, state.mlp_v)
        return x_out, V1State(p_new, mlp_v, memory, state.t + h_p.detach())
