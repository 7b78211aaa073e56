"""Checkpoints written atomically (temporary file in the same folder, fsync, rename): a checkpoint on
disk is always the old one or the new one, never a partial one. RNG states of torch, numpy and
python travel with them so that a resumed run continues exactly."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from sympformer.utils import atomic_write


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Set the generators to a :func:`capture_rng` state. Generator states are CPU byte tensors whatever
    device they seed; a checkpoint read with a CUDA ``map_location`` holds them on the GPU, so they are
    brought back first (torch refuses them there: "RNG state must be a torch.ByteTensor")."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # our own files: they hold numpy RNG state and python objects, so weights_only=False
    return torch.load(path, map_location=map_location, weights_only=False)
