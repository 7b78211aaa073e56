"""Command-line options the benchmark scripts share: one spelling, one help text and one check each.

A bad value is argparse's own error (usage, the option, what is wrong and the valid values; exit
status 2) before anything is built or measured, not a traceback from deep inside a run. List options
("primary,heavy", "B,H0", "heavy:B,heavy:H0") arrive parsed, as lists.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def name_list(valid: Iterable[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of ``what`` (say "shapes"), each one of ``valid``."""
    valid = list(valid)

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in valid]
        if unknown or not items:
            found = f"unknown {what} {', '.join(unknown)}" if unknown else f"no {what} given"
            raise argparse.ArgumentTypeError(f"{found}; valid: {', '.join(valid)}")
        return items

    return parse


def case_list(shapes: Iterable[str]) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated ``shape:arch`` cases, each shape one of ``shapes`` and each
    architecture one the model knows."""
    from sympformer.nn.config import ARCHS

    shapes = list(shapes)
    shape_of, arch_of = name_list(shapes, "shapes"), name_list(ARCHS, "architectures")

    def parse(text: str) -> list[str]:
        cases = [case.strip() for case in text.split(",") if case.strip()]
        if not cases:
            raise argparse.ArgumentTypeError("no cases given; write them as shape:arch,shape:arch")
        for case in cases:
            shape, sep, arch = case.partition(":")
            if not sep:
                raise argparse.ArgumentTypeError(f"case {case!r} is not shape:arch (shapes: {', '.join(shapes)})")
            shape_of(shape), arch_of(arch)
        return cases

    return parse


def device_name(text: str) -> str:
    """An argparse type: "cpu", "cuda" or "cuda:N", where a CUDA device exists."""
    kind = text.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; valid: cpu, cuda, cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA device (torch {torch.__version__})")
    return text


def add_results(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        default=str(RESULTS),
        help="the Markdown file whose section this run rewrites (default: %(default)s)",
    )


def add_device(parser: argparse.ArgumentParser, default: str | None = None, cuda_only: str | None = None) -> None:
    """--device; ``default`` None: cuda where available, else cpu. ``cuda_only``: the script needs a CUDA
    device, and this says why (the error's text where there is none)."""
    default = default or ("cuda" if torch.cuda.is_available() else "cpu")

    def device(text: str) -> str:
        text = device_name(text)
        if cuda_only and not text.startswith("cuda"):
            raise argparse.ArgumentTypeError(f"{text}: {cuda_only}")
        return text

    def no_cuda(text: str) -> str:
        raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA device; {cuda_only}")

    kind = no_cuda if cuda_only and not torch.cuda.is_available() else device
    parser.add_argument("--device", default=default, type=kind, help="cpu, cuda or cuda:N (default: %(default)s)")


def add_shapes(parser: argparse.ArgumentParser, shapes: Iterable[str], default: str | None = None) -> None:
    """--shapes: a list of the benchmark shapes ``shapes`` (default: every one of them)."""
    shapes = list(shapes)
    parser.add_argument(
        "--shapes",
        default=default or ",".join(shapes),
        type=name_list(shapes, "shapes"),
        help=f"comma-separated, of {', '.join(shapes)} (default: %(default)s)",
    )


def add_archs(parser: argparse.ArgumentParser, default: str, help: str = "comma-separated (default: %(default)s)"):
    """--archs: a list of the model's architectures."""
    from sympformer.nn.config import ARCHS

    parser.add_argument("--archs", default=default, type=name_list(ARCHS, "architectures"), help=help)


def add_cases(parser: argparse.ArgumentParser, shapes: Iterable[str], default: str, help: str) -> None:
    """--cases: shape:arch pairs (:func:`case_list`)."""
    parser.add_argument("--cases", default=default, type=case_list(shapes), help=help + " (default: %(default)s)")


def add_count(parser: argparse.ArgumentParser, flag: str, default: int, help: str) -> None:
    """An option that takes a whole number ≥ 1."""
    parser.add_argument(flag, type=positive_int, default=default, help=f"{help} (default: %(default)s)")


def add_rounds(parser: argparse.ArgumentParser, default: int, help: str = "interleaved rounds") -> None:
    add_count(parser, "--rounds", default, help)


def add_step_timing(parser: argparse.ArgumentParser, shapes: Iterable[str], rounds: int, repeats: int) -> None:
    """What a script that times training steps at benchmark shapes takes: --device, --rounds, --repeats,
    --shapes and --precision."""
    add_device(parser)
    add_rounds(parser, rounds)
    add_count(parser, "--repeats", repeats, "steps timed per contender and round")
    add_shapes(parser, shapes)
    add_precision(parser)


def add_precision(parser: argparse.ArgumentParser, default: str = "fp32") -> None:
    parser.add_argument(
        "--precision", default=default, choices=["fp32", "bf16"], help="bf16: autocast (default: %(default)s)"
    )


def add_compile_mode(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """A command-line option for torch.compile's mode (the trainer's ``train.compile_mode`` values)."""
    from sympformer.train.config import COMPILE_MODES

    parser.add_argument(flag, default=None, choices=COMPILE_MODES, help=help)


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def positive_ints(text: str) -> list[int]:
    """An argparse type: comma-separated integers ≥ 1."""
    values = [positive_int(item.strip()) for item in text.split(",") if item.strip()]
    if not values:
        raise argparse.ArgumentTypeError("no numbers given")
    return values
