"""Correctness on the benchmark device before any timing: every architecture's loss and gradients there
against the same model in float64 on the CPU (the test suite's reference precision), at a tiny shape.

- float64 on the device: the same function to rounding (relative error ≤ 1e-10); on a GPU this runs
  the generic (unfused) kernels and the sentinel-key normaliser (the CPU tests take the same code
  with the CPU-only kernels switched off: tests/nn/test_device_paths.py);
- float32 on the device (TF32 off): relative error ≤ 1e-4; and again with every large-activation branch
  taken (`recompute.MIN_ELEMENTS` = 0: on a GPU the checkpoint regions around H1/R2's value groups and
  the v1 oracle's calls, the rebuilt LayerNorm inputs), which the tiny shape would not reach;
- bf16 autocast on the device: loss within 2 %, gradient cosine ≥ 0.99 against the float64 gradient.

Relative error: ‖got − want‖ / ‖want‖ over the loss and over all gradients stacked. Exit status 1 if
any architecture fails (the benchmarks that follow still run; their figures are then suspect).

    python benchmarks/gpu_check.py [--device cuda] [--archs B,H0,…]
"""

from __future__ import annotations

import argparse
import sys

import options
import torch

from sympformer.benchmarking import write_section
from sympformer.nn import ARCHS, SympFormerConfig, SympFormerLM, recompute, scalars_off_their_start
from sympformer.utils import markdown_table

TINY = dict(vocab_size=61, n_layer=2, n_head=2, n_embd=32, block_size=48)
LIMITS = {"fp64": 1e-10, "fp32": 1e-4, "fp32 large": 1e-4, "bf16 loss": 2e-2, "bf16 cosine": 0.99}


def loss_and_gradients(model: SympFormerLM, idx: torch.Tensor, bf16: bool = False) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.autocast(idx.device.type, dtype=torch.bfloat16, enabled=bf16):
        _, loss = model(idx, idx, return_logits=False)
    loss.backward()
    grads = [p.grad.double().flatten().cpu() for p in model.parameters() if p.grad is not None]
    return loss.item(), torch.cat(grads)


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def check(arch: str, device: str) -> dict[str, float]:
    """The four measures of one architecture (see the module docstring)."""
    model = SympFormerLM(SympFormerConfig(**TINY, arch=arch), seed=0).double()
    scalars_off_their_start(model)  # so that every term matters
    idx = torch.randint(0, TINY["vocab_size"], (3, TINY["block_size"]), generator=torch.Generator().manual_seed(1))
    ref_loss, ref_grad = loss_and_gradients(model, idx)
    on_device = idx.to(device)
    loss64, grad64 = loss_and_gradients(model.to(device), on_device)
    loss32, grad32 = loss_and_gradients(model.float(), on_device)
    threshold, recompute.MIN_ELEMENTS = recompute.MIN_ELEMENTS, 0
    try:
        loss32l, grad32l = loss_and_gradients(model, on_device)
    finally:
        recompute.MIN_ELEMENTS = threshold
    loss16, grad16 = loss_and_gradients(model, on_device, bf16=True)
    stack = lambda loss, grad: torch.cat([torch.tensor([loss], dtype=torch.float64), grad])
    reference = stack(ref_loss, ref_grad)
    return {
        "fp64": relative(stack(loss64, grad64), reference),
        "fp32": relative(stack(loss32, grad32), reference),
        "fp32 large": relative(stack(loss32l, grad32l), reference),
        "bf16 loss": abs(loss16 - ref_loss) / abs(ref_loss),
        "bf16 cosine": torch.nn.functional.cosine_similarity(grad16, ref_grad, dim=0).item(),
    }


def passes(m: dict[str, float]) -> bool:
    within = all(m[k] <= LIMITS[k] for k in ("fp64", "fp32", "fp32 large", "bf16 loss"))
    return within and m["bf16 cosine"] >= LIMITS["bf16 cosine"]  # NaN fails both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_device(parser)
    options.add_archs(parser, ",".join(ARCHS))
    options.add_results(parser)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 check is of float32
    torch.backends.cudnn.allow_tf32 = False
    rows, failed = [], []
    for arch in args.archs:
        try:
            m = check(arch, args.device)
        except Exception as error:  # report and go on: one broken architecture must not hide the others
            rows.append([arch, "error", "", "", "", "", repr(error)[:120]])
            failed.append(arch)
            continue
        ok = passes(m)
        failed += [] if ok else [arch]
        rows.append([arch, *(f"{m[k]:.1e}" for k in ("fp64", "fp32", "fp32 large", "bf16 loss"))])
        rows[-1].append(f"{m['bf16 cosine']:.4f}")
        rows[-1].append("ok" if ok else "FAIL")
        print(" | ".join(rows[-1]), flush=True)
    header = ["arch", "fp64 rel. error", "fp32 rel. error", "fp32, large-activation branches", "bf16 loss rel. error"]
    header += ["bf16 gradient cosine", ""]
    limits = ", ".join(f"{k} {'≥' if k == 'bf16 cosine' else '≤'} {v:g}" for k, v in LIMITS.items())
    body = f"Tiny shape {TINY}, batch 3, against float64 on the CPU; limits: {limits}.\n\n"
    body += markdown_table(header, rows) + f"\n{len(rows) - len(failed)} of {len(rows)} architectures pass.\n"
    print(body)
    device = args.device.split(":")[0]
    write_section(
        args.results, f"device-check-{device}", f"Correctness on the device ({args.device})", body, args.device
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
