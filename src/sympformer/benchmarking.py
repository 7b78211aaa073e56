"""Benchmark helpers: interleaved timing of several contenders in ONE process, machine description,
and the writer of `benchmarks/RESULTS.md` sections (each section replaced in place, with the command,
machine, torch version and date beside the figures)."""

from __future__ import annotations

import datetime as _dt
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sympformer import __version__
from sympformer.utils import atomic_write_text


def machine_description(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_times(
    contenders: dict[str, Callable[[], None]], rounds: int, repeats: int, device: str = "cpu", warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each contender: ``rounds`` rounds, each contender ``repeats`` calls per
    round, the order rotated every round so that drift in machine speed hits all alike."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                contenders[name]()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / repeats)
    return times


def peak_allocated(fn: Callable[[], object]) -> int:
    """The most bytes the CPU allocator held at once while ``fn()`` ran, above what was held when it
    started (from the profiler's memory events: every allocation and free inside, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    now = top = 0
    for _, nbytes in events:
        now += nbytes
        top = max(top, now)
    return top


def training_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The trainer's optimiser (AdamW over its three groups, fused where the device has the kernel) at a
    benchmark learning rate, so that a benchmarked step is the step `sympformer train` takes."""
    from sympformer.train.optim import build_optimizer

    return build_optimizer(model, lr=1e-4, weight_decay=0.1, scalar_lr_mult=1.0)


def saved_storages(fn) -> dict[int, int]:
    """Run ``fn()`` and return {storage address: bytes} of the distinct storages autograd keeps for its
    backward pass: the activation part of the training memory, free of allocator effects."""
    return {address: nbytes for address, (nbytes, _) in _saved(fn, lambda: "").items()}


def saved_bytes_by_site(fn) -> dict[str, int]:
    """Like :func:`saved_storages`, summed by the place in sympformer's code whose operation saved each
    storage first ("nn/blocks.py:MomentumBlock.forward"; for a custom autograd Function, the code that
    calls it, since its saved tensors are packed after its forward returns): what dominates the
    activation memory."""
    sites: dict[str, int] = {}
    for nbytes, site in _saved(fn, _calling_site).values():
        sites[site] = sites.get(site, 0) + nbytes
    return dict(sorted(sites.items(), key=lambda item: -item[1]))


_PACKAGE = str(Path(__file__).resolve().parent)
_TRANSPARENT = (__file__, str(Path(_PACKAGE) / "nn" / "recompute.py"))


def _calling_site() -> str:
    """The innermost frame in the sympformer package outside this module and the recomputation wrapper,
    as "path:qualified name" (a recomputed region's saved inputs count for the code that called it)."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(_PACKAGE) and filename not in _TRANSPARENT:
            name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)  # co_qualname: Python ≥ 3.11
            return f"{Path(filename).relative_to(_PACKAGE).as_posix()}:{name}"
        frame = frame.f_back
    return "(outside sympformer)"


def _saved(fn, site: Callable[[], str]) -> dict[int, tuple[int, str]]:
    kept: dict[int, tuple[int, str]] = {}
    alive = []  # every saved storage stays alive until fn returns: a part of the graph that fn drops early
    # (a branch the output does not use) would otherwise free its storages, and a later tensor at the same
    # address would be taken for one already counted (an undercount that depended on the allocator)

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in kept:
            kept[storage.data_ptr()] = (storage.nbytes(), site())
            alive.append(storage)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return kept


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_section(path: str | Path, key: str, title: str, body: str, device: str = "cpu") -> None:
    """Replace (or append) the section ``key`` of RESULTS.md with ``body`` and its provenance."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is rewritten by its script.\n"
    command = "python " + " ".join(sys.argv) if sys.argv and sys.argv[0] else "(interactive)"
    section = (
        f"<!-- section:{key} -->\n## {title}\n\n"
        f"- command: `{command}`\n- machine: {machine_description(device)}\n"
        f"- torch {torch.__version__}, sympformer {__version__}, date {_dt.date.today().isoformat()}\n\n"
        f"{body.strip()}\n<!-- end:{key} -->\n"
    )
    pattern = re.compile(rf"<!-- section:{re.escape(key)} -->.*?<!-- end:{re.escape(key)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, text)


def section_rows(path: str | Path, key: str, shape: str | None = None) -> list[dict[str, str]]:
    """The table rows of RESULTS.md section ``key`` (as :func:`write_section` writes it), each a dict from
    its table's header to the cell (a name repeated in the header gets " (2)", " (3)", … after its first
    use); with ``shape``, only the table under that section's "### shape `…`" heading. Empty when the
    file, the section or the shape is missing."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    match = re.search(rf"<!-- section:{re.escape(key)} -->(.*?)<!-- end:{re.escape(key)} -->", text, re.S)
    rows, header, current = [], None, None
    for line in match.group(1).splitlines() if match else []:
        heading = re.match(r"(?:###\s+)?shape `([^`]+)`", line)
        if heading:
            current, header = heading.group(1), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = [_numbered(cells, k) for k in range(len(cells))]
        elif not set("".join(cells)) <= set("-: ") and (shape is None or current == shape):
            rows.append(dict(zip(header, cells, strict=False)))
    return rows


def _numbered(names: list[str], k: int) -> str:
    """names[k], with " (n)" where it is the n-th use of that name in ``names`` (n ≥ 2)."""
    uses = names[: k + 1].count(names[k])
    return names[k] if uses == 1 else f"{names[k]} ({uses})"


def table_number(cell: str) -> float | None:
    """A RESULTS.md table cell as a number ("1,234.5" → 1234.5), or None ("—", words)."""
    try:
        return float(cell.replace(",", ""))
    except ValueError:
        return None
