"""`sympformer train`: train one language model into a run folder.

The config (YAML) has the sections `model` (SympFormerConfig: arch, n_layer, n_head, n_embd,
block_size, vocab_size, …), `data` (dir, corpus, tokenizer) and `train` (max_steps or max_tokens,
batch_size, grad_accum, lr, min_lr_ratio, warmup, weight_decay, scalar_lr_mult, grad_clip,
eval_interval, eval_batches, seed, device, precision, compile, compile_mode, …). Unknown keys are
errors that list the valid ones. Multi-process: `torchrun --standalone --nproc_per_node=N -m sympformer train ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """examples:
  sympformer train --config configs/cpu-mini.yaml --set model.arch=H0 --out runs/h0
  sympformer train --config configs/cpu-mini.yaml --out runs/h0 --resume
  torchrun --standalone --nproc_per_node=2 -m sympformer train --config configs/cpu-mini.yaml --out runs/ddp
  # on a GPU, small models: compile with CUDA graphs
  sympformer train --config configs/paper-primary.yaml --out runs/gpu \\
    --set train.compile=true --set train.compile_mode=reduce-overhead
exit codes: 0 done, 2 bad configuration or data, 3 training diverged (NaN/Inf; the last good checkpoint is kept)
"""


def run(args: argparse.Namespace) -> int:
    from sympformer.data import CorpusError, DataError, TokenizerError
    from sympformer.train import ConfigError, NonCausalArchitecture, RunFolderError, TrainingDiverged, load, train

    try:
        config = load(args.config, args.set)
        out = Path(args.out or f"runs/{config.model.arch.lower()}-seed{config.train.seed}")
        summary = train(config, out, resume=args.resume, progress=not args.quiet, allow_noncausal=args.allow_noncausal)
    except (
        ConfigError,
        DataError,
        CorpusError,
        TokenizerError,
        RunFolderError,
        NonCausalArchitecture,
        FileNotFoundError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if summary:
        print(
            f"{summary['arch']}: final validation loss {summary['final_val_loss']:.4f} after {summary['tokens']:,} "
            f"tokens ({summary['wall_time_s']:.0f} s); run folder {out}"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a language model (B, Y, H0, H1, R2, …) into a run folder",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config file (sections model, data, train)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.lr=3e-4 (repeatable)",
    )
    parser.add_argument("--out", help="run folder (default: runs/<arch>-seed<seed>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--allow-noncausal",
        action="store_true",
        help="train a research architecture that fails the causality audit (v1_global_euler)",
    )
    parser.set_defaults(handler=run)
