"""Two-process CPU DDP (torchrun, gloo over loopback) equals one process at the same global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from helpers import tiny_config
from sympformer.train.checkpoint import load_checkpoint


def test_two_process_ddp_equals_one_process(tiny_data, tmp_path):
    values, _ = tiny_config(tiny_data, max_steps=6, eval_interval=3, batch_size=4)
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump(values))
    values["train"]["batch_size"] = 2  # per process: the same global batch of 4
    double = tmp_path / "double.yaml"
    double.write_text(yaml.safe_dump(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "sympformer",
            "train",
            "--config",
            str(single),
            "--out",
            str(tmp_path / "one"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert one.returncode == 0, one.stderr
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    two = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "sympformer",
            "train",
            "--config",
            str(double),
            "--out",
            str(tmp_path / "two"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "one" / "final.pt"), load_checkpoint(tmp_path / "two" / "final.pt")
    assert a["tokens"] == b["tokens"]
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert len(b["rng"]) == 2  # one RNG state per rank
