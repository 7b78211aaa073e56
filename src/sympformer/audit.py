"""The causality audit: three output-level checks that a language model is autoregressive.

1. suffix perturbation: changing the tokens after a cut leaves the logits up to the cut unchanged;
2. truncation: the logits of the prefix run alone equal the prefix of the full run (this catches a
   normalisation by the full length T instead of the prefix count i);
3. gradient: the gradient of the outputs up to the cut with respect to the later inputs (token
   embeddings and initial velocities, at several velocity scales) is exactly zero.

A runtime check of attention mass cannot see a leak through a force that differentiates a
whole-sequence energy (notes §7): only output-level checks do. The audit runs in float64 on a copy
of the model; `compare` and `demo` refuse an architecture that fails it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from sympformer.nn import SympFormerConfig, SympFormerLM, scalars_off_their_start


@dataclass
class Check:
    name: str
    worst: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.worst <= self.tolerance


@dataclass
class AuditReport:
    arch: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def worst(self) -> Check:
        return max(self.checks, key=lambda c: c.worst / max(c.tolerance, 1e-300))

    def line(self) -> str:
        if self.passed:
            return f"{self.arch}: PASS (" + ", ".join(f"{c.name} {c.worst:.1e}" for c in self.checks) + ")"
        w = self.worst
        return f"{self.arch}: LEAK — {w.name} moved earlier outputs by {w.worst:.3g} (tolerance {w.tolerance:.0e})"


@torch.no_grad()
def _logits(model, idx):
    return model(idx)[0]


def audit_causality(
    model: SympFormerLM,
    length: int = 24,
    batch: int = 2,
    seed: int = 0,
    tolerance: float = 1e-10,
    velocity_scales=(0.0, 1.0, 10.0),
) -> AuditReport:
    """Run the three checks on random inputs; the model is copied to float64 and not changed."""
    model = copy.deepcopy(model).double().eval()
    config = model.config
    length = min(length, config.block_size)
    cut = length // 2 - 1
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, config.vocab_size, (batch, length), generator=g)
    report = AuditReport(config.arch)

    full = _logits(model, idx)
    changed = idx.clone()
    changed[:, cut + 1 :] = torch.randint(0, config.vocab_size, changed[:, cut + 1 :].shape, generator=g)
    suffix = (_logits(model, changed)[:, : cut + 1] - full[:, : cut + 1]).abs().max().item()
    report.checks.append(Check("suffix perturbation", suffix, tolerance))
    prefix = (_logits(model, idx[:, : cut + 1]) - full[:, : cut + 1]).abs().max().item()
    report.checks.append(Check("truncation", prefix, tolerance))

    worst_grad = 0.0
    weights = torch.randn(batch, cut + 1, config.vocab_size, generator=g, dtype=torch.float64)
    for scale in velocity_scales:
        x0, v0 = model.embed(idx)
        x0 = x0.detach().requires_grad_(True)
        inputs = [x0]
        if v0 is not None:
            v0 = scale * v0.detach() + (scale > 0) * torch.randn(v0.shape, generator=g, dtype=v0.dtype) * scale
            v0 = v0.requires_grad_(True)
            inputs.append(v0)
        with torch.enable_grad():
            logits = model.forward_embedded(x0, v0)
            grads = torch.autograd.grad((logits[:, : cut + 1] * weights).sum(), inputs, allow_unused=True)
        for grad in grads:
            if grad is not None:
                worst_grad = max(worst_grad, grad[:, cut + 1 :].abs().max().item())
        if v0 is None:
            break
    report.checks.append(Check("gradient from later inputs", worst_grad, 0.0))
    return report


def audit_arch(arch: str, seed: int = 0, **shape) -> AuditReport:
    """Audit a fresh small model of ``arch`` (tiny default shape; override with model fields)."""
    fields = {"vocab_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 32, **shape, "arch": arch}
    config = SympFormerConfig(**fields)
    model = SympFormerLM(config, seed=seed)
    scalars_off_their_start(model)  # so that every term acts
    return audit_causality(model, seed=seed)
