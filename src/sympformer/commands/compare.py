"""`sympformer compare`: train several architectures over several seeds and report the comparison.

Every architecture is audited for causality first (a leaking one is refused). Runs are paired (same
seed: same data order, shared initial weights); the parameter-matched control B_cap joins B by
default. Finished runs are skipped, interrupted ones resume. The report (report.md, report.json,
plots) gives final validation NLL mean (SD), parameters, speed, paired differences against the
reference with t-tests, 95 % intervals and Holm correction, and losses at equal tokens and equal
wall-clock."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  sympformer compare --preset cpu-mini --archs B,Y,H0,H1,R2 --seeds 3 --out runs/compare-mini
  sympformer compare --config my.yaml --set train.max_steps=2000 --archs B,H0 --seeds 5 --out runs/cmp
  sympformer report runs/compare-mini --reference H0
"""


def run(args: argparse.Namespace) -> int:
    from sympformer.analysis.compare import LeakingArchitecture, preset_path, run_comparison
    from sympformer.data import CorpusError, DataError, TokenizerError
    from sympformer.train import ConfigError, TrainingDiverged, load

    try:
        path = args.config or (preset_path(args.preset) if args.preset else None)
        if path is None:
            raise ConfigError("give --config FILE or --preset NAME")
        config = load(path, args.set)
        result = run_comparison(
            config,
            [a.strip() for a in args.archs.split(",") if a.strip()],
            args.seeds,
            args.out,
            reference=args.reference,
            include_cap=not args.no_cap,
            progress=not args.quiet,
        )
    except LeakingArchitecture as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, DataError, CorpusError, TokenizerError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(result["markdown"])
    print(f"report: {args.out}/report.md (and report.json, loss_vs_tokens.png, loss_vs_wall.png, dynamics.png)")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from sympformer.analysis import build_report

    try:
        result = build_report(args.dir, args.reference)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result["markdown"])
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="multi-seed comparison of architectures with statistics",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--archs", default="B,Y,H0,H1,R2", help="comma list (default: B,Y,H0,H1,R2; B_cap joins B)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per architecture (default: 3)")
    parser.add_argument("--config", help="YAML config (sections model, data, train)")
    parser.add_argument("--preset", help="a preset from configs/: cpu-mini, paper-primary, paper-linear, paper-v1")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override (repeatable)")
    parser.add_argument("--out", required=True, help="comparison folder (runs/ inside, report.md beside)")
    parser.add_argument("--reference", default="B", help="architecture the others are tested against (default: B)")
    parser.add_argument("--no-cap", action="store_true", help="do not add the parameter-matched control B_cap")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)
    report = subparsers.add_parser(
        "report",
        help="rebuild a comparison report from its run folders",
        description="Rebuild report.md, report.json and the plots of a comparison folder.",
    )
    report.add_argument("dir", help="comparison folder (with runs/)")
    report.add_argument("--reference", default="B")
    report.set_defaults(handler=run_report)
