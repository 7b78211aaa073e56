"""Generation with the cache (keys, value groups and velocity terms) equals generation without it."""

from __future__ import annotations

import pytest
import torch

from sympformer.nn import ARCHS, SympFormerConfig, SympFormerLM


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_generation_equals_uncached(arch):
    config = SympFormerConfig(vocab_size=29, n_layer=2, n_head=2, n_embd=16, block_size=12, arch=arch)
    model = SympFormerLM(config, seed=3).double()
    prompt = torch.randint(0, 29, (2, 5), generator=torch.Generator().manual_seed(0))
    # 15 new tokens: the sequence outgrows block_size (12), so the sliding window is exercised too
    cached, cached_logits = model.generate(prompt, 15, temperature=0, return_logits=True)
    plain, plain_logits = model.generate(prompt, 15, temperature=0, use_cache=False, return_logits=True)
    assert torch.equal(cached, plain)
    for a, b in zip(cached_logits, plain_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    sampled = [
        model.generate(prompt, 8, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(1), use_cache=c)
        for c in (True, False)
    ]
    assert torch.equal(sampled[0], sampled[1])
    assert all(block.attn.cache is None for block in model.blocks)


def test_generation_keeps_training_mode_and_prompt():
    model = SympFormerLM(SympFormerConfig(vocab_size=29, n_layer=1, n_head=1, n_embd=8, block_size=8, arch="H1"))
    model.train()
    prompt = torch.tensor([[1, 2, 3]])
    out = model.generate(prompt, 4, generator=torch.Generator().manual_seed(0))
    assert model.training and out.shape == (1, 7) and torch.equal(out[:, :3], prompt)
