"""Peak training memory of every architecture family against B (target ≤ 1.3× for the momentum
architectures, DESIGN.md). Each architecture runs three training steps in a fresh process: on CPU the
peak resident set above the process's own baseline (model built, before the first step), on a GPU
`torch.cuda.max_memory_allocated`.

    python benchmarks/memory.py [--device cpu] [--shapes primary,heavy,linear,v1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blocks_step_time import SHAPES  # noqa: E402

from sympformer.benchmarking import markdown_table, write_section  # noqa: E402

CHILD = r"""
import json, resource, sys, torch
from sympformer.nn import SympFormerConfig, SympFormerLM
fields, batch, arch, device = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
model = SympFormerLM(SympFormerConfig(**fields, arch=arch)).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
idx = torch.randint(0, fields["vocab_size"], (batch, fields["block_size"]), device=device)
if device.startswith("cuda"):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
for _ in range(3):
    optimizer.zero_grad(set_to_none=True)
    _, loss = model(idx, idx, return_logits=False)
    loss.backward()
    optimizer.step()
if device.startswith("cuda"):
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
print(json.dumps({"peak_mb": peak / 2**20}))
"""


def measure(fields: dict, batch: int, arch: str, device: str) -> float | None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(fields), str(batch), arch, device],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default="primary,heavy,linear,v1")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    sections = []
    for shape in args.shapes.split(","):
        fields, batch, archs, _ = SHAPES[shape]
        peaks = {arch: measure(fields, batch, arch, args.device) for arch in archs}
        base = peaks[archs[0]]
        rows = [
            [arch, "failed" if mb is None else f"{mb:,.1f}", "—" if mb is None or not base else f"{mb / base:.2f}"]
            for arch, mb in peaks.items()
        ]
        text = (
            f"### shape `{shape}`: {fields}, batch {batch}\n\n"
            + markdown_table(["arch", "peak training memory (MiB)", f"× {archs[0]}"], rows)
            + "\n"
        )
        print(text, flush=True)
        sections.append(text)
    device = args.device.split(":")[0]
    write_section(
        args.results, f"memory-{device}", f"Peak training memory ({args.device})", "\n".join(sections), args.device
    )


if __name__ == "__main__":
    main()
