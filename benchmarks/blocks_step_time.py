"""Training-step time of the momentum blocks against their baseline and H0, interleaved in one process.

Shapes: the paper's primary shape (4L/4H/64d, context 128, vocabulary 50304, batch 8), an
attention-heavy shape (4L/4H/256d, context 1024, byte vocabulary, batch 2), and the paper's linear
shape (4L/4H/64d, context 512, vocabulary 50304, batch 4) for the *_L family, and the v1 shape
(4L/4H/128d, context 512, bytes, batch 4) for the v1 schemes (softmax and linear oracles). Every
causal architecture appears in one of them (`v1_global_euler`, the leaking witness, does not).
Targets (DESIGN.md): H1 ≤ +15 % and R2 ≤ +25 % over H0; Y and H0 ≤ +10 % over B; R2_L ≤ 1.5× H0_L;
one-call v1 schemes ≤ 1.2× B; v1 doubling ≤ 3.5× B and Strang ≤ 2.0× B.

    python benchmarks/blocks_step_time.py [--device cpu] [--rounds 5] [--repeats 2] [--shapes primary,heavy,linear]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import options
import torch

from sympformer.allocator import apply_allocator_choice
from sympformer.benchmarking import interleaved_times, median, training_optimizer, write_section
from sympformer.nn import SympFormerConfig, SympFormerLM
from sympformer.train.config import compile_model
from sympformer.utils import markdown_table

SOFTMAX = ("B", "B_cap", "Y", "H0", "H1", "R2", "H1_LA", "R2_LA")
LINEAR = ("B_L", "Y_L", "H0_L", "H1_L", "R2_L")
V1_SCHEMES = ("fe", "pe", "exp_pe", "halfdamp_pe", "ab2", "etd_ab2")
V1 = ("B", *[f"v1_{s}" for s in V1_SCHEMES], "v1_doubling", "v1_strang", *[f"v1_lin_{s}" for s in V1_SCHEMES])
SHAPES = {  # name: (model fields, batch, architectures, reference); the first architecture is the baseline
    "primary": (dict(vocab_size=50304, n_layer=4, n_head=4, n_embd=64, block_size=128), 8, SOFTMAX, "H0"),
    "heavy": (dict(vocab_size=256, n_layer=4, n_head=4, n_embd=256, block_size=1024), 2, SOFTMAX, "H0"),
    "linear": (dict(vocab_size=50304, n_layer=4, n_head=4, n_embd=64, block_size=512), 4, LINEAR, "H0_L"),
    "v1": (dict(vocab_size=256, n_layer=4, n_head=4, n_embd=128, block_size=512), 4, V1, "v1_pe"),
}


def train_step_fn(model, idx, optimizer, precision):
    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(idx.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            _, loss = model(idx, idx, return_logits=False)
        loss.backward()
        optimizer.step()

    return step


def with_benchmarks_on_path(code: str) -> str:
    """A child process's code (``python -c``), able to import this folder's modules."""
    return f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n" + code


def shape_batch(shape: str, device: str = "cpu") -> torch.Tensor:
    """The benchmark batch of ``shape``: seeded tokens (batch, context), the same in every script."""
    fields, batch, _, _ = SHAPES[shape]
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, fields["vocab_size"], (batch, fields["block_size"]), generator=generator).to(device)


def shape_step(
    shape: str, arch: str, device: str = "cpu", precision: str = "fp32", compile_mode: str | None = None, **overrides
):
    """One training step of ``arch`` at ``shape`` on its benchmark batch, with the trainer's optimiser
    (``overrides``: further model fields, e.g. activation_checkpointing=True). With ``compile_mode`` the
    model is compiled (torch.compile's mode; "default" is its None), the optimiser's step is not."""
    model = SympFormerLM(SympFormerConfig(**SHAPES[shape][0], **overrides, arch=arch)).to(device)
    runner = model if compile_mode is None else compile_model(model, compile_mode)
    return train_step_fn(runner, shape_batch(shape, device), training_optimizer(model), precision)


def run(shape: str, device: str, rounds: int, repeats: int, precision: str, checkpointing: bool = False) -> str:
    fields, batch, archs, h0 = SHAPES[shape]
    overrides = {"activation_checkpointing": True} if checkpointing else {}
    base = archs[0]
    contenders = {arch: shape_step(shape, arch, device, precision, **overrides) for arch in archs}
    times = interleaved_times(contenders, rounds=rounds, repeats=repeats, device=device)
    med = {arch: median(times[arch]) for arch in archs}
    rows = [
        [
            arch,
            f"{med[arch] * 1e3:.1f}",
            f"{batch * fields['block_size'] / med[arch]:,.0f}",
            f"{med[arch] / med[base]:.3f}",
            f"{med[arch] / med[h0]:.3f}",
        ]
        for arch in archs
    ]
    header = ["arch", "ms / step (median)", "tokens / s", f"× {base}", f"× {h0}"]
    return f"### shape `{shape}`: {fields}, batch {batch}, {precision}\n\n" + markdown_table(header, rows) + "\n"


def blocks_section(shape: str, device: str, precision: str = "fp32", checkpointing: bool = False) -> str:
    """The RESULTS.md key of this script's section for ``shape`` (``device``: "cpu", "cuda", …)."""
    return f"blocks-{shape}-{device.split(':')[0]}-{precision}" + ("-ckpt" if checkpointing else "")


def compile_section(shape: str, device: str, precision: str = "fp32", mode: str | None = None) -> str:
    """The RESULTS.md key of compile.py's section for ``shape`` (mode None or "default": torch's default)."""
    key = f"compile-{device.split(':')[0]}" + ("" if shape == "primary" else f"-{shape}")
    key += f"-{mode}" if mode not in (None, "default") else ""
    return key + ("" if precision == "fp32" else f"-{precision}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_step_timing(parser, SHAPES, rounds=5, repeats=2)
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="every architecture (the baseline too) with activation_checkpointing: true (the time of the memory lever)",
    )
    options.add_results(parser)
    args = parser.parse_args()
    apply_allocator_choice()  # as the sympformer command does (SYMPFORMER_CPU_ALLOCATOR)
    for shape in args.shapes:
        body = run(shape, args.device, args.rounds, args.repeats, args.precision, args.activation_checkpointing)
        print(body)
        device = args.device.split(":")[0]
        mode = ", activation checkpointing" if args.activation_checkpointing else ""
        title = f"Momentum blocks: training-step time, shape `{shape}` ({args.device}, {args.precision}{mode})"
        key = blocks_section(shape, device, args.precision, args.activation_checkpointing)
        write_section(args.results, key, title, body, args.device)


if __name__ == "__main__":
    main()
