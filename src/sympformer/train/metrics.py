"""Run-folder outputs: metrics.csv and dynamics.csv (appended as training goes, truncated on resume),
and the loss plot."""

from __future__ import annotations

import csv
from pathlib import Path

from sympformer.utils import atomic_write_text, save_figure

METRICS_COLUMNS = ["step", "tokens", "train_loss", "val_loss", "lr", "step_time_s", "tokens_per_s", "wall_s"]
DYNAMICS_COLUMNS = ["step", "layer", "name", "value"]


class CSVLog:
    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = Path(path), columns

    def start(self, keep_until_step: int | None = None) -> None:
        """Create the file with its header, or (resume) keep only the rows with step ≤ keep_until_step."""
        rows = []
        if keep_until_step is not None and self.path.exists():
            with self.path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= keep_until_step]
        lines = [",".join(self.columns)] + [",".join(r.get(c, "") for c in self.columns) for r in rows]
        atomic_write_text(self.path, "\n".join(lines) + "\n")

    def append(self, row: dict) -> None:
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns).writerow({c: _format(row.get(c)) for c in self.columns})

    def read(self) -> list[dict]:
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def plot_losses(metrics_csv: Path, out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = CSVLog(metrics_csv, METRICS_COLUMNS).read()
    train = [(int(r["tokens"]), float(r["train_loss"])) for r in rows if r["train_loss"]]
    val = [(int(r["tokens"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        ax.plot(*zip(*train, strict=True), label="train (logged batches)", alpha=0.6)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation (fixed set)")
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out_png)
    plt.close(fig)
