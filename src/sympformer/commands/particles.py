"""`sympformer particles converge | preserve | animate | svgd`: the particle-lab experiments (float64).

Each writes CSV, PNG (GIF for animate) and a markdown summary into --out; the defaults finish in
under a minute on 2 CPU cores."""

from __future__ import annotations

import argparse


def _common(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        "--out", default=f"runs/particles/{name}", help=f"output folder (default: runs/particles/{name})"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_converge(args: argparse.Namespace) -> int:
    from sympformer.particles.experiments import converge

    summary = converge.run(
        args.out,
        problems=args.problems.split(","),
        kappas=[float(k) for k in args.kappas.split(",")],
        seeds=args.seeds,
        seed=args.seed,
        max_calls=args.max_calls,
        device=args.device,
        progress=not args.quiet,
    )
    print(summary["markdown"])
    print(f"written: {args.out}/converge.md, converge.csv, hits.csv, converge_*.png")
    return 0


def run_preserve(args: argparse.Namespace) -> int:
    from sympformer.particles.experiments import preserve

    summary = preserve.run(
        args.out, n=args.particles, steps=args.steps, seed=args.seed, device=args.device, progress=not args.quiet
    )
    print(summary["markdown"])
    print(f"written: {args.out}/preserve.md, preserve.csv, preserve.png")
    return 0


def run_animate(args: argparse.Namespace) -> int:
    from sympformer.particles.experiments import animate

    summary = animate.run(
        args.out, calls=args.calls, kappa=args.kappa, seed=args.seed, device=args.device, progress=not args.quiet
    )
    print(summary["markdown"])
    print(f"written: {args.out}/animate.gif, animate.csv, animate.md")
    return 0


def run_svgd(args: argparse.Namespace) -> int:
    from sympformer.particles.experiments import svgd

    summary = svgd.run(args.out, n=args.particles, seed=args.seed, device=args.device, progress=not args.quiet)
    print(summary["markdown"])
    print(f"written: {args.out}/svgd.png, svgd.csv, svgd.md")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from sympformer.particles.experiments import animate, converge, preserve, svgd

    parser = subparsers.add_parser(
        "particles", help="particle-lab experiments: converge, preserve, animate, svgd", description=__doc__
    )
    sub = parser.add_subparsers(dest="particles_command", metavar="EXPERIMENT", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "converge",
        help="classical vs accelerated flows: oracle calls to a relative gap",
        description=converge.__doc__,
        formatter_class=raw,
    )
    _common(p, "converge")
    p.add_argument("--problems", default="quadratic,linear,sphere", help="comma list of quadratic, linear, sphere")
    p.add_argument("--kappas", default="10,100,1000", help="condition numbers (default: 10,100,1000)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per problem (default: 5)")
    p.add_argument("--seed", type=int, default=31001, help="first seed (default: 31001, as notes §4.2)")
    p.add_argument("--max-calls", type=int, default=20000, help="oracle-call budget per method (default: 20000)")
    p.set_defaults(handler=run_converge)

    p = sub.add_parser(
        "preserve",
        help="elliptical preservation with oracle-predicted ellipses",
        description=preserve.__doc__,
        formatter_class=raw,
    )
    _common(p, "preserve")
    p.add_argument("--particles", type=int, default=600)
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_preserve)

    p = sub.add_parser(
        "animate",
        help="classical and accelerated particles side by side (GIF)",
        description=animate.__doc__,
        formatter_class=raw,
    )
    _common(p, "animate")
    p.add_argument("--calls", type=int, default=120, help="oracle calls, one frame each (default: 120)")
    p.add_argument("--kappa", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=31001)
    p.set_defaults(handler=run_animate)

    p = sub.add_parser(
        "svgd",
        help="linear attention vs the Stein flow of its potential",
        description=svgd.__doc__,
        formatter_class=raw,
    )
    _common(p, "svgd")
    p.add_argument("--particles", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_svgd)
