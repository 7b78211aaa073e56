"""`SympFormerConfig`: the language model's shape and architecture, validated, JSON round trip."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from sympformer.integrators.damping import MODES as DAMPING_MODES
from sympformer.nn.blocks import BLOCKS
from sympformer.nn.v1_blocks import LNP_MODES, MLP_VARIANTS, MULTI_CALL, NONCAUSAL_ARCHS, V1_ARCHS

# B_cap: the baseline with a second (token, position) embedding table added at the input, so that it
# has the parameters of the momentum models (their v0 tables) without any momentum: the fair control.
# *_L: the same blocks on the signed prefix-linear attention (notes §3.4).
SOFTMAX_ARCHS: tuple[str, ...] = ("B", "B_cap", *[name for name in BLOCKS if name != "B"])
LINEAR_ARCHS: tuple[str, ...] = ("B_L", "Y_L", "H0_L", "H1_L", "R2_L")
V1_ARCH_NAMES: tuple[str, ...] = tuple(V1_ARCHS)
ARCHS: tuple[str, ...] = SOFTMAX_ARCHS + LINEAR_ARCHS + V1_ARCH_NAMES
CAUSAL_ARCHS: tuple[str, ...] = tuple(a for a in ARCHS if a not in NONCAUSAL_ARCHS)
V0_MODES = ("learned", "zero")
STRENGTH_MODES = ("fixed", "learned")


def _choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


@dataclass
class SympFormerConfig:
    """Model configuration.

    arch: one of ARCHS (B, B_cap, Y, H0, H1, R2, H1_LA, R2_LA; linear attention: B_L, Y_L, H0_L, H1_L, R2_L).
    v0: initial velocity of the momentum architectures: "learned" (tok_v0(idx) + pos_v0(pos)) or "zero".
    connection_strength: η of H1/R2: "fixed" (= 1) or "learned" (exp(raw) per layer, starts at 1).
    gain_floor: added to every softplus gain γ (v4: 1e-6).
    linear_chunk: chunk length of the prefix-linear passes, the attention's, the connection proxy's and
        the v1 linear oracle's (a speed knob: results agree to rounding; v4 used 512). On CPU the attention's
        pass (4 heads × 16) is fastest at 32–64 and the oracle's (one head × 128) at 64–128, both far faster
        than at 512 (benchmarks/kernels.py); at 64 instead of 128 R2_L's training step took 3.7 and 3.8 %
        less time, H0_L's and v1_lin_pe's about the same (two interleaved one-off runs).
    activation_checkpointing: keep only each block's inputs for the backward pass and recompute the block
        there (one more forward per step, results bitwise unchanged on CPU): the memory lever for long
        contexts and for the multi-call v1 schemes (benchmarks/RESULTS.md gives the trade).
    """

    vocab_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 128
    bias: bool = False
    dropout: float = 0.0
    arch: str = "B"
    v0: str = "learned"
    connection_strength: str = "fixed"
    gain_floor: float = 1e-6
    linear_chunk: int = 64
    activation_checkpointing: bool = False
    v1_h0: float = 0.3
    v1_t0: float = 1.0
    v1_damping: str = "loglin"
    v1_c_log: float = 3.0
    v1_c_lin: float = 1e-4
    v1_eta_clip: float | None = 12.0
    v1_learn_damping: bool = True
    v1_lookahead: bool = False
    v1_lnp: str = "end"
    v1_mlp: str = "nesterov"
    v1_xi: float = 0.5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "linear_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ("bias", "activation_checkpointing", "v1_learn_damping", "v1_lookahead"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not float(self.gain_floor) >= 0:
            raise ValueError(f"gain_floor must be non-negative, got {self.gain_floor!r}")
        _choice("arch", self.arch, ARCHS)
        _choice("v0", self.v0, V0_MODES)
        _choice("connection_strength", self.connection_strength, STRENGTH_MODES)
        _choice("v1_damping", self.v1_damping, DAMPING_MODES)
        _choice("v1_lnp", self.v1_lnp, LNP_MODES)
        _choice("v1_mlp", self.v1_mlp, MLP_VARIANTS)
        if not float(self.v1_t0) > 0:
            raise ValueError(f"v1_t0 must be positive (the layer time never starts at 0), got {self.v1_t0!r}")
        if not float(self.v1_xi) > 0:
            raise ValueError(f"v1_xi must be positive, got {self.v1_xi!r}")
        if not float(self.v1_h0) > 0:
            raise ValueError(f"v1_h0 must be positive, got {self.v1_h0!r}")
        if self.v1_eta_clip is not None and not float(self.v1_eta_clip) > 0:
            raise ValueError(f"v1_eta_clip must be positive or null, got {self.v1_eta_clip!r}")

    @property
    def is_v1(self) -> bool:
        return self.arch in V1_ARCHS

    @property
    def is_causal(self) -> bool:
        return self.arch not in NONCAUSAL_ARCHS

    @property
    def oracle_calls_per_layer(self) -> int:
        return 4 if self.is_v1 and V1_ARCHS[self.arch][1] in MULTI_CALL else 1

    @property
    def supports_cache(self) -> bool:
        """Cached decoding needs causal, one-call layers (a multi-call layer evaluates shadow states)."""
        return self.is_causal and self.oracle_calls_per_layer == 1

    @property
    def attention_kind(self) -> str:
        return "linear" if self.arch in LINEAR_ARCHS else "softmax"

    @property
    def block_name(self) -> str:
        """The block class: B_cap uses B, the *_L architectures their softmax namesakes."""
        if self.arch == "B_cap":
            return "B"
        if self.is_v1:
            return "V1"
        return self.arch[: -len("_L")] if self.arch in LINEAR_ARCHS else self.arch

    @property
    def has_velocity(self) -> bool:
        return self.block_name != "B"

    @property
    def has_second_embedding(self) -> bool:
        """True when the model owns tok_v0 / pos_v0 tables (learned v0, or B_cap's second table)."""
        return self.arch == "B_cap" or (self.has_velocity and self.v0 == "learned")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict) -> SympFormerConfig:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"unknown model config key(s) {', '.join(unknown)}; valid keys: {', '.join(cls.field_names())}"
            )
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> SympFormerConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SympFormerConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> SympFormerConfig:
        return cls.from_json(Path(path).read_text())
