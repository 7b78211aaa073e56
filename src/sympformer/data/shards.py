r"""Token shards: `train.bin` / `val.bin` (uint16, or uint32 when the vocabulary needs it) with a
`manifest.json` that records their source, tokenizer, counts, dtype and sha256.

Writing streams the corpus document by document in bounded chunks (never the whole corpus in
memory) and renames each file into place only when it is complete; the manifest comes last.
Loading memory-maps the shards after checking them against the manifest (size and dtype always,
sha256 on request) and the model's vocabulary against the data's.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sympformer import __version__
from sympformer.data.corpora import SPLITS, load_corpus
from sympformer.data.tokenizers import build_tokenizer, load_tokenizer, parse_spec, sha256_file
from sympformer.utils import atomic_write_text, make_readable

FORMAT = "sympformer-shards/1"
DTYPES = ("uint16", "uint32")


class DataError(ValueError):
    """Bad or missing data files: the message says which file, what is wrong and how to fix it."""


def dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def chunks(text: str, max_chars: int) -> Iterator[str]:
    """Pieces of about max_chars, cut only at a lone newline between two non-space characters: such a cut
    never splits a GPT-2/byte-level BPE pre-token, so encoding the pieces equals encoding the text."""
    start = 0
    while len(text) - start > max_chars:
        cut = start + max_chars
        while cut < len(text) and not (
            text[cut - 1] == "\n" and not text[cut - 2].isspace() and not text[cut].isspace()
        ):
            cut += 1
        yield text[start:cut]
        start = cut
    if start < len(text):
        yield text[start:]


class ShardWriter:
    """Appends token ids to a temporary file, hashing as it goes; ``commit`` renames it into place."""

    def __init__(self, path: Path, dtype: str, vocab_size: int) -> None:
        self.path, self.dtype, self.vocab_size = Path(path), np.dtype(dtype), vocab_size
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.handle = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()
        self.tokens = 0

    def write(self, ids) -> None:
        array = np.asarray(ids, dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            raise DataError(f"token id out of range [0, {self.vocab_size}) while writing {self.path.name}")
        data = array.astype(self.dtype).tobytes()
        self.handle.write(data)
        self.digest.update(data)
        self.tokens += int(array.size)

    def commit(self) -> dict:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        make_readable(self.tmp)
        os.replace(self.tmp, self.path)
        return {"file": self.path.name, "tokens": self.tokens, "sha256": self.digest.hexdigest()}

    def abort(self) -> None:
        self.handle.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def prepare(
    corpus: str,
    tokenizer: str,
    out: str | os.PathLike,
    chunk_chars: int = 1 << 20,
    progress: bool = True,
) -> dict:
    """Tokenize ``corpus`` with ``tokenizer`` into shards + manifest in ``out``; returns the manifest."""
    from tqdm import tqdm

    parse_spec(tokenizer)  # fail on a bad spec before reading anything
    source = load_corpus(corpus)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def training_pieces():
        for document in source.documents("train"):
            yield from chunks(document, chunk_chars)

    tok = build_tokenizer(tokenizer, training_pieces(), out)
    dtype = dtype_for(tok.vocab_size)
    shards, documents = {}, {}
    for split in SPLITS:
        writer = ShardWriter(out / f"{split}.bin", dtype, tok.vocab_size)
        count = 0
        try:
            bar = tqdm(
                source.documents(split), desc=f"tokenizing {split}", unit=" doc", disable=None if progress else True
            )
            for document in bar:
                for piece in chunks(document, chunk_chars):
                    writer.write(tok.encode(piece))
                if tok.eot_id is not None:
                    writer.write([tok.eot_id])
                elif tok.document_separator:
                    writer.write(tok.encode(tok.document_separator))
                count += 1
                bar.set_postfix(tokens=f"{writer.tokens:,}")
        except BaseException:
            writer.abort()
            raise
        if count == 0:
            writer.abort()
            raise DataError(f"the {split} split of {corpus} has no documents")
        shards[split] = writer.commit()
        documents[split] = count
    manifest = {
        "format": FORMAT,
        "source": {"corpus": source.spec, "description": source.description, "documents": documents},
        "tokenizer": {
            "spec": tok.spec,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "file": tok.file,
            "sha256": tok.file_hash(),
        },
        "dtype": dtype,
        "shards": shards,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sympformer_version": __version__,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class TokenShards:
    """Memory-mapped train / val shards checked against their manifest."""

    directory: Path
    manifest: dict
    train: np.ndarray
    val: np.ndarray

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return getattr(self, name)

    def tokenizer(self):
        return load_tokenizer(self.manifest["tokenizer"]["spec"], self.directory)

    @classmethod
    def open(cls, directory, verify_hash: bool = False, model_vocab_size: int | None = None) -> TokenShards:
        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise DataError(
                f"{manifest_path} is missing: prepare the data first, e.g. "
                f"`sympformer data prepare --corpus shakespeare --tokenizer bytes --out {directory}`"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{manifest_path} is not valid JSON ({exc}); prepare the data again") from exc
        if manifest.get("format") != FORMAT:
            raise DataError(f"{manifest_path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
        dtype = manifest.get("dtype")
        if dtype not in DTYPES:
            raise DataError(f"{manifest_path}: unsupported dtype {dtype!r}; valid: {', '.join(DTYPES)}")
        vocab = int(manifest["tokenizer"]["vocab_size"])
        if np.iinfo(dtype).max < vocab - 1:
            raise DataError(f"{manifest_path}: dtype {dtype} cannot hold a vocabulary of {vocab}")
        if model_vocab_size is not None and model_vocab_size < vocab:
            raise DataError(
                f"the model's vocab_size {model_vocab_size} is smaller than the data's "
                f"vocabulary {vocab} ({manifest['tokenizer']['spec']}); set model.vocab_size ≥ {vocab}"
            )
        arrays = {}
        itemsize = np.dtype(dtype).itemsize
        for split in SPLITS:
            entry = manifest["shards"].get(split)
            if entry is None:
                raise DataError(f"{manifest_path} lists no {split} shard")
            path = directory / entry["file"]
            if not path.is_file():
                raise DataError(f"{path} is missing (listed in {manifest_path}); prepare the data again")
            expected = int(entry["tokens"]) * itemsize
            size = path.stat().st_size
            if size != expected:
                raise DataError(
                    f"{path} has {size} bytes but the manifest promises {entry['tokens']} {dtype} "
                    f"tokens ({expected} bytes): the file is truncated or from another run"
                )
            if verify_hash and sha256_file(path) != entry["sha256"]:
                raise DataError(f"{path} does not match the sha256 in {manifest_path}: the file is corrupted")
            if entry["tokens"] == 0:
                raise DataError(f"{path} holds no tokens")
            arrays[split] = np.memmap(path, dtype=dtype, mode="r")
        return cls(directory, manifest, arrays["train"], arrays["val"])
