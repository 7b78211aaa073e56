"""Multi-seed architecture comparisons: audit, train every (architecture, seed) pair, report.

Paired by construction: every architecture trained with seed s sees the same data order and starts
from the same values in every tensor it shares with the others (paired initialisation). The
parameter-matched control B_cap joins B unless asked not to. An interrupted grid resumes: finished
runs are skipped, a run with a checkpoint continues from it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sympformer.analysis.report import build_report
from sympformer.audit import audit_arch
from sympformer.nn import ARCHS
from sympformer.train.config import RunConfig
from sympformer.train.loop import train

SHAPE_FIELDS = ("vocab_size", "n_layer", "n_head", "n_embd", "block_size")


class LeakingArchitecture(RuntimeError):
    pass


def presets_dirs() -> list[Path]:
    here = Path(__file__).resolve()
    return [Path.cwd() / "configs", here.parents[3] / "configs"]


def preset_path(name: str) -> Path:
    for folder in presets_dirs():
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    available = sorted({p.stem for folder in presets_dirs() if folder.is_dir() for p in folder.glob("*.yaml")})
    raise FileNotFoundError(f"no preset {name!r}; available: {', '.join(available) or 'none found'}")


def plan_archs(archs: list[str], include_cap: bool = True) -> list[str]:
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        raise ValueError(f"unknown arch {', '.join(unknown)}; valid: {', '.join(ARCHS)}")
    planned = list(dict.fromkeys(archs))
    if include_cap and "B" in planned and "B_cap" not in planned:
        planned.insert(planned.index("B") + 1, "B_cap")
    return planned


def audit(archs: list[str], config: RunConfig, log=print) -> None:
    """Refuse the grid when any architecture fails the causality audit."""
    options = {k: v for k, v in config.model.to_dict().items() if k not in (*SHAPE_FIELDS, "arch", "dropout")}
    leaks = []
    for arch in archs:
        report = audit_arch(arch, **options)
        log(f"  audit {report.line()}")
        if not report.passed:
            leaks.append(report.line())
    if leaks:
        raise LeakingArchitecture(
            "refusing to compare architectures that fail the causality audit: " + "; ".join(leaks)
        )


def run_comparison(
    config: RunConfig,
    archs: list[str],
    seeds: int,
    out: str | Path,
    reference: str = "B",
    include_cap: bool = True,
    progress: bool = True,
    log=print,
    title: str | None = None,
) -> dict:
    out = Path(out)
    planned = plan_archs(archs, include_cap)
    if reference not in planned:
        raise ValueError(f"the reference {reference!r} is not among the architectures {', '.join(planned)}")
    log(f"causality audit of {len(planned)} architecture(s):")
    audit(planned, config, log)
    seed_list = [config.train.seed + i for i in range(seeds)]
    total = len(planned) * len(seed_list)
    done = 0
    for seed in seed_list:  # seed-major: a partial grid already holds complete pairs
        for arch in planned:
            done += 1
            run_dir = out / "runs" / f"{arch}-s{seed}"
            if (run_dir / "summary.json").exists():
                log(f"[{done}/{total}] {arch} seed {seed}: finished earlier, skipped")
                continue
            resume = (run_dir / "latest.pt").exists()
            log(f"[{done}/{total}] {arch} seed {seed}: {'resuming' if resume else 'training'}")
            run_config = dataclasses.replace(
                config, model=config.model.replace(arch=arch), train=dataclasses.replace(config.train, seed=seed)
            )
            summary = train(run_config, run_dir, resume=resume, progress=progress)
            log(f"    final validation NLL {summary['final_val_loss']:.4f} ({summary['wall_time_s']:.0f} s)")
    context = (
        f"{len(seed_list)} seed(s) per architecture ({', '.join(map(str, seed_list))}); model "
        f"{config.model.n_layer}L/{config.model.n_head}H/{config.model.n_embd}d, context "
        f"{config.model.block_size}, vocabulary {config.model.vocab_size}; data {config.data.dir}; "
        f"{run_tokens(config):,} tokens per run."
    )
    return build_report(out, reference, planned, title or "Architecture comparison", context)


def run_tokens(config: RunConfig) -> int:
    from sympformer.train.config import tokens_per_update, total_steps

    return total_steps(config) * tokens_per_update(config)
