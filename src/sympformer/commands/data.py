"""`sympformer data prepare | info`: token shards with manifests, offline."""

from __future__ import annotations

import argparse
import json
import sys

from sympformer.data import CorpusError, DataError, TokenizerError, TokenShards, prepare

EXAMPLES = """examples:
  sympformer data prepare --corpus shakespeare --tokenizer bytes --out data/shakespeare-bytes
  sympformer data prepare --corpus shakespeare --tokenizer bpe:1024 --out data/shakespeare-bpe1024
  sympformer data prepare --corpus 'files:~/texts/*.txt' --tokenizer gpt2 --out data/mytexts
  sympformer data prepare --corpus hf:roneneldan/TinyStories --tokenizer gpt2 --out data/tinystories
  sympformer data info data/shakespeare-bytes --verify
"""


def run_prepare(args: argparse.Namespace) -> int:
    try:
        manifest = prepare(args.corpus, args.tokenizer, args.out, chunk_chars=args.chunk_chars, progress=not args.quiet)
    except (CorpusError, TokenizerError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shards = manifest["shards"]
    print(
        f"wrote {args.out}: train {shards['train']['tokens']:,} tokens, val {shards['val']['tokens']:,} tokens "
        f"({manifest['dtype']}, vocabulary {manifest['tokenizer']['vocab_size']})"
    )
    return 0


def run_info(args: argparse.Namespace) -> int:
    try:
        shards = TokenShards.open(args.dir, verify_hash=args.verify)
        tokenizer = shards.tokenizer()
    except (DataError, TokenizerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(shards.manifest, indent=2))
    if args.verify:
        print("sha256 of every shard matches the manifest")
    sample = tokenizer.decode(shards.val[: args.sample_tokens].tolist())
    print(f"\nfirst {args.sample_tokens} validation tokens, decoded:\n{sample}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="prepare token shards (offline corpora and tokenizers)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prep = sub.add_parser(
        "prepare",
        help="tokenize a corpus into train.bin / val.bin + manifest.json",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prep.add_argument(
        "--corpus",
        default="shakespeare",
        help="shakespeare (embedded default), files:GLOB, or hf:NAME[:CONFIG] (default: shakespeare)",
    )
    prep.add_argument("--tokenizer", default="bytes", help="bytes, bpe:N (trained here), or gpt2 (default: bytes)")
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument(
        "--chunk-chars",
        type=int,
        default=1 << 20,
        help="characters tokenized at a time; bounds memory (default: 1 MiB)",
    )
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(handler=run_prepare)
    info = sub.add_parser("info", help="print a shard folder's manifest and a decoded sample")
    info.add_argument("dir", help="shard folder (with manifest.json)")
    info.add_argument("--verify", action="store_true", help="also check every shard's sha256")
    info.add_argument("--sample-tokens", type=int, default=200, help="tokens to decode (default: 200)")
    info.set_defaults(handler=run_info)
