"""Two-process CPU DDP (torchrun, gloo over loopback) equals one process at the same global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers import tiny_config
from sympformer.train.checkpoint import load_checkpoint


def _train(launcher: list[str], config: Path, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*launcher, "-m", "sympformer", "train", "--config", str(config), "--out", str(out), "--quiet"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]


def _one_and_two_processes_agree(tiny_data, tmp_path, **train) -> None:
    """Train on one process (global batch 4) and on two (batch 2 each): the same tokens and weights."""
    values, _ = tiny_config(tiny_data, max_steps=6, eval_interval=3, batch_size=4, **train)
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump(values))
    values["train"]["batch_size"] = 2  # per process: the same global batch of 4
    double = tmp_path / "double.yaml"
    double.write_text(yaml.safe_dump(values))
    _train([sys.executable], single, tmp_path / "one")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    _train([torchrun, "--standalone", "--nproc_per_node=2"], double, tmp_path / "two")
    a, b = load_checkpoint(tmp_path / "one" / "final.pt"), load_checkpoint(tmp_path / "two" / "final.pt")
    assert a["tokens"] == b["tokens"]
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert len(b["rng"]) == 2  # one RNG state per rank


def test_two_process_ddp_equals_one_process(tiny_data, tmp_path):
    _one_and_two_processes_agree(tiny_data, tmp_path)


@pytest.mark.slow
def test_two_process_ddp_of_a_compiled_model_equals_one_process(tiny_data, tmp_path):
    """DDP wraps the compiled model (train.compile): its gradient hooks still see every gradient, also
    with gradient accumulation (gradients synchronised on the last micro-batch only)."""
    _one_and_two_processes_agree(tiny_data, tmp_path, compile=True, grad_accum=2)
