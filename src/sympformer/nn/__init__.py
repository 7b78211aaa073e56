"""Drop-in `torch.nn` modules: attention, momentum blocks (B, Y, H0, H1, R2, H1_LA, R2_LA), and the
`SympFormerLM` language model."""

from sympformer.nn.attention import CausalSelfAttention, connection_reference
from sympformer.nn.blocks import BLOCKS, H0, H1, H1_LA, R2, R2_LA, B, MomentumBlock, Y
from sympformer.nn.config import ARCHS, CAUSAL_ARCHS, LINEAR_ARCHS, SOFTMAX_ARCHS, V1_ARCH_NAMES, SympFormerConfig
from sympformer.nn.layers import MLP, ConstrainedScalar, LayerNorm, scalars_off_their_start
from sympformer.nn.linear_attention import PrefixLinearAttention, linear_connection_reference
from sympformer.nn.model import SympFormerLM
from sympformer.nn.v1_blocks import V1Block, V1State

__all__ = [
    "ARCHS",
    "B",
    "H0",
    "H1",
    "H1_LA",
    "MLP",
    "R2",
    "R2_LA",
    "BLOCKS",
    "CAUSAL_ARCHS",
    "V1_ARCH_NAMES",
    "V1Block",
    "V1State",
    "LINEAR_ARCHS",
    "SOFTMAX_ARCHS",
    "PrefixLinearAttention",
    "linear_connection_reference",
    "ConstrainedScalar",
    "CausalSelfAttention",
    "LayerNorm",
    "MomentumBlock",
    "SympFormerConfig",
    "SympFormerLM",
    "Y",
    "connection_reference",
    "scalars_off_their_start",
]
