"""Offline data: corpora (embedded Shakespeare, local files, Hugging Face), tokenizers (bytes, trained
BPE, GPT-2), token shards with manifests, and the block iterators."""

from sympformer.data.corpora import Corpus, CorpusError, load_corpus
from sympformer.data.iterator import BlockIterator, validation_batches
from sympformer.data.shards import DataError, TokenShards, prepare
from sympformer.data.tokenizers import TokenizerError, build_tokenizer, load_tokenizer

__all__ = [
    "BlockIterator",
    "Corpus",
    "CorpusError",
    "DataError",
    "TokenShards",
    "TokenizerError",
    "build_tokenizer",
    "load_corpus",
    "load_tokenizer",
    "prepare",
    "validation_batches",
]
