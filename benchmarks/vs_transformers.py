"""Baseline B against an equally configured Hugging Face `transformers` GPT2LMHeadModel (random init;
same width, depth, heads, context and vocabulary; dropout 0; SDPA attention; tied head), training
steps on the same batches, interleaved in one process. Target (DESIGN.md): B tokens/s ≥ 1.2× GPT-2.

    pip install -e '.[bench]'   # transformers, only for this benchmark
    python benchmarks/vs_transformers.py [--device cpu] [--shapes primary,heavy] [--allocator tuned|system]

On CPU the C library's allocator matters here: with glibc's defaults every step maps and faults in
fresh pages for GPT-2's full (tokens × vocabulary) logits, log-softmax and gradient, while B's fused
loss reuses one chunk-sized buffer. `--allocator system` (the default) leaves glibc's defaults, as both
the `sympformer` command and a `transformers` user get them; `--allocator tuned` gives both models
`tune_cpu_allocator()`, which removes GPT-2's page faults. Each setting writes its own RESULTS.md section.
"""

from __future__ import annotations

import argparse
import os

import options
import torch

from sympformer.allocator import tune_cpu_allocator  # noqa: E402
from sympformer.benchmarking import interleaved_times, median, training_optimizer, write_section
from sympformer.nn import SympFormerConfig, SympFormerLM
from sympformer.utils import markdown_table

SHAPES = {
    "primary": (dict(vocab_size=50304, n_layer=4, n_head=4, n_embd=64, block_size=128), 8),
    "heavy": (dict(vocab_size=256, n_layer=4, n_head=4, n_embd=256, block_size=1024), 2),
}


def gpt2(fields: dict):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=fields["vocab_size"],
        n_positions=fields["block_size"],
        n_embd=fields["n_embd"],
        n_layer=fields["n_layer"],
        n_head=fields["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config)


def step_fn(model, idx, hf: bool, precision: str):
    optimizer = training_optimizer(model)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(idx.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(idx, labels=idx).loss if hf else model(idx, idx, return_logits=False)[1]
        loss.backward()
        optimizer.step()

    return step


def run(shape: str, device: str, rounds: int, repeats: int, precision: str) -> str:
    fields, batch = SHAPES[shape]
    idx = torch.randint(
        0, fields["vocab_size"], (batch, fields["block_size"]), generator=torch.Generator().manual_seed(0)
    ).to(device)
    ours = SympFormerLM(SympFormerConfig(**fields, arch="B")).to(device)
    theirs = gpt2(fields).to(device)
    times = interleaved_times(
        {
            "sympformer B": step_fn(ours, idx, False, precision),
            "transformers GPT-2": step_fn(theirs, idx, True, precision),
        },
        rounds=rounds,
        repeats=repeats,
        device=device,
    )
    tokens = batch * fields["block_size"]
    med = {name: median(values) for name, values in times.items()}
    rows = [
        [
            name,
            f"{sum(p.numel() for p in model.parameters()):,}",
            f"{med[name] * 1e3:.1f}",
            f"{tokens / med[name]:,.0f}",
            f"{med['transformers GPT-2'] / med[name]:.3f}",
        ]
        for name, model in (("sympformer B", ours), ("transformers GPT-2", theirs))
    ]
    return (
        f"### shape `{shape}`: {fields}, batch {batch}, {precision}\n\n"
        + markdown_table(["model", "parameters", "ms / step", "tokens / s", "speed vs GPT-2"], rows)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_step_timing(parser, SHAPES, rounds=5, repeats=2)
    parser.add_argument(
        "--allocator",
        default="system",
        choices=["system", "tuned"],
        help="CPU: glibc's defaults (default), or tune_cpu_allocator() for both models",
    )
    options.add_results(parser)
    args = parser.parse_args()
    tuned = args.allocator == "tuned" and tune_cpu_allocator()
    import transformers

    body = "\n".join(run(s, args.device, args.rounds, args.repeats, args.precision) for s in args.shapes)
    device = args.device.split(":")[0]
    allocator = "" if device != "cpu" else (", tuned allocator" if tuned else ", glibc's default allocator")
    body = f"transformers {transformers.__version__}\n\n" + body
    print(body)
    write_section(
        args.results,
        f"vs-transformers-{device}-{args.precision}" + ("-tuned-allocator" if tuned else ""),
        f"Baseline B vs transformers GPT-2 ({args.device}, {args.precision}{allocator})",
        body,
        args.device,
    )


if __name__ == "__main__":
    main()
