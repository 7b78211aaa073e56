"""`torch.compile` on and off: training-step time of B, H0 and R2 at the paper's primary shape,
eager and compiled models interleaved in one process after warm-up (the compile time is reported
separately).

    python benchmarks/compile.py [--device cpu] [--archs B,H0,R2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sympformer.benchmarking import interleaved_times, markdown_table, median, synchronize, write_section
from sympformer.nn import SympFormerConfig, SympFormerLM

FIELDS = dict(vocab_size=50304, n_layer=4, n_head=4, n_embd=64, block_size=128)
BATCH = 8


def step_fn(model, idx):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        _, loss = model(idx, idx, return_logits=False)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", default="B,H0,R2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    idx = torch.randint(
        0, FIELDS["vocab_size"], (BATCH, FIELDS["block_size"]), generator=torch.Generator().manual_seed(0)
    ).to(args.device)
    contenders, compile_seconds = {}, {}
    for arch in args.archs.split(","):
        eager = SympFormerLM(SympFormerConfig(**FIELDS, arch=arch)).to(args.device)
        compiled = torch.compile(SympFormerLM(SympFormerConfig(**FIELDS, arch=arch)).to(args.device))
        contenders[f"{arch} eager"] = step_fn(eager, idx)
        contenders[f"{arch} compiled"] = step_fn(compiled, idx)
        start = time.perf_counter()
        contenders[f"{arch} compiled"]()  # triggers the compilation
        synchronize(args.device)
        compile_seconds[arch] = time.perf_counter() - start
    times = interleaved_times(contenders, rounds=args.rounds, repeats=2, device=args.device)
    rows = []
    for arch in args.archs.split(","):
        eager, compiled = median(times[f"{arch} eager"]), median(times[f"{arch} compiled"])
        rows.append(
            [
                arch,
                f"{eager * 1e3:.1f}",
                f"{compiled * 1e3:.1f}",
                f"{eager / compiled:.2f}",
                f"{compile_seconds[arch]:.0f}",
            ]
        )
    body = f"shape {FIELDS}, batch {BATCH}, fp32\n\n" + markdown_table(
        ["arch", "eager ms / step", "compiled ms / step", "speed-up", "compile time (s)"], rows
    )
    print(body)
    device = args.device.split(":")[0]
    write_section(args.results, f"compile-{device}", f"torch.compile on and off ({args.device})", body, args.device)


if __name__ == "__main__":
    main()
