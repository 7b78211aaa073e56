"""Momentum blocks and the language model: parameter counts, causality, reductions between
architectures, the fused connection against a per-row reference, persistence, precision."""

from __future__ import annotations

import pytest
import torch

from sympformer.benchmarking import saved_storages
from sympformer.nn import (
    ARCHS,
    CAUSAL_ARCHS,
    CausalSelfAttention,
    MomentumBlock,
    PrefixLinearAttention,
    SympFormerConfig,
    SympFormerLM,
    connection_reference,
    scalars_off_their_start,
)

TINY = dict(vocab_size=37, n_layer=2, n_head=2, n_embd=16, block_size=24)


def tiny_model(arch: str, seed: int = 0, dtype=torch.float64, **overrides) -> SympFormerLM:
    model = SympFormerLM(SympFormerConfig(**{**TINY, **overrides, "arch": arch}), seed=seed).to(dtype)
    scalars_off_their_start(model)  # so that every term matters
    return model


def tokens(batch=2, length=20, seed=0, vocab=37):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("B", 3_424_832), ("Y", 6_652_760), ("H0", 6_652_756), ("H1", 6_652_756), ("R2", 6_652_756)],
)
def test_parameter_counts_at_paper_primary_shape(arch, expected):
    config = SympFormerConfig(vocab_size=50304, n_layer=4, n_head=4, n_embd=64, block_size=128, arch=arch)
    assert SympFormerLM(config).num_parameters() == expected


def test_learned_strength_adds_one_scalar_per_layer():
    base = SympFormerLM(SympFormerConfig(**TINY, arch="R2")).num_parameters()
    learned = SympFormerLM(SympFormerConfig(**TINY, arch="R2", connection_strength="learned")).num_parameters()
    assert learned - base == TINY["n_layer"]


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_causality_suffix_perturbation(arch):
    model = tiny_model(arch)
    idx = tokens()
    cut = 9
    changed = idx.clone()
    changed[:, cut + 1 :] = (changed[:, cut + 1 :] + 5) % TINY["vocab_size"]
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert (a[:, : cut + 1] - b[:, : cut + 1]).abs().max() <= 1e-10
    assert (a[:, cut + 1 :] - b[:, cut + 1 :]).abs().max() > 1e-3  # the suffix did change something


@pytest.mark.parametrize("arch", ARCHS)
def test_one_attention_evaluation_per_layer(arch):
    model = tiny_model(arch, dtype=torch.float32)
    model(tokens())
    assert model.attention_calls() == TINY["n_layer"] * model.config.oracle_calls_per_layer
    assert model.config.oracle_calls_per_layer == (4 if arch in ("v1_doubling", "v1_strang") else 1)
    if not arch.startswith("v1_"):
        connection_passes = 4 if arch in ("H1_L", "R2_L") else 1 if arch.startswith("R2") else 0
        assert model.kernel_calls() == TINY["n_layer"] * (1 + connection_passes)


def zero_connection(monkeypatch):
    for attention in (CausalSelfAttention, PrefixLinearAttention):
        monkeypatch.setattr(attention, "_connection", lambda self, *args: torch.zeros_like(args[-1]))  # args[-1] = u


def outputs_and_grads(model, idx):
    model.zero_grad()
    logits, loss = model(idx, idx)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.mark.parametrize(
    ("corrected", "plain"),
    [("H1", "H0"), ("R2", "H0"), ("H1_LA", "Y"), ("R2_LA", "Y"), ("H1_L", "H0_L"), ("R2_L", "H0_L")],
)
def test_zero_connection_reduces_to_the_uncorrected_block(monkeypatch, corrected, plain):
    idx = tokens()
    reference_logits, reference_grads = outputs_and_grads(tiny_model(plain), idx)
    zero_connection(monkeypatch)
    logits, grads = outputs_and_grads(tiny_model(corrected), idx)
    torch.testing.assert_close(logits, reference_logits, rtol=0, atol=1e-12)
    assert set(grads) >= set(reference_grads)
    for name, grad in reference_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize(("lookahead", "plain"), [("H1_LA", "H1"), ("R2_LA", "R2")])
def test_zero_lookahead_reduces_to_the_plain_corrected_block(lookahead, plain):
    idx = tokens()
    model = tiny_model(lookahead)
    with torch.no_grad():
        for block in model.blocks:
            block.mu1.raw.fill_(float("-inf"))  # sigmoid(−∞) = 0 exactly
    torch.testing.assert_close(model(idx)[0], tiny_model(plain)(idx)[0], rtol=0, atol=1e-12)


@pytest.fixture
def attention():
    torch.manual_seed(0)
    attn = CausalSelfAttention(n_embd=8, n_head=2, bias=False, dropout=0.0).double()
    z = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    return attn, z, u


def test_fused_connection_equals_per_row_reference(attention):
    attn, z, u = attention
    f_ref, c_ref = connection_reference(attn, z, u)
    f, c = attn.with_connection(z, u)
    torch.testing.assert_close(f, f_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, c_ref, rtol=0, atol=1e-12)
    weights = torch.randn_like(c)
    grads = torch.autograd.grad((c * weights).sum(), (z, u, attn.c_attn.weight, attn.c_proj.weight))
    grads_ref = torch.autograd.grad((c_ref * weights).sum(), (z, u, attn.c_attn.weight, attn.c_proj.weight))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)


def test_second_pass_connection_equals_reference(attention):
    """R2's two-call path: u = direction(F) = 0.7 v + 1.3 F, checked against the reference at that u."""
    attn, z, v = attention
    f, u, c = attn.then_connection(z, lambda out: 0.7 * v + 1.3 * out)
    f_ref, c_ref = connection_reference(attn, z, 0.7 * v + 1.3 * f.detach())
    torch.testing.assert_close(f, f_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, c_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("calls", ["joined", "row blocks", "per group"])
def test_connection_value_groups_each_way(attention, monkeypatch, calls):
    """Below the size threshold the connection's value groups take one joined kernel call; above it one
    materialised pass on the CPU (row blocks), or one kernel call each where that does not serve (a GPU,
    bfloat16). Either way F and C equal the per-row reference, gradients included (float64)."""
    import sympformer.nn.attention as attention_module
    import sympformer.nn.recompute as recompute_module

    if calls != "joined":
        monkeypatch.setattr(recompute_module, "MIN_ELEMENTS", 0)
    if calls == "per group":
        monkeypatch.setattr(attention_module, "row_blocks_serve", lambda *args, **kwargs: False)
    passes = []
    materialised = attention_module.causal_averages
    monkeypatch.setattr(
        attention_module, "causal_averages", lambda *a, **kw: passes.append(1) or materialised(*a, **kw)
    )
    attn, z, u = attention
    attn.reset_counters()
    f, c = attn.with_connection(z, u)
    assert attn.kernel_calls == (4 if calls == "per group" else 1) and attn.evaluations == 1
    assert len(passes) == (calls == "row blocks")
    f_ref, c_ref = connection_reference(attn, z, u)
    torch.testing.assert_close(f, f_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, c_ref, rtol=0, atol=1e-12)
    weights = torch.randn_like(c)
    grads = torch.autograd.grad((c * weights).sum(), (z, u, attn.c_attn.weight))
    grads_ref = torch.autograd.grad((c_ref * weights).sum(), (z, u, attn.c_attn.weight))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)
    attn.reset_counters()
    f, _, c = attn.then_connection(z, lambda out: 0.7 * u + 1.3 * out)
    assert attn.kernel_calls == (4 if calls == "per group" else 2) and attn.evaluations == 1
    _, c_ref = connection_reference(attn, z, 0.7 * u + 1.3 * f)  # u = direction(F), differentiated through F
    wrt = (z, u, attn.c_attn.weight, attn.c_proj.weight)
    grads = torch.autograd.grad((c * weights).sum(), wrt, retain_graph=True)  # F's graph is c_ref's too
    grads_ref = torch.autograd.grad((c_ref * weights).sum(), wrt)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("device_paths", [False, True])
@pytest.mark.parametrize("second_pass", [False, True])
def test_direction_values_are_formed_again_not_kept_with_large_activations(monkeypatch, second_pass, device_paths):
    """Above the size threshold the connection's value groups along u, dk = W_K u and s·w, are formed
    again in the backward pass: what the connection keeps is two (B, T, C) tensors and s = ‖u‖² fewer
    than with the groups formed in the forward pass and kept (H1's one call and R2's second one). On the
    CPU the materialised pass keeps their recipes; ``device_paths``: as on a GPU, one SDPA call per
    group, the calls on dk and s·w as checkpoint regions."""
    import sympformer.nn.recompute as recompute_module
    from sympformer import softmax_ops
    from sympformer.softmax_ops import formed

    monkeypatch.setattr(recompute_module, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(softmax_ops, "CPU_KERNELS", not device_paths)
    torch.manual_seed(0)
    attn = CausalSelfAttention(n_embd=16, n_head=2, bias=False, dropout=0.0)
    z, v = torch.randn(2, 32, 16, requires_grad=True), torch.randn(2, 32, 16, requires_grad=True)
    run = lambda: attn.then_connection(z, lambda f: v + f) if second_pass else attn.with_connection(z, v)
    rebuilt = sum(saved_storages(run).values())
    recipes = attn._direction_values
    monkeypatch.setattr(attn, "_direction_values", lambda *a: formed(recipes(*a)))
    kept_formed = sum(saved_storages(run).values())
    # dk and s·w, and s; on the device paths also the log-normaliser rows (B, H, T) SDPA keeps with each
    # of the two calls' outputs (the checkpoint regions keep neither)
    log_normalisers = 2 * z.shape[0] * attn.n_head * z.shape[1] if device_paths else 0
    assert kept_formed - rebuilt == (2 * z.numel() + z[..., 0].numel() + log_normalisers) * 4


def test_value_groups_apart_hold_no_padded_copies(monkeypatch):
    """The joined call pads q and k to the four groups' width, and its backward pass holds the padded
    copies and gradients; one call per group and the materialised pass pad nothing: their forward and
    backward peaks are far lower."""
    import sympformer.nn.attention as attention_module
    import sympformer.nn.recompute as recompute_module
    from sympformer.benchmarking import peak_allocated

    torch.manual_seed(0)
    attn = CausalSelfAttention(n_embd=64, n_head=2, bias=False, dropout=0.0)
    z, u = torch.randn(2, 256, 64, requires_grad=True), torch.randn(2, 256, 64, requires_grad=True)
    row_blocks_serve = attention_module.row_blocks_serve

    def peak_bytes(threshold, row_blocks=True):
        monkeypatch.setattr(recompute_module, "MIN_ELEMENTS", threshold)
        serve = row_blocks_serve if row_blocks else (lambda *args, **kwargs: False)
        monkeypatch.setattr(attention_module, "row_blocks_serve", serve)

        def step():
            f, c = attn.with_connection(z, u)
            (f.square().sum() + c.square().sum()).backward()

        return peak_allocated(step)

    joined = peak_bytes(1 << 40)  # 6.2 MB here
    assert peak_bytes(0, row_blocks=False) < 0.7 * joined  # one call per group: 3.2 MB
    assert peak_bytes(0) < 0.7 * joined  # the materialised pass: 3.7 MB


def test_fused_connection_gradcheck():
    torch.manual_seed(1)
    attn = CausalSelfAttention(n_embd=4, n_head=2, bias=True, dropout=0.0).double()
    z = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    u = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, u: attn.with_connection(z, u)[1], (z, u))
    assert torch.autograd.gradcheck(lambda z, u: attn.then_connection(z, lambda f: u + f)[2], (z, u))


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in ("B", "B_cap", "B_L") and not a.startswith("v1_")])
def test_velocity_enters_positions(arch):
    model = tiny_model(arch)
    block = model.blocks[0]
    assert isinstance(block, MomentumBlock)
    x, v = model.embed(tokens())
    x_with, _ = block(x, v)
    x_without, _ = block(x, torch.zeros_like(v))
    assert (x_with - x_without).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_finite_in_float32_and_bf16_autocast(arch):
    model = tiny_model(arch, dtype=torch.float32)
    idx = tokens()
    _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("arch", ["B", "Y", "R2"])
def test_save_load_round_trip(tmp_path, arch):
    model = tiny_model(arch, dtype=torch.float32)
    model.save_pretrained(tmp_path / "m")
    loaded = SympFormerLM.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    idx = tokens()
    assert torch.equal(model(idx)[0], loaded(idx)[0])
    assert loaded.lm_head.weight is loaded.tok_emb.weight


def test_paired_initialisation_shares_common_tensors():
    models = {arch: SympFormerLM(SympFormerConfig(**TINY, arch=arch), seed=7) for arch in ARCHS if "v1_" not in arch}
    shared = set.intersection(*(set(dict(m.named_parameters())) for m in models.values()))
    assert "tok_emb.weight" in shared and "blocks.1.attn.c_attn.weight" in shared
    reference = dict(models["B"].named_parameters())
    for model in models.values():
        params = dict(model.named_parameters())
        for name in shared:
            assert torch.equal(params[name], reference[name]), name
    y, h0 = dict(models["Y"].named_parameters()), dict(models["H0"].named_parameters())
    assert torch.equal(y["tok_v0.weight"], h0["tok_v0.weight"])
    other_seed = SympFormerLM(SympFormerConfig(**TINY, arch="B"), seed=8)
    assert not torch.equal(other_seed.tok_emb.weight, models["B"].tok_emb.weight)


def test_zero_v0_mode_has_no_velocity_tables():
    model = SympFormerLM(SympFormerConfig(**TINY, arch="H0", v0="zero"))
    assert not hasattr(model, "tok_v0")
    _, v = model.embed(tokens())
    assert torch.equal(v, torch.zeros_like(v))


def test_config_validation_and_json_round_trip():
    config = SympFormerConfig(**TINY, arch="R2", connection_strength="learned")
    assert SympFormerConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown arch 'GPT'; valid: B, B_cap, Y, H0, H1, R2, H1_LA, R2_LA, B_L, Y_L"):
        SympFormerConfig(arch="GPT")
    with pytest.raises(ValueError, match="unknown model config key.*n_layers.*valid keys: vocab_size"):
        SympFormerConfig.from_dict({"n_layers": 3})
    with pytest.raises(ValueError, match="divisible"):
        SympFormerConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="v0"):
        SympFormerConfig(v0="random")
    with pytest.raises(ValueError, match="exceeds block_size"):
        SympFormerLM(SympFormerConfig(**TINY))(tokens(length=30))


def saved_bytes(model, idx) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of one forward."""
    return sum(saved_storages(lambda: model(idx, idx)).values())


def reference_weighted_sum(*terms):
    """The ordinary autograd graph of Σ c_k t_k, Affine terms as plain products."""
    from sympformer.nn.norm_sum import Affine

    return sum(c * (t.value() if isinstance(t, Affine) else t) for c, t in terms)


def reference_layer_norm_of_sum(norm, *terms):
    """The ordinary autograd graph of norm(Σ c_k t_k), Affine terms as plain products."""
    return norm(reference_weighted_sum(*terms))


def assert_matches_plain(ours, plain):
    """(logits, {name: gradient}) equal to the plain graph's to float64 rounding."""
    (logits, grads), (plain_logits, plain_grads) = ours, plain
    torch.testing.assert_close(logits, plain_logits, rtol=0, atol=1e-13)
    assert grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("arch", ["Y", "H0", "H1", "R2", "H1_LA", "R2_LA", "H1_L", "R2_L", "v1_pe"])
def test_rebuilt_algebra_matches_the_plain_graph_and_saves_memory(monkeypatch, arch):
    """The LayerNorms of weighted sums (sums rebuilt in the backward pass), R2's momentum W = β₁ v + g₁ F
    (F rebuilt), R2's V_a and increment (normalised again from W and C in the backward passes of LN_M and
    LN_v) and the connection algebra (recomputed) give the plain graph's logits and gradients (float64: to
    rounding), and autograd keeps less."""
    import sympformer.nn.attention as attention_module
    import sympformer.nn.blocks as blocks_module
    import sympformer.nn.recompute as recompute_module
    import sympformer.nn.v1_blocks as v1_blocks_module

    monkeypatch.setattr(recompute_module, "MIN_ELEMENTS", 0)  # tiny activations: recompute them anyway
    idx = tokens()
    logits, grads = outputs_and_grads(tiny_model(arch), idx)
    rebuilding = saved_bytes(tiny_model(arch), idx)
    monkeypatch.setattr(attention_module, "recomputed", lambda fn, *inputs: fn(*inputs))
    monkeypatch.setattr(blocks_module, "weighted_sum", reference_weighted_sum)
    monkeypatch.setattr(blocks_module, "rebuilt_layer_norm_of_sum", reference_layer_norm_of_sum)
    for module in (blocks_module, v1_blocks_module):
        monkeypatch.setattr(module, "layer_norm_of_sum", reference_layer_norm_of_sum)
    assert_matches_plain((logits, grads), outputs_and_grads(tiny_model(arch), idx))
    stream = idx.numel() * TINY["n_embd"] * 8  # one (B, T, C) float64 tensor
    # v1: LN_M's input x⁺ is kept instead of x⁺ + μ v; R2: W's term F (rebuilt from the attention average),
    # V_a and the increment (LN_M and LN_v form them again from W and C)
    per_layer = 1 if arch.startswith("v1") else 5 if arch.startswith("R2") else 2
    scalars = 8 * 8 * TINY["n_layer"]  # a few 0-d coefficients kept instead (the merged 1 + μ₂, …)
    assert saved_bytes(tiny_model(arch), idx) - rebuilding >= per_layer * stream * TINY["n_layer"] - scalars


@pytest.mark.parametrize(
    ("arch", "fewer"), [("v1_halfdamp_pe", 2), ("v1_lin_halfdamp_pe", 2), ("v1_doubling", 1), ("v1_strang", 1)]
)
def test_momentum_factors_keep_no_scaled_copy(monkeypatch, arch, fewer):
    """A scheme's last factor on the momentum (the doubling step's e^{−Δη}, a half-damping) is folded into
    LN_P, which keeps the unscaled P (kept by the drift or the last oracle step anyway); the half-damped
    kick–drift's first half-damping keeps the damped momentum (which the oracle keeps anyway), not the
    incoming one. The plain graph's logits and gradients (float64, to rounding), where the plain graph keeps
    ``fewer`` more (B, T, C) tensors between every two layers; the half-damped kick–drift keeps what the same
    block without the half-dampings keeps (v1_pe, v1_lin_pe)."""
    import sympformer.integrators.schemes as schemes_module
    import sympformer.nn.v1_blocks as v1_blocks_module

    idx = tokens()
    stream = idx.numel() * TINY["n_embd"] * 8  # one (B, T, C) float64 tensor
    logits, grads = outputs_and_grads(tiny_model(arch), idx)
    folded = saved_bytes(tiny_model(arch), idx)
    if "halfdamp" in arch:
        assert abs(folded - saved_bytes(tiny_model(arch.replace("halfdamp_", "")), idx)) < stream
    monkeypatch.setattr(schemes_module, "damp", lambda p, delta_eta: torch.exp(-delta_eta) * p)
    monkeypatch.setattr(v1_blocks_module, "layer_norm_of_sum", reference_layer_norm_of_sum)
    assert_matches_plain((logits, grads), outputs_and_grads(tiny_model(arch), idx))
    assert saved_bytes(tiny_model(arch), idx) - folded >= fewer * stream * (TINY["n_layer"] - 1)


def test_connection_recomputation_changes_no_bit(monkeypatch):
    """The recomputed connection algebra (a checkpointed region) is bitwise the plain graph."""
    import sympformer.nn.attention as attention_module
    import sympformer.nn.recompute as recompute_module

    monkeypatch.setattr(recompute_module, "MIN_ELEMENTS", 0)
    idx = tokens()
    logits, grads = outputs_and_grads(tiny_model("R2"), idx)
    monkeypatch.setattr(attention_module, "recomputed", lambda fn, *inputs: fn(*inputs))
    plain_logits, plain_grads = outputs_and_grads(tiny_model("R2"), idx)
    assert torch.equal(logits, plain_logits)
    for name, grad in plain_grads.items():
        assert torch.equal(grads[name], grad), name


def test_small_activations_are_not_recomputed(monkeypatch):
    """Below MIN_ELEMENTS the region runs plainly (no checkpoint frame); at or above it, it is recomputed."""
    import sympformer.nn.recompute as recompute_module

    calls = []
    monkeypatch.setattr(recompute_module, "checkpoint", lambda fn, *xs, **kw: calls.append(len(xs)) or fn(*xs))
    x = torch.randn(4, 8, requires_grad=True)
    monkeypatch.setattr(recompute_module, "MIN_ELEMENTS", 33)
    assert torch.equal(recompute_module.recomputed(torch.tanh, x), torch.tanh(x)) and calls == []
    monkeypatch.setattr(recompute_module, "MIN_ELEMENTS", 32)
    recompute_module.recomputed(torch.tanh, x)
    assert calls == [1]


@pytest.mark.parametrize("arch", ["B", "H1", "R2_LA", "R2_L", "v1_ab2", "v1_strang", "v1_lin_etd_ab2"])
def test_activation_checkpointing_changes_no_bit_and_keeps_only_block_inputs(arch):
    """Recomputing every block in the backward pass (dropout on: its random stream is replayed) gives
    bitwise the same loss and gradients, and autograd keeps less than a third of the plain graph."""
    idx = tokens()
    results, kept = [], []
    for checkpointing in (False, True):
        model = tiny_model(arch, dropout=0.1, activation_checkpointing=checkpointing)
        torch.manual_seed(5)
        results.append(outputs_and_grads(model, idx))
        torch.manual_seed(5)
        kept.append(saved_bytes(model, idx))
    (logits, grads), (ck_logits, ck_grads) = results
    assert torch.equal(logits, ck_logits)
    assert grads.keys() == ck_grads.keys()
    for name, grad in grads.items():
        assert torch.equal(ck_grads[name], grad), name
    assert kept[1] < kept[0] / 3


@pytest.mark.parametrize("arch", ["H1", "R2"])
def test_activation_checkpointing_over_rebuilt_value_groups_changes_no_bit(monkeypatch, arch):
    """With large-activation paths forced (one call per value group, dk and s·w formed again in the
    kernel's backward pass, the recomputed connection algebra), recomputing every block as well gives
    bitwise the same loss and gradients: the nested recomputations agree."""
    import sympformer.nn.recompute as recompute_module

    monkeypatch.setattr(recompute_module, "MIN_ELEMENTS", 0)
    idx = tokens()
    plain = outputs_and_grads(tiny_model(arch), idx)
    logits, grads = outputs_and_grads(tiny_model(arch, activation_checkpointing=True), idx)
    assert torch.equal(logits, plain[0])
    for name, grad in plain[1].items():
        assert torch.equal(grads[name], grad), name


def test_activation_checkpointing_must_be_a_boolean():
    with pytest.raises(ValueError, match="activation_checkpointing must be true or false"):
        SympFormerConfig(**TINY, activation_checkpointing="yes")


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [("B", {}), ("H1", {}), ("R2_LA", {"activation_checkpointing": True}), ("R2_L", {}), ("v1_pe", {})]
    + [("v1_ab2", {}), ("v1_strang", {"activation_checkpointing": True}), ("v1_lin_etd_ab2", {})],
)
def test_forward_traces_for_torch_compile_without_graph_breaks(arch, overrides):
    """A graph break inside the block loop makes torch.compile fall back to eager for the whole loop."""
    model = SympFormerLM(SympFormerConfig(**{**TINY, **overrides, "arch": arch}))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(tokens(), tokens())
    assert explanation.graph_break_count == 0, [str(reason.reason)[:200] for reason in explanation.break_reasons]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["H1", "R2_L", "v1_strang"])
def test_compiled_training_step_matches_eager(arch):
    config = SympFormerConfig(**{**TINY, "arch": arch, "activation_checkpointing": arch != "R2_L"})
    eager, compiled = SympFormerLM(config), SympFormerLM(config)
    idx = tokens()
    _, eager_loss = eager(idx, idx)
    eager_loss.backward()
    _, compiled_loss = torch.compile(compiled)(idx, idx)
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
