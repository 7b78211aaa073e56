"""sympformer: accelerated attention.

Transformer attention read as an interacting particle system, and its inertial acceleration
(damped Hamiltonian dynamics, tokens with a position and a velocity), after Stein, Li and Steidl,
"SympFormer: Accelerated attention blocks via inertial dynamics on density manifolds"
(arXiv 2603.16535).

Subpackages:
    sympformer.integrators  schemes over (X, P) given an oracle, damping schedules
    sympformer.particles    the particle lab: energies, flows, Stein flows, elliptical laws
"""

__version__ = "0.1.0"

from sympformer.allocator import tune_cpu_allocator  # noqa: E402

__all__ = ["tune_cpu_allocator", "__version__"]
