"""Input checks for the particle lab: every failure is a ValueError that names the problem."""

from __future__ import annotations

import torch
from torch import Tensor


def as_matrix(name: str, value, dtype=None) -> Tensor:
    if dtype is None and not (isinstance(value, Tensor) and value.is_floating_point()):
        dtype = torch.get_default_dtype()  # lists and integer tensors take the default; float tensors keep theirs
    matrix = torch.as_tensor(value, dtype=dtype)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {tuple(matrix.shape)}")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"{name} has non-finite entries")
    return matrix


def check_symmetric(name: str, matrix: Tensor, rtol: float = 1e-10) -> None:
    gap = (matrix - matrix.mT).abs().max().item()
    if gap > rtol * max(1.0, matrix.abs().max().item()):
        raise ValueError(f"{name} must be symmetric (max |{name} − {name}ᵀ| = {gap:.3g})")


def check_positive_definite(name: str, matrix: Tensor) -> None:
    check_symmetric(name, matrix)
    eigenvalues = torch.linalg.eigvalsh(matrix)
    if eigenvalues.min().item() <= 0:
        raise ValueError(f"{name} must be positive definite (smallest eigenvalue {eigenvalues.min().item():.3g})")


def check_same_size(names: tuple[str, str], a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_particles(name: str, x: Tensor, dim: int) -> None:
    """Particles are a tensor (..., N, d) with d = ``dim`` and N ≥ 1."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch tensor of shape (..., N, {dim})")
    if x.ndim < 2 or x.shape[-1] != dim or x.shape[-2] < 1:
        raise ValueError(f"{name} must have shape (..., N, {dim}), got {tuple(x.shape)}")
