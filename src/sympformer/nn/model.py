r"""`SympFormerLM`: a GPT-style language model whose blocks are chosen by ``config.arch``.

    x₀ = tok_emb(idx) + pos_emb(pos)                       (B_cap adds tok_v0(idx) + pos_v0(pos))
    v₀ = tok_v0(idx) + pos_v0(pos)  or 0                   (momentum architectures)
    (x, v) ← block_ℓ(x, v),  ℓ = 1..n_layer
    logits = lm_head(LN_f(x)),  lm_head tied to tok_emb

Initialisation is *paired*: each tensor is drawn from a generator seeded by (seed, its name), so
every architecture built from one seed has identical values in every tensor it shares with another
(same embeddings, same attention and MLP weights, same v0 tables), as a paired comparison needs.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sympformer.nn.blocks import BLOCKS
from sympformer.nn.config import SympFormerConfig
from sympformer.nn.layers import ConstrainedScalar
from sympformer.nn.loss import linear_cross_entropy
from sympformer.nn.v1_blocks import V1Block, V1State
from sympformer.utils import atomic_write_text, make_readable

INIT_STD = 0.02


class SympFormerLM(nn.Module):
    def __init__(self, config: SympFormerConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        n = config.n_embd
        self.tok_emb = nn.Embedding(config.vocab_size, n)
        self.pos_emb = nn.Embedding(config.block_size, n)
        if config.has_second_embedding:
            self.tok_v0 = nn.Embedding(config.vocab_size, n)
            self.pos_v0 = nn.Embedding(config.block_size, n)
        self.drop = nn.Dropout(config.dropout)
        if config.is_v1:
            self.blocks = nn.ModuleList(V1Block(config, last=i == config.n_layer - 1) for i in range(config.n_layer))
        else:
            self.blocks = nn.ModuleList(BLOCKS[config.block_name](config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(n, eps=1e-5, bias=config.bias)
        self.lm_head = nn.Linear(n, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters(seed)

    # --- initialisation -----------------------------------------------------------------------

    def reset_parameters(self, seed: int = 0) -> None:
        """Paired initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm weights, scalars at
        their documented starting values; each tensor from a generator seeded by (seed, name)."""
        norms = {id(m.weight) for m in self.modules() if isinstance(m, nn.LayerNorm)}
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, ConstrainedScalar):
                    module.reset()
            for name, param in self.named_parameters():
                if name.endswith(".raw"):
                    continue
                if id(param) in norms:
                    param.fill_(1.0)
                elif name.endswith("b_theta"):  # the v1 mobility B_θ starts at the identity
                    param.copy_(torch.eye(param.shape[0], dtype=param.dtype))
                elif name.endswith("bias"):
                    param.zero_()
                else:
                    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                    values = torch.randn(param.shape, generator=generator, dtype=torch.float32) * INIT_STD
                    param.copy_(values.to(param.dtype))

    # --- forward --------------------------------------------------------------------------------

    def embed(self, idx: Tensor, start: int = 0) -> tuple[Tensor, Tensor | None]:
        """(x₀, v₀) for tokens ``idx`` at positions start, start+1, …"""
        length = idx.shape[1]
        if start + length > self.config.block_size:
            raise ValueError(f"sequence of length {start + length} exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + length, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        second = self.tok_v0(idx) + self.pos_v0(pos) if self.config.has_second_embedding else None
        if self.config.arch == "B_cap":
            return self.drop(x + second), None
        if not self.config.has_velocity:
            return self.drop(x), None
        return self.drop(x), second if second is not None else torch.zeros_like(x)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, start: int = 0, return_logits: bool = True
    ) -> tuple[Tensor | None, Tensor | None]:
        """logits (B, T, vocab) and the mean cross-entropy against ``targets`` (−1 entries ignored).
        ``start``: absolute position of idx[:, 0] (non-zero only while decoding with a cache).
        ``return_logits=False`` (training, evaluation): the loss comes from the chunked fused head
        (:func:`sympformer.nn.loss.linear_cross_entropy`) and the logits are not formed (None)."""
        x, v = self.embed(idx, start)
        h = self.ln_f(self.run_blocks(x, v))
        if targets is not None and not return_logits:
            return None, linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight, targets.flatten())
        logits = self.lm_head(h)
        loss = None
        if targets is not None:
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 → fp32, fp64 stays
            loss = F.cross_entropy(wide.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    def run_blocks(self, x: Tensor, v: Tensor | None) -> Tensor:
        """The block stack from the embedded stream (x₀, v₀); returns the final stream."""
        for block in self.blocks:
            block.attn.reset_counters()
        if self.config.is_v1:
            v = V1State(v, None, None, x.new_tensor(float(self.config.v1_t0)))  # layer time: a detached 0-d tensor
        recompute = self.config.activation_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            x, v = checkpoint(block, x, v, use_reentrant=False) if recompute else block(x, v)
        return x

    def forward_embedded(self, x: Tensor, v: Tensor | None) -> Tensor:
        """logits from the embedded stream (x₀, v₀): the blocks, LN_f and the head (used by the audit)."""
        return self.lm_head(self.ln_f(self.run_blocks(x, v)))

    # --- generation ------------------------------------------------------------------------------

    def _set_cache(self, enabled: bool) -> None:
        for block in self.blocks:
            block.attn.cache = {} if enabled else None

    @staticmethod
    def _sample(logits: Tensor, temperature: float, top_k: int | None, generator, vocab_limit: int | None) -> Tensor:
        if vocab_limit is not None and vocab_limit < logits.shape[-1]:  # padding ids the tokenizer does not know
            logits = logits.clone()
            logits[..., vocab_limit:] = float("-inf")
        if temperature == 0:
            return logits.argmax(-1, keepdim=True)
        logits = logits.float() / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        return_logits: bool = False,
        vocab_limit: int | None = None,
    ):
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T). The context is the last
        block_size tokens. With ``use_cache`` each new token costs one position per layer: the cache
        holds every layer's keys and value groups (velocity terms included); once the sequence is
        longer than block_size the window slides and the cache is rebuilt from it, so the result is
        that of generation without a cache. temperature 0 is greedy decoding; ``vocab_limit`` keeps the
        samples below the tokenizer's vocabulary when the model's is padded (e.g. 50304 for GPT-2's 50257)."""
        was_training = self.training
        self.eval()
        use_cache = use_cache and self.config.supports_cache  # leaky or multi-call layers: full recompute
        tokens, cached, all_logits = idx, None, []
        block_size = self.config.block_size
        try:
            for _ in range(max_new_tokens):
                if not use_cache:
                    logits = self(tokens[:, -block_size:])[0][:, -1]
                elif cached is None or tokens.shape[1] > block_size:
                    self._set_cache(True)
                    window = tokens[:, -block_size:]
                    logits, cached = self(window)[0][:, -1], window.shape[1]
                else:
                    logits = self(tokens[:, cached:], start=cached)[0][:, -1]
                    cached = tokens.shape[1]
                all_logits.append(logits)
                tokens = torch.cat([tokens, self._sample(logits, temperature, top_k, generator, vocab_limit)], dim=1)
        finally:
            self._set_cache(False)
            self.train(was_training)
        return (tokens, all_logits) if return_logits else tokens

    # --- reporting -------------------------------------------------------------------------------

    def num_parameters(self) -> int:
        """Distinct parameters (the tied LM head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def attention_calls(self) -> int:
        """Attention evaluations (softmax distributions, the paper's oracle calls) in the last forward."""
        return sum(block.attn.evaluations for block in self.blocks)

    def kernel_calls(self) -> int:
        """SDPA launches in the last forward (R2 re-aggregates with the same softmax: 2 per block)."""
        return sum(block.attn.kernel_calls for block in self.blocks)

    # --- persistence -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """config.json + model.safetensors (each written atomically)."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".safetensors.tmp")
        os.close(fd)
        try:
            save_model(self, tmp, metadata={"format": "pt", "sympformer_config": json.dumps(self.config.to_dict())})
            make_readable(tmp)
            os.replace(tmp, directory / "model.safetensors")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        atomic_write_text(directory / "config.json", self.config.to_json() + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str = "cpu") -> SympFormerLM:
        from safetensors.torch import load_model

        directory = Path(directory)
        for name in ("config.json", "model.safetensors"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} is missing: not a saved sympformer model")
        model = cls(SympFormerConfig.load(directory / "config.json"))
        load_model(model, directory / "model.safetensors", device=map_location)
        return model
