"""Run configuration: sections `model` (SympFormerConfig), `data` and `train`, from YAML plus
``--set section.key=value`` overrides, validated (unknown keys are errors that list the valid ones),
and saved resolved in the run folder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from sympformer.nn.config import SympFormerConfig

PRECISIONS = ("fp32", "bf16")
# torch.compile's modes; reduce-overhead replays each step's kernel launches as CUDA graphs, which is
# what small models on a GPU need (a step there is bound by launching kernels: benchmarks/RESULTS.md)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_model(model, mode: str):
    """``torch.compile(model)`` in one of COMPILE_MODES ("default" is torch's own default, mode None)."""
    return torch.compile(model, mode=None if mode == "default" else mode)


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    """dir: the shard folder. When it has no manifest yet and `corpus` is set, the data is prepared
    there first (corpus and tokenizer as for `sympformer data prepare`)."""

    dir: str = "data/shakespeare-bytes"
    corpus: str | None = "shakespeare"
    tokenizer: str = "bytes"
    verify_hash: bool = False


@dataclass
class TrainConfig:
    """max_steps or max_tokens (loss-bearing tokens per update = batch_size × grad_accum × block_size ×
    processes) sets the budget; warmup is a step count (≥ 1) or a fraction of the steps (< 1)."""

    max_steps: int | None = None
    max_tokens: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup: float = 0.1
    weight_decay: float = 0.1
    scalar_lr_mult: float = 10.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 16
    log_interval: int = 10
    checkpoint_interval: int | None = None
    seed: int = 1337
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    compile_mode: str = "default"
    sample_tokens: int = 200
    sample_prompt: str | None = None
    sample_temperature: float = 0.8
    sample_top_k: int | None = 40


@dataclass
class RunConfig:
    model: SympFormerConfig = field(default_factory=SympFormerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS = ("model", "data", "train")

    def to_dict(self) -> dict:
        return {
            "model": self.model.to_dict(),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, section: str, **changes) -> RunConfig:
        current = getattr(self, section)
        updated = current.replace(**changes) if section == "model" else dataclasses.replace(current, **changes)
        return dataclasses.replace(self, **{section: updated})


def _section_fields(section: str) -> dict[str, dataclasses.Field]:
    cls = {"model": SympFormerConfig, "data": DataConfig, "train": TrainConfig}[section]
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(section: str, key: str, value):
    """Give a value its field's type: strings from --set (and YAML's "3e-4", which YAML 1.1 reads as
    text) become numbers, booleans, lists or null where the field asks for them."""
    import typing

    cls = {"model": SympFormerConfig, "data": DataConfig, "train": TrainConfig}[section]
    hint = str(typing.get_type_hints(cls).get(key, ""))
    wants_number = "int" in hint or "float" in hint
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("null", "none", "~") and ("None" in hint or "Optional" in hint):
            return None
        if wants_number:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    pass
        if isinstance(value, str) and ("bool" in hint or "tuple" in hint):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                pass
    if key == "betas" and isinstance(value, list):
        value = tuple(float(v) for v in value)
    if "float" in hint and "int" not in hint and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if "bool" in hint and isinstance(value, str):
        raise ConfigError(f"{section}.{key} must be true or false, got {value!r}")
    if wants_number and isinstance(value, str):
        raise ConfigError(f"{section}.{key} must be a number, got {value!r}")
    return value


def build(values: dict) -> RunConfig:
    """A RunConfig from a nested dict, every key checked."""
    if not isinstance(values, dict):
        raise ConfigError("a config is a mapping with the sections model, data and train")
    unknown = sorted(set(values) - set(RunConfig.SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown config section(s) {', '.join(unknown)}; valid sections: {', '.join(RunConfig.SECTIONS)}"
        )
    parts = {}
    for section in RunConfig.SECTIONS:
        given = values.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"section {section!r} must be a mapping")
        fields = _section_fields(section)
        bad = sorted(set(given) - set(fields))
        if bad:
            raise ConfigError(f"unknown {section} key(s) {', '.join(bad)}; valid {section} keys: {', '.join(fields)}")
        kwargs = {k: _coerce(section, k, v) for k, v in given.items()}
        try:
            parts[section] = {"model": SympFormerConfig, "data": DataConfig, "train": TrainConfig}[section](**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{section}: {exc}") from exc
    config = RunConfig(**parts)
    validate_train(config.train)
    return config


def validate_train(t: TrainConfig) -> None:
    def positive(name, allow_none=False):
        value = getattr(t, name)
        if value is None and allow_none:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"train.{name} must be a positive integer, got {value!r}")

    if t.max_steps is None and t.max_tokens is None:
        raise ConfigError("set train.max_steps or train.max_tokens (the training budget)")
    for name in ("max_steps", "max_tokens", "checkpoint_interval"):
        positive(name, allow_none=True)
    for name in ("batch_size", "grad_accum", "eval_interval", "eval_batches", "log_interval"):
        positive(name)
    if not t.lr > 0:
        raise ConfigError(f"train.lr must be positive, got {t.lr!r}")
    if not 0 <= t.min_lr_ratio <= 1:
        raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio!r}")
    if t.warmup < 0:
        raise ConfigError(f"train.warmup must be ≥ 0 (steps, or a fraction < 1), got {t.warmup!r}")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"unknown train.precision {t.precision!r}; valid: {', '.join(PRECISIONS)}")
    if t.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"unknown train.compile_mode {t.compile_mode!r}; valid: {', '.join(COMPILE_MODES)}")
    if t.compile_mode != "default" and not t.compile:
        raise ConfigError(f"train.compile_mode {t.compile_mode!r} takes effect only with train.compile: true")
    if t.grad_clip < 0 or t.weight_decay < 0 or t.scalar_lr_mult <= 0:
        raise ConfigError("train.grad_clip and train.weight_decay must be ≥ 0 and train.scalar_lr_mult > 0")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"train.betas must be two numbers in [0, 1), got {t.betas!r}")


def parse_overrides(overrides: list[str]) -> dict:
    """['train.lr=1e-3', 'model.arch=H0'] → {'train': {'lr': '1e-3'}, 'model': {'arch': 'H0'}}."""
    nested: dict = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set expects section.key=value (e.g. train.lr=3e-4), got {item!r}")
        if section not in RunConfig.SECTIONS:
            raise ConfigError(
                f"unknown config section {section!r} in --set {item!r}; valid sections: {', '.join(RunConfig.SECTIONS)}"
            )
        nested.setdefault(section, {})[name] = value
    return nested


def merge(base: dict, overrides: dict) -> dict:
    merged = {section: dict(base.get(section) or {}) for section in set(base) | set(overrides)}
    for section, values in overrides.items():
        merged[section].update(values)
    return merged


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML (or JSON) config file, apply --set overrides, validate."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return build(merge(values, parse_overrides(overrides or [])))


def tokens_per_update(config: RunConfig, world_size: int = 1) -> int:
    t = config.train
    return t.batch_size * t.grad_accum * config.model.block_size * world_size


def total_steps(config: RunConfig, world_size: int = 1) -> int:
    t = config.train
    if t.max_steps is not None:
        return t.max_steps
    return max(1, -(-t.max_tokens // tokens_per_update(config, world_size)))


def warmup_steps(config: RunConfig, steps: int) -> int:
    w = config.train.warmup
    return int(round(w * steps)) if w < 1 else int(w)
