"""The `sympformer` command line.

Each subcommand lives in its own module and registers itself through ``register(subparsers)``;
this file only assembles them. Subcommands exist only once they do real work.
"""

from __future__ import annotations

import argparse
import sys

from sympformer import __version__
from sympformer.allocator import apply_allocator_choice
from sympformer.commands import audit, compare, data, demo, particles, sample, train

SUBCOMMANDS = (demo, particles, data, train, sample, compare, audit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sympformer",
        description=(
            "Accelerated attention: attention as an interacting particle system and its inertial "
            "(damped-Hamiltonian) acceleration. Run `sympformer COMMAND --help` for each command."
        ),
        epilog=(
            "environment: SYMPFORMER_CPU_ALLOCATOR=tuned keeps freed CPU memory in the process (glibc); "
            "the default, system, leaves the C library's allocator as it is."
        ),
    )
    parser.add_argument("--version", action="version", version=f"sympformer {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        apply_allocator_choice()  # SYMPFORMER_CPU_ALLOCATOR=tuned keeps freed memory in the process (allocator.py)
    except ValueError as error:
        print(f"sympformer: {error}", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
