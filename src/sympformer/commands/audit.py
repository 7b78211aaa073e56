"""`sympformer audit causality`: check that architectures are autoregressive (suffix perturbation,
truncation, zero gradient from later inputs), in float64 on random inputs."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from sympformer.audit import audit_arch
    from sympformer.nn import ARCHS, CAUSAL_ARCHS

    names = list(ARCHS) if args.arch == "all" else [a.strip() for a in args.arch.split(",")]
    unknown = [a for a in names if a not in ARCHS]
    if unknown:
        print(f"error: unknown arch {', '.join(unknown)}; valid: all, {', '.join(ARCHS)}")
        return 2
    failures = 0
    for arch in names:
        report = audit_arch(arch, seed=args.seed)
        expected = arch in CAUSAL_ARCHS
        note = "" if report.passed == expected else "  <-- UNEXPECTED"
        if not expected:
            note += "  (research witness: must leak)" if not report.passed else ""
        print(report.line() + note)
        failures += report.passed != expected
    return 1 if failures else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("audit", help="causality audit of the architectures", description=__doc__)
    sub = parser.add_subparsers(dest="audit_command", metavar="CHECK", required=True)
    causality = sub.add_parser(
        "causality", help="suffix perturbation, truncation and gradient checks", description=__doc__
    )
    causality.add_argument("--arch", default="all", help="an architecture, a comma list, or all (default)")
    causality.add_argument("--seed", type=int, default=0)
    causality.set_defaults(handler=run)
