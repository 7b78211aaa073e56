"""What a GPU runs, checked on the CPU: every architecture with the CPU-only kernels switched off and the
large-activation branches taken gives the default CPU path's loss and gradients (float64).

On a GPU the softmax averages go through SDPA with the sentinel key for L (not the CPU flash kernel's own
normaliser), the v1 oracle makes two flash calls (not the materialised pass), and the connection's value
groups take one call per group (not row blocks). At the benchmark shapes the large-activation branches
(`recompute.MIN_ELEMENTS`: rebuilt value groups and LayerNorm inputs, the recomputed connection algebra)
are taken too, which `benchmarks/gpu_check.py`'s tiny shape never reaches on the device. This test takes
all of them together at a tiny shape, so that a device run is not the first to execute them."""

from __future__ import annotations

import pytest
import torch

from sympformer import softmax_ops
from sympformer.nn import ARCHS, SympFormerConfig, SympFormerLM, recompute, scalars_off_their_start, v1_oracles

TINY = dict(vocab_size=29, n_layer=2, n_head=2, n_embd=16, block_size=20)


def loss_and_gradients(arch: str, dtype=torch.float64, bf16: bool = False, **overrides) -> torch.Tensor:
    """[loss, every gradient] of a model whose scalars sit away from their starting values (``bf16``:
    under bfloat16 autocast, as the GPU benchmarks and training run)."""
    model = SympFormerLM(SympFormerConfig(**TINY, **overrides, arch=arch), seed=0).to(dtype)
    scalars_off_their_start(model)
    idx = torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]), generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        _, loss = model(idx, idx, return_logits=False)
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return torch.cat([loss.detach().reshape(1), *grads]).double()


def take_the_device_paths(monkeypatch) -> None:
    monkeypatch.setattr(softmax_ops, "CPU_KERNELS", False)
    monkeypatch.setattr(recompute, "MIN_ELEMENTS", 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_device_paths_give_the_cpu_paths_loss_and_gradients(monkeypatch, arch):
    want = loss_and_gradients(arch)
    take_the_device_paths(monkeypatch)
    got = loss_and_gradients(arch)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_device_paths_under_bf16_autocast_track_float32(monkeypatch, arch):
    """The same switches under bfloat16 autocast (the GPU runs' precision; the dtypes the sentinel key and
    the per-group calls meet there): within bfloat16's resolution of the float32 CPU path, by
    benchmarks/gpu_check.py's measures (loss within 2 %, gradient cosine ≥ 0.99)."""
    want = loss_and_gradients(arch, torch.float32)
    take_the_device_paths(monkeypatch)
    got = loss_and_gradients(arch, torch.float32, bf16=True)
    assert got.shape == want.shape
    assert abs(got[0] - want[0]) <= 0.02 * abs(want[0])
    assert torch.nn.functional.cosine_similarity(got[1:], want[1:], dim=0) >= 0.99


@pytest.mark.parametrize("arch", ["H1", "R2", "v1_fe", "v1_strang"])
def test_activation_checkpointing_over_the_device_paths_changes_no_bit(monkeypatch, arch):
    """Whole blocks recomputed around the device paths' own checkpoint regions (nested): the same bits."""
    take_the_device_paths(monkeypatch)
    plain = loss_and_gradients(arch)
    assert torch.equal(loss_and_gradients(arch, activation_checkpointing=True), plain)


def test_the_device_paths_are_taken(monkeypatch):
    """The switches reach the code: with them, H1's four value groups [w, k, dk, s·w] go one SDPA call each,
    and the calls on dk and s·w, which are kept as their recipes, run once more in the backward pass; the
    v1 oracle makes two SDPA calls, run once more in the backward pass (one in the last layer, whose
    force is not read); never the CPU flash kernel or the materialised pass."""
    take_the_device_paths(monkeypatch)
    sdpa_calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: sdpa_calls.append(1) or sdpa(*a, **k)
    )
    monkeypatch.setattr(softmax_ops._CPUFlashAverage, "apply", lambda *a: pytest.fail("CPU flash kernel used"))
    monkeypatch.setattr(v1_oracles, "prefix_force", lambda *a: pytest.fail("materialised pass used"))
    for arch, calls in (("H1", 2 * (4 + 2)), ("v1_fe", 2 + 2 + 1)):
        sdpa_calls.clear()
        loss_and_gradients(arch)
        assert len(sdpa_calls) == calls, arch


def test_the_v1_oracle_on_the_sentinel_path_keeps_only_its_inputs(monkeypatch):
    """With the sentinel key (a GPU), the oracle's two calls and their algebra are a checkpoint region: it
    keeps q, k, w and b, not the sentinel call's q, keys, values and output (one row and one column wider
    than q), s·w, the second call's output, y and the algebra's products: over eight (B, T, C) tensors
    fewer than the same calls kept."""
    from sympformer.benchmarking import saved_storages

    take_the_device_paths(monkeypatch)
    torch.manual_seed(0)
    oracle = v1_oracles.CausalPrefixForce(16, 2, bias=False).double()
    x, p = (torch.randn(2, 24, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    run = lambda: oracle.evaluate(x, p).force
    region = sum(saved_storages(run).values())
    monkeypatch.setattr(v1_oracles, "recomputed", lambda fn, *inputs: fn(*inputs))
    kept = sum(saved_storages(run).values())
    assert kept - region > 8 * x.numel() * x.element_size()
