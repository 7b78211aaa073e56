"""`sympformer sample`: generate text from a trained run (cached decoding, velocity stream included)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from sympformer.data import DataError, TokenShards
    from sympformer.nn import SympFormerLM

    run_dir = Path(args.run)
    try:
        model = SympFormerLM.from_pretrained(run_dir / "model", map_location=args.device)
        config = json.loads((run_dir / "config.json").read_text())
        shards = TokenShards.open(config["data"]["dir"])
        tokenizer = shards.tokenizer()
    except (FileNotFoundError, DataError) as exc:
        print(f"error: {exc} (is {run_dir} a finished run folder?)", file=sys.stderr)
        return 2
    ids = tokenizer.encode(args.prompt) or [0]
    prompt = torch.tensor([ids[-model.config.block_size :]], device=args.device)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    for _ in range(args.num_samples):
        out = model.generate(
            prompt,
            args.tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            generator=generator,
            vocab_limit=shards.vocab_size,
        )
        print(tokenizer.decode(out[0].tolist()))
        print("-" * 40)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sample", help="generate text from a trained run", description=__doc__)
    parser.add_argument("--run", required=True, help="run folder written by `sympformer train`")
    parser.add_argument("--prompt", default="\n", help="prompt text (default: a newline)")
    parser.add_argument("--tokens", type=int, default=200, help="new tokens (default: 200)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=40, help="sample from the k most likely tokens (default: 40)")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(handler=run)
