"""SympFormer v1 scheme blocks: the causal prefix oracle against a dense loop, the blocks against the
particle lab's schemes (same integrator code), exact damping, layer time, gradients everywhere, and
the causality audit (with the leaky witness that must fail it)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sympformer.audit import audit_arch
from sympformer.integrators import Evaluation, get_scheme
from sympformer.nn import ARCHS, CAUSAL_ARCHS, V1_ARCH_NAMES, SympFormerConfig, SympFormerLM
from sympformer.nn.layers import ConstrainedScalar
from sympformer.nn.v1_blocks import SCHEMES, V1Block, V1State
from sympformer.nn.v1_oracles import CausalPrefixForce, PrefixLinearForce
from sympformer.particles import AcceleratedSoftmaxSystem, SoftmaxGeometry

TINY = dict(vocab_size=31, n_layer=3, n_head=2, n_embd=8, block_size=16)


@pytest.mark.parametrize("arch", ARCHS)
def test_causality_audit(arch):
    report = audit_arch(arch)
    assert report.passed == (arch in CAUSAL_ARCHS), report.line()


def test_global_force_witness_leaks_in_every_check():
    report = audit_arch("v1_global_euler")
    assert all(not check.passed for check in report.checks), report.checks


def prefix_force_reference(oracle: CausalPrefixForce, heads: int, x, p):
    """Dense loop over rows i (1-based) of notes §7 with head-averaged scores."""
    q, k, w = oracle.c_attn(x).split(x.shape[-1], -1)
    batch, length, width = x.shape
    d_h = width // heads
    velocity, force = torch.zeros_like(p), torch.zeros_like(p)
    for b in range(batch):
        qh, kh = q[b].view(length, heads, d_h), k[b].view(length, heads, d_h)
        E = torch.exp(torch.einsum("ihd,jhd->ijh", qh, kh).mean(-1) / math.sqrt(d_h))
        z = torch.stack([E[i, : i + 1].sum() / (i + 1) for i in range(length)])
        bp = p[b] @ oracle.b_theta.T
        s = (bp * p[b]).sum(-1) / z**2
        for i in range(length):
            velocity[b, i] = bp[i] / z[i]
            inner = sum(E[i, j] * (s[i] + s[j] + 2) * w[b, j] for j in range(i + 1)) / (2 * (i + 1))
            force[b, i] = oracle.c_proj(inner)
    return velocity, force


@pytest.mark.parametrize("path", ["materialised", "flash"])
def test_causal_prefix_oracle_equals_dense_reference(path, monkeypatch):
    """On CPU the oracle makes one materialised pass; the flash path (two kernel calls) serves GPUs,
    torch.compile and the generation cache."""
    from sympformer.nn import v1_oracles

    if path == "flash":
        monkeypatch.setattr(v1_oracles, "materialised_applies", lambda q: False)
    torch.manual_seed(0)
    oracle = CausalPrefixForce(8, 2, bias=True).double()
    with torch.no_grad():
        oracle.b_theta.add_(0.1 * torch.randn(8, 8, dtype=torch.float64))
    x = torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True)
    p = torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True)
    ev = oracle.evaluate(x, p)
    assert oracle.kernel_calls == {"materialised": 1, "flash": 2}[path]
    v_ref, f_ref = prefix_force_reference(oracle, 2, x, p)
    torch.testing.assert_close(ev.velocity, v_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(ev.force, f_ref, rtol=0, atol=1e-12)
    weights = torch.randn_like(p)
    grads = torch.autograd.grad((ev.force * weights).sum() + ev.velocity.sum(), (x, p, oracle.c_attn.weight))
    grads_ref = torch.autograd.grad((f_ref * weights).sum() + v_ref.sum(), (x, p, oracle.c_attn.weight))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)


def test_causal_prefix_oracle_at_zero_momentum_is_scaled_attention():
    torch.manual_seed(1)
    oracle = CausalPrefixForce(8, 2, bias=False).double()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    ev = oracle.evaluate(x, torch.zeros_like(x))
    q, k, w = oracle.c_attn(x).split(8, -1)
    scores = (q @ k.mT) * oracle.scale
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    z = torch.exp(torch.logsumexp(scores, -1)) / torch.arange(1, 7, dtype=torch.float64)
    expected = oracle.c_proj(z.unsqueeze(-1) * (torch.softmax(scores, -1) @ w))
    torch.testing.assert_close(ev.force, expected, rtol=0, atol=1e-12)


def test_prefix_linear_oracle_equals_dense_reference():
    torch.manual_seed(2)
    oracle = PrefixLinearForce(6, chunk=4).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    p = torch.randn(2, 9, 6, dtype=torch.float64)
    ev = oracle.evaluate(x, p)
    A, V = oracle.c_A.weight, oracle.c_V.weight
    count = torch.arange(1, 10, dtype=torch.float64).view(1, 9, 1)
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    kernel = torch.where(mask, (x @ A.T) @ x.mT, torch.zeros(()))  # (A x_i)·x_j
    torch.testing.assert_close(ev.velocity, kernel @ p / count, rtol=0, atol=1e-12)
    gram = torch.where(mask, p @ p.mT, torch.zeros(()))
    torch.testing.assert_close(ev.force, -gram @ (x @ A.T) / count + x @ V.T, rtol=0, atol=1e-12)


class ParticleOracle(nn.Module):
    """Adapter: the particle lab's accelerated softmax system in the v1 oracle's place."""

    def __init__(self, system):
        super().__init__()
        self.system = system
        self.cache = None

    def reset_counters(self):
        self.evaluations = self.kernel_calls = 0

    def evaluate(self, x, p, need_force=True, velocity_scale=1.0) -> Evaluation:
        return scaled_velocity(self.system, velocity_scale)(x, p)


def scaled_velocity(oracle, scale):
    """The oracle with its velocity and velocity map multiplied by ``scale`` (how h_X ≠ h_P enters)."""

    def evaluate(x, p):
        ev = oracle(x, p)
        return Evaluation(scale * ev.velocity, ev.force, lambda p_new: scale * ev.velocity_map(p_new))

    return evaluate


LAB_NAMES = {
    "fe": "euler",
    "pe": "kick_drift",
    "exp_pe": "exp_kick_drift",
    "halfdamp_pe": "half_damped_euler",
    "ab2": "ab2",
    "etd_ab2": "etd_ab2_new_drift",
    "doubling": "doubling",
    "strang": "strang_doubling",
}


@pytest.mark.parametrize("scheme", [*SCHEMES, "doubling", "strang"])
def test_block_with_particle_oracle_reproduces_the_particle_scheme(scheme):
    config = SympFormerConfig(**TINY, arch=f"v1_{scheme}", v1_mlp="none", v1_lnp="none", v1_damping="log")
    block = V1Block(config).double()
    block.ln_x = nn.Identity()
    block.h_x = ConstrainedScalar(0.7 * config.v1_h0, "pos").double()  # h_X ≠ h_P: the velocity is rescaled
    g = torch.Generator().manual_seed(3)
    A = torch.randn(8, 8, generator=g, dtype=torch.float64) * 0.1
    system = AcceleratedSoftmaxSystem(SoftmaxGeometry(A + A.T, torch.eye(8, dtype=torch.float64)))
    block.attn = ParticleOracle(system)
    x = torch.randn(1, 5, 8, generator=g, dtype=torch.float64)
    p = torch.randn(1, 5, 8, generator=g, dtype=torch.float64)
    x_block, state = block(x, V1State(p, None, None, 1.3))
    h = block.h_p()
    lab_scheme = get_scheme(LAB_NAMES[scheme], xi=config.v1_xi)  # the particle lab's own instance
    oracle = scaled_velocity(system, block.h_x() / h)
    x_lab, p_lab, _ = lab_scheme.step(oracle, x, p, 1.3, h, block.damping())
    assert torch.equal(x_block, x_lab) and torch.equal(state.p, p_lab)
    assert state.t == pytest.approx(1.3 + h.item())


@pytest.mark.parametrize("mode", ["log", "linear", "loglin"])
def test_damping_factor_is_exp_minus_delta_eta(mode):
    config = SympFormerConfig(**TINY, arch="v1_pe", v1_damping=mode, v1_eta_clip=12.0)
    block = V1Block(config).double()
    c_log = block.c_log().item() if hasattr(block, "c_log") else 0.0
    c_lin = block.c_lin().item() if hasattr(block, "c_lin") else 0.0
    eta = lambda t: max(-12.0, min(12.0, c_log * math.log(t / config.v1_t0) + c_lin * (t - config.v1_t0)))
    for t, h in ((1.0, 0.3), (2.5, 0.7), (40.0, 1.5)):
        assert block.damping().factor(t, h).item() == pytest.approx(math.exp(-(eta(t + h) - eta(t))), rel=1e-12)


def test_layer_time_starts_at_t0_and_advances_by_the_step():
    model = SympFormerLM(SympFormerConfig(**TINY, arch="v1_etd_ab2", v1_t0=0.5))
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(args[1].t))
    model(torch.randint(0, 31, (1, 8)))
    steps = [block.h_p().item() for block in model.blocks]
    assert seen[0] == 0.5
    for k in range(1, len(seen)):
        assert seen[k] == pytest.approx(seen[k - 1] + steps[k - 1])
    with pytest.raises(ValueError, match="v1_t0 must be positive"):
        SympFormerConfig(arch="v1_pe", v1_t0=0.0)


VARIANTS = [
    {},
    {"v1_lookahead": True},
    {"v1_mlp": "attn_vel"},
    {"v1_mlp": "plain", "v1_lnp": "none"},
    {"v1_mlp": "none"},
    {"v1_damping": "log", "v1_eta_clip": None},
    {"v1_damping": "constant", "v1_learn_damping": False},
    {"v0": "zero"},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default")
@pytest.mark.parametrize("arch", V1_ARCH_NAMES)
def test_every_parameter_gets_a_gradient(arch, variant):
    model = SympFormerLM(SympFormerConfig(**TINY, arch=arch, **variant))
    idx = torch.randint(0, 31, (2, 10), generator=torch.Generator().manual_seed(0))
    _, loss = model(idx, idx)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert model.attention_calls() == TINY["n_layer"] * model.config.oracle_calls_per_layer


def test_training_refuses_the_leaky_witness(tmp_path):
    from sympformer.train import NonCausalArchitecture, build, train

    config = build({"model": {"arch": "v1_global_euler"}, "train": {"max_steps": 1}})
    with pytest.raises(NonCausalArchitecture, match="--allow-noncausal"):
        train(config, tmp_path / "run", progress=False)


def test_prefix_oracle_fallback_centre_gives_the_same_force(monkeypatch):
    """Forcing the entropy-bounded fallback (as when the diagonal-centred sentinel underflows) changes
    nothing but the path, with and without the generation cache (the flash path: on CPU the
    materialised pass serves calls without a cache, and its L needs no fallback)."""
    from sympformer.nn import v1_oracles

    monkeypatch.setattr(v1_oracles, "materialised_applies", lambda q: False)
    torch.manual_seed(4)
    oracle = CausalPrefixForce(8, 2, bias=False).double()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    p = torch.randn(1, 6, 8, dtype=torch.float64)
    expected = oracle.evaluate(x, p)
    real = oracle.aggregate_with_normaliser

    def underflowing(*args, **kwargs):
        averages, log_norm = real(*args, **kwargs)
        return averages, torch.full_like(log_norm, float("inf"))

    monkeypatch.setattr(oracle, "aggregate_with_normaliser", underflowing)
    fallback = oracle.evaluate(x, p)
    torch.testing.assert_close(fallback.force, expected.force, rtol=0, atol=1e-12)
    oracle.cache = {}
    pieces = [
        oracle.evaluate(x[:, :3], p[:, :3]),
        oracle.evaluate(x[:, 3:4], p[:, 3:4]),
        oracle.evaluate(x[:, 4:], p[:, 4:]),
    ]
    oracle.cache = None
    torch.testing.assert_close(torch.cat([e.force for e in pieces], 1), expected.force, rtol=0, atol=1e-12)
