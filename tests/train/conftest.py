from __future__ import annotations

import pytest

from sympformer.data import prepare

TEXT = (
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small byte-level shard folder (two text files, ~40 kB)."""
    root = tmp_path_factory.mktemp("tiny-data")
    for i in range(2):
        (root / f"text{i}.txt").write_text("".join(f"{j}: {TEXT}" for j in range(120)))
    out = root / "shards"
    prepare(f"files:{root}/*.txt", "bytes", out, progress=False)
    return out


def tiny_config(data_dir, **train):
    from sympformer.train import build

    values = {
        "model": {"arch": "R2", "vocab_size": 256, "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16},
        "data": {"dir": str(data_dir), "corpus": None},
        "train": {
            "max_steps": 12,
            "batch_size": 4,
            "eval_interval": 4,
            "eval_batches": 2,
            "log_interval": 2,
            "sample_tokens": 0,
            "warmup": 2,
            **train,
        },
    }
    return values, build(values)
