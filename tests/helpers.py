"""Random test inputs (float64, seeded) shared by the test modules."""

from __future__ import annotations

import torch


def random_symmetric(d: int, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    m = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return scale * (m + m.T) / 2


def random_spd(d: int, generator: torch.Generator, floor: float = 0.5) -> torch.Tensor:
    m = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return m @ m.T / d + floor * torch.eye(d, dtype=torch.float64)


def graded_mesh(t0: float, t1: float, steps: int, grading: float = 0.3) -> list[float]:
    """A smooth non-uniform mesh t0 + (t1 − t0)·φ(s), φ(s) = s + grading·s(1 − s)."""
    return [t0 + (t1 - t0) * (s + grading * s * (1 - s)) for s in (k / steps for k in range(steps + 1))]


def observed_orders(errors: list[float]) -> list[float]:
    import math

    return [math.log2(a / b) for a, b in zip(errors, errors[1:], strict=False)]


def tiny_config(data_dir, **train):
    from sympformer.train import build

    values = {
        "model": {"arch": "R2", "vocab_size": 256, "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16},
        "data": {"dir": str(data_dir), "corpus": None},
        "train": {
            "max_steps": 12,
            "batch_size": 4,
            "eval_interval": 4,
            "eval_batches": 2,
            "log_interval": 2,
            "sample_tokens": 0,
            "warmup": 2,
            **train,
        },
    }
    return values, build(values)
