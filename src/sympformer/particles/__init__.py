r"""The particle lab: attention as an interacting particle system, classical and accelerated.

Float64 by default (tensors follow torch's default dtype; pass float64 tensors), torch throughout so
that batched and GPU runs use the same code, no learned parameters.

Normalisation convention, used in every module: N particles stand for the empirical measure
ρ_N = (1/N) Σ_i δ_{x_i}; each particle has mass 1/N, so every sum over partners is a *mean*
(z_i = (1/N) Σ_j e^{x_iᵀ A x_j}, Gram(a, b) = (1/N) Σ_j a_j b_jᵀ, Stein flows average over j), and the
particle energy is U(X) = N·E(ρ_N), whose gradient at particle i is the Wasserstein gradient
∇ δE/δρ (x_i). See :mod:`.softmax` for the resulting equations.

- :mod:`.softmax`: softmax geometry (A, B, V = B A), energy, classical flow Γ, the accelerated
  damped-Hamiltonian system and H; SDPA fast path and dense reference.
- :mod:`.linear`: linear attention, its accelerated system and Hamiltonian, and the affine
  representation that is the matrix-ODE oracle of elliptical preservation.
- :mod:`.potentials`: external potentials; :mod:`.control`: the quadratic positive control (§4.2).
- :mod:`.stein`: Stein variational gradient flows (bilinear and RBF kernels, with and without repulsion).
- :mod:`.elliptical`: elliptical laws, estimators, affine-preservation checks.
"""

from sympformer.particles.control import QuadraticControl
from sympformer.particles.elliptical import (
    affine_fit,
    affine_residual,
    ellipse_outline,
    predicted_law,
    sample_elliptical,
    sample_mean,
    sample_scatter,
    tyler_scatter,
)
from sympformer.particles.linear import LinearAttention, MomentLinearAttention, evolve_representation
from sympformer.particles.potentials import QuadraticPotential
from sympformer.particles.softmax import AcceleratedSoftmaxSystem, ClassicalSoftmaxFlow, SoftmaxGeometry
from sympformer.particles.stein import BilinearKernel, RBFKernel, SteinFlow, stein_potential_flow, svgd_flow

__all__ = [
    "AcceleratedSoftmaxSystem",
    "BilinearKernel",
    "ClassicalSoftmaxFlow",
    "LinearAttention",
    "MomentLinearAttention",
    "QuadraticControl",
    "QuadraticPotential",
    "RBFKernel",
    "SoftmaxGeometry",
    "SteinFlow",
    "affine_fit",
    "affine_residual",
    "ellipse_outline",
    "evolve_representation",
    "predicted_law",
    "sample_elliptical",
    "sample_mean",
    "sample_scatter",
    "stein_potential_flow",
    "svgd_flow",
    "tyler_scatter",
]
