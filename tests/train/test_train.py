"""Training: config validation, optimiser groups, schedule, checkpoints (atomic, exact resume after
SIGKILL), NaN handling, run-folder outputs."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from helpers import tiny_config
from sympformer.nn import SympFormerConfig, SympFormerLM
from sympformer.train import ConfigError, RunFolderError, TrainingDiverged, build, load, train
from sympformer.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from sympformer.train.optim import build_optimizer, learning_rate


def test_config_rejects_unknown_keys_and_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown train key\(s\) lrr; valid train keys: max_steps, max_tokens"):
        build({"train": {"max_steps": 1, "lrr": 1}})
    with pytest.raises(ConfigError, match="unknown config section"):
        build({"optim": {}})
    with pytest.raises(ConfigError, match="unknown model config key|unknown model key"):
        build({"model": {"layers": 2}, "train": {"max_steps": 1}})
    with pytest.raises(ConfigError, match="max_steps or train.max_tokens"):
        build({"train": {}})
    with pytest.raises(ConfigError, match="precision"):
        build({"train": {"max_steps": 1, "precision": "fp8"}})
    with pytest.raises(ConfigError, match="compile_mode 'fast'; valid: default, reduce-overhead"):
        build({"train": {"max_steps": 1, "compile": True, "compile_mode": "fast"}})
    with pytest.raises(ConfigError, match="only with train.compile: true"):
        build({"train": {"max_steps": 1, "compile_mode": "reduce-overhead"}})
    with pytest.raises(ConfigError, match="model: unknown arch"):
        build({"model": {"arch": "Z"}, "train": {"max_steps": 1}})


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"arch": "Y"}, "train": {"max_steps": 5, "lr": 1e-3}}))
    config = load(path, ["train.lr=3e-4", "model.n_layer=3", "train.betas=[0.8, 0.9]", "data.corpus=null"])
    assert (config.model.arch, config.model.n_layer, config.train.lr) == ("Y", 3, 3e-4)
    assert config.train.betas == (0.8, 0.9) and config.data.corpus is None
    with pytest.raises(ConfigError, match="section.key=value"):
        load(path, ["lr=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.yaml")


def test_optimizer_groups_and_learning_rates():
    model = SympFormerLM(SympFormerConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=8, block_size=8, arch="R2"))
    optimizer = build_optimizer(model, lr=6e-4, weight_decay=0.1, scalar_lr_mult=10.0)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["scalars"]["lr"] == pytest.approx(0.006) and groups["others"]["lr"] == pytest.approx(0.0006)
    assert (
        groups["embeddings"]["weight_decay"],
        groups["scalars"]["weight_decay"],
        groups["others"]["weight_decay"],
    ) == (0.1, 0.0, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["embeddings"]["params"]} == {
        "tok_emb.weight",
        "pos_emb.weight",
        "tok_v0.weight",
        "pos_v0.weight",
    }
    assert all(names[id(p)].endswith(".raw") for p in groups["scalars"]["params"])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_fused_optimizer_makes_the_for_loop_adamw_update():
    """The trainer's optimiser uses PyTorch's fused AdamW on CPU; three steps of it agree with the
    reference for-loop AdamW over the same groups to float32 rounding."""
    from sympformer.train.optim import parameter_groups

    torch.manual_seed(0)
    config = SympFormerConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=8, block_size=8, arch="R2")
    fused_model, loop_model = SympFormerLM(config), SympFormerLM(config)
    loop_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(fused_model, lr=1e-2, weight_decay=0.1, scalar_lr_mult=10.0)
    loop = torch.optim.AdamW(
        parameter_groups(loop_model, 1e-2, 0.1, 10.0), lr=1e-2, betas=(0.9, 0.95), foreach=False, fused=False
    )
    assert fused.defaults["fused"]
    idx = torch.randint(0, 50, (2, 8))
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            optimizer.zero_grad()
            model(idx, idx)[1].backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_schedule_warmup_then_cosine_to_floor():
    peak, total, warmup, ratio = 1e-3, 100, 10, 0.1
    lrs = [learning_rate(s, peak, total, warmup, ratio) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warmup) and lrs[warmup - 1] == pytest.approx(peak)
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup], strict=False))
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))
    assert lrs[-1] == pytest.approx(peak * ratio)
    middle = warmup + (total - warmup - 1) / 2
    assert learning_rate(int(middle), peak, total, warmup, ratio) == pytest.approx(
        peak * ratio + 0.5 * peak * (1 - ratio) * (1 + math.cos(math.pi * int(middle - warmup) / (total - warmup - 1)))
    )


def test_checkpoint_is_old_or_new_never_partial(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def broken_save(obj, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_run_folder_outputs(tiny_data, tmp_path):
    _, config = tiny_config(tiny_data, sample_tokens=20)
    summary = train(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in (
        "config.json",
        "metrics.csv",
        "dynamics.csv",
        "summary.json",
        "samples.txt",
        "loss.png",
        "latest.pt",
        "final.pt",
        "model/model.safetensors",
    ):
        assert (run / name).exists(), name
    assert json.loads((run / "summary.json").read_text()) == summary
    assert summary["steps"] == 12 and summary["tokens"] == 12 * 4 * 16
    assert summary["attention_calls_per_token"] == 2 and summary["kernel_calls_per_forward"] == 4
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 12
    dynamics = (run / "dynamics.csv").read_text().splitlines()
    assert dynamics[0] == "step,layer,name,value" and any(",beta1," in row for row in dynamics)
    with pytest.raises(RunFolderError, match="already holds a run"):
        train(config, run, progress=False)


def test_budget_in_tokens(tiny_data, tmp_path):
    _, config = tiny_config(tiny_data, max_steps=None, max_tokens=640)
    assert train(config, tmp_path / "run", progress=False)["steps"] == 10  # 640 / (4 × 16)


def test_nan_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    _, config = tiny_config(tiny_data, checkpoint_interval=3)
    real_forward = SympFormerLM.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, start=0, return_logits=True):
        logits, loss = real_forward(self, idx, targets, start, return_logits)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] == 8:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(SympFormerLM, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="non-finite at step 8.*last good checkpoint"):
        train(config, tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert state["step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def run_cli(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "sympformer", "train", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_resume_after_sigkill_is_bitwise_identical(tiny_data, tmp_path):
    values, _ = tiny_config(tiny_data, checkpoint_interval=5)
    values["model"]["dropout"] = 0.1  # dropout makes the RNG state part of what must be restored
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    straight = run_cli(["--config", str(path), "--out", str(tmp_path / "a")])
    assert straight.returncode == 0, straight.stderr
    killed = run_cli(["--config", str(path), "--out", str(tmp_path / "b")], {"SYMPFORMER_KILL_AFTER_STEP": "7"})
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "b" / "latest.pt")["step"] == 5
    resumed = run_cli(["--config", str(path), "--out", str(tmp_path / "b"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "a" / "final.pt")
    b = load_checkpoint(tmp_path / "b" / "final.pt")
    assert a["step"] == b["step"] == 12
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    rows = lambda run: (tmp_path / run / "metrics.csv").read_text().splitlines()
    strip = lambda lines: [",".join(r.split(",")[:5]) for r in lines]  # timing columns differ
    assert strip(rows("a")) == strip(rows("b"))


class _HeldOnAnotherDevice:
    """Stands for a generator state that torch.load put on a GPU (map_location): torch refuses it until
    ``.cpu()`` brings it back."""

    def __init__(self, state: torch.Tensor) -> None:
        self.state = state

    def cpu(self) -> torch.Tensor:
        return self.state


def test_restore_rng_brings_generator_states_back_to_the_cpu():
    """The H200 run's resume failed with "RNG state must be a torch.ByteTensor": the checkpoint had been
    read onto the GPU. restore_rng must accept such a state and continue the captured stream."""
    torch.manual_seed(3)
    state = capture_rng()
    expected = torch.rand(4)
    torch.manual_seed(99)
    state["torch"] = _HeldOnAnotherDevice(state["torch"])
    restore_rng(state)
    assert torch.equal(torch.rand(4), expected)


def test_cli_reports_divergence_and_bad_config(tiny_data, tmp_path):
    values, _ = tiny_config(tiny_data)
    values["train"]["lr"] = 1e30
    values["train"]["grad_clip"] = 0.0
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    result = run_cli(["--config", str(path), "--out", str(tmp_path / "x")])
    assert result.returncode == 3 and "non-finite" in result.stderr
    bad = run_cli(["--config", str(path), "--set", "model.arch=nope", "--out", str(tmp_path / "y")])
    assert bad.returncode == 2 and "valid: B, B_cap" in bad.stderr


def test_compile_mode_reaches_torch_compile(tiny_data, tmp_path, monkeypatch):
    """train.compile_mode is torch.compile's mode ("default" is torch's None); the model it returns is
    the one trained."""
    seen = []

    def record(model, mode=None):
        seen.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", record)
    for mode, expected in (("reduce-overhead", "reduce-overhead"), ("default", None)):
        _, config = tiny_config(tiny_data, max_steps=1, eval_interval=1, compile=True, compile_mode=mode)
        assert train(config, tmp_path / mode, progress=False)["steps"] == 1
        assert seen.pop() == expected


@pytest.mark.slow
def test_compiled_runs_of_several_models_in_one_process(tiny_data, tmp_path):
    """`compare` trains its architectures one after another in one process; with train.compile and
    activation checkpointing each compiled run must still work (torch 2.13's dynamo failed on the
    second model while the attention's autograd.Function was traced)."""
    for arch in ("H1", "v1_strang"):
        _, config = tiny_config(tiny_data, max_steps=2, eval_interval=2, compile=True)
        model = config.model.replace(arch=arch, activation_checkpointing=True)
        summary = train(dataclasses.replace(config, model=model), tmp_path / arch, progress=False)
        assert summary["steps"] == 2 and math.isfinite(summary["final_val_loss"])
