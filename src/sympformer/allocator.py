"""Keep freed CPU memory inside the process (Linux with glibc), so that training steps stop paying for
page faults.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves large blocks (above a
threshold that adapts up to 32 MiB) with fresh ``mmap`` pages and gives them back on ``free``, and it
trims the top of its heap when more than a threshold is free. A training step allocates and frees the
same large activations every time (the fused head's logit chunks alone are 64 MiB, `nn/loss.py`), so
every step faults in, and zero-fills, fresh pages for them. :func:`tune_cpu_allocator` raises both
thresholds to their maximum (2 GiB): freed blocks stay in the heap and are reused by the next step.
The process then keeps its footprint until it exits, as a GPU caching allocator does. What PyTorch
holds at the peak does not change, but the resident set can exceed it, since a heap that is never
handed back fragments.

It matters for a workload that frees blocks above 32 MiB every step, such as a plain (tokens × 50k)
logit matrix: `benchmarks/vs_transformers.py` runs GPT-2 both ways. sympformer's own training step
no longer does (the fused loss reuses one logits buffer; the trainer's AdamW is fused): tuning
measured 0.92–1.21× over six runs of ``benchmarks/allocator.py``, within the machine's drift between
processes (RESULTS.md, "CPU allocator"; before those fixes it was 1.29–1.46× at the vocabulary-heavy
shapes). So it is **opt-in**: ``SYMPFORMER_CPU_ALLOCATOR=tuned`` makes the ``sympformer`` command and
the benchmark scripts call it (:func:`apply_allocator_choice`), and library users may call
``sympformer.tune_cpu_allocator()`` themselves. ``MALLOC_*`` / ``GLIBC_TUNABLES`` settings of your
own are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
LARGEST = 2**31 - 1  # mallopt takes a C int
ENV = "SYMPFORMER_CPU_ALLOCATOR"


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds to the maximum for this process. Returns True when they
    were set; False (and changes nothing) when the user set glibc malloc options of their own, or off
    Linux/glibc."""
    own_settings = "GLIBC_TUNABLES" in os.environ or any(name.startswith("MALLOC_") for name in os.environ)
    if sys.platform != "linux" or own_settings:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, LARGEST) == 1 and mallopt(M_TRIM_THRESHOLD, LARGEST) == 1


def apply_allocator_choice() -> bool:
    """What ``SYMPFORMER_CPU_ALLOCATOR`` asks for: "system" (the default) leaves the C library alone,
    "tuned" calls :func:`tune_cpu_allocator`. Returns whether the allocator was tuned."""
    choice = os.environ.get(ENV, "system")
    if choice not in ("system", "tuned"):
        raise ValueError(f"{ENV}={choice!r}: expected 'system' (the default) or 'tuned'")
    return choice == "tuned" and tune_cpu_allocator()
