"""Particle-lab scale: time and peak memory of ONE evaluation of the accelerated softmax right-hand
side (velocity and force, float64, d = 16) for N = 10³ … 10⁵ particles, SDPA fast path against the
dense reference. Each measurement runs in a fresh process (peak RSS above that process's baseline; on a
GPU the allocated peak above the inputs, after a warm-up evaluation of 256 particles).
The dense reference is skipped where its N×N float64 matrices would not fit (reported, not run).

    python benchmarks/particles_scale.py [--sizes 1000,10000,100000] [--dense-limit-gb 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import options

from sympformer.benchmarking import write_section
from sympformer.utils import markdown_table

CHILD = r"""
import json, resource, sys, time, torch
from sympformer.particles import AcceleratedSoftmaxSystem, SoftmaxGeometry
n, d, dense, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "dense", sys.argv[4]
g = torch.Generator().manual_seed(0)
a = torch.randn(d, d, generator=g, dtype=torch.float64) / d
geometry = SoftmaxGeometry((a + a.T) / 2, torch.eye(d, dtype=torch.float64)).to(device)
x = torch.randn(n, d, generator=g, dtype=torch.float64).to(device)
y = torch.randn(n, d, generator=g, dtype=torch.float64).to(device)
system = AcceleratedSoftmaxSystem(geometry, dense=dense)
cuda = device.startswith("cuda")
if cuda:  # the first call's kernel loads and library handles, on a small subset, out of the figures
    system(x[:256], y[:256])
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
ev = system(x, y)
if cuda:
    torch.cuda.synchronize()
elapsed = time.perf_counter() - start
peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
assert torch.isfinite(ev.force).all()
print(json.dumps({"seconds": elapsed, "peak_mb": (peak - base) / 2**20}))
"""


def measure(n: int, d: int, path: str, device: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(d), path, device], capture_output=True, text=True, timeout=3600
    )
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        default="1000,10000,100000",
        type=options.positive_ints,
        help="particle counts N, comma-separated (default: %(default)s)",
    )
    options.add_count(parser, "--dim", 16, "dimension d")
    options.add_device(parser, "cpu")
    parser.add_argument(
        "--dense-limit-gb",
        type=float,
        default=8.0,
        help="skip the dense reference when its N×N matrices need more (default: 8 GB)",
    )
    options.add_results(parser)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        for path in ("fast", "dense"):
            dense_gb = 6 * n * n * 8 / 1e9  # ~6 N×N float64 matrices alive in the dense reference
            if path == "dense" and dense_gb > args.dense_limit_gb:
                rows.append([n, path, "not run", f"would need ≈ {dense_gb:,.0f} GB"])
                continue
            m = measure(n, args.dim, path, args.device)
            if "error" in m:
                rows.append([n, path, "failed", m["error"]])
            else:
                rows.append([n, path, f"{m['seconds']:.3f}", f"{m['peak_mb']:,.1f} MB"])
            print(rows[-1], flush=True)
    body = markdown_table(["N", "path", "seconds / evaluation", "peak memory above baseline"], rows)
    device = args.device.split(":")[0]
    write_section(
        args.results,
        f"particles-scale-{device}",
        f"Particle lab: accelerated softmax RHS, d = {args.dim} ({args.device}, float64)",
        body,
        args.device,
    )
    print(body)


if __name__ == "__main__":
    main()
