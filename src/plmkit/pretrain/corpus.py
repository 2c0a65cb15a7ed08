"""Pretraining corpora: real English documents, a validation split by document, packed fixed-length blocks.

Every block holds ``block_size`` tokens: a bert block is ``[CLS] … [SEP]`` around consecutive text, a
llama block starts with ``<s>``; documents run on from one block into the next, separated by ``[SEP]`` /
``</s>``. Which split a document lands in depends only on its id (a hash), so every model, seed and budget
of a study sees the same validation documents, none of which it trained on.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from ..config import JsonConfig
from ..errors import ConfigError

CORPORA = ("english", "english+fortunes", "fortunes")


@dataclass
class CorpusConfig(JsonConfig):
    corpus: str = "english"  # english: Wikipedia, Austen, Moby Dick, Lee news, WordNet glosses; +fortunes
    max_chars: int | None = None  # documents are taken in a seeded order until this many characters
    validation_fraction: float = 0.05  # of the documents (by a hash of the id)
    block_size: int = 128
    seed: int = 0  # the order documents are taken and packed in

    def __post_init__(self) -> None:
        if self.corpus not in CORPORA:
            raise ConfigError(f"unknown corpus {self.corpus!r}; known: {', '.join(CORPORA)}")
        if not 0 < self.validation_fraction < 1 or self.block_size < 8:
            raise ConfigError("validation_fraction must be in (0, 1) and block_size >= 8")


@dataclass
class PackedCorpus:
    train: list[dict]  # {"input_ids": [block_size ids]}
    validation: list[dict]
    documents: tuple[int, int]  # (train, validation) document counts
    tokens: tuple[int, int]  # text tokens per split, before packing


def in_validation(doc_id: str, fraction: float) -> bool:
    """Whether document ``doc_id`` is held out: a hash of the id, the same in every run."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big")
    return h / 2 ** 64 < fraction


def corpus_documents(config: CorpusConfig) -> list[tuple[str, list[str]]]:
    from ..data.text import ENGLISH_SOURCES, english_documents

    sources = {"english": ENGLISH_SOURCES[:5], "english+fortunes": ENGLISH_SOURCES, "fortunes": ("fortunes",)}
    docs = english_documents(sources[config.corpus])
    random.Random(config.seed).shuffle(docs)
    if config.max_chars is not None:
        out, total = [], 0
        for d in docs:
            if total >= config.max_chars:
                break
            out.append(d)
            total += sum(len(p) for p in d[1])
        docs = out
    return docs


def pack(tokenizer, documents: list[list[str]], block_size: int) -> tuple[list[dict], int]:
    """Blocks of exactly ``block_size`` ids from ``documents`` (lists of passages), and the text tokens used."""
    causal = tokenizer.cls_token_id is None or tokenizer.mask_token_id is None
    first = [tokenizer.bos_token_id] if causal else [tokenizer.cls_token_id]
    last = [] if causal else [tokenizer.sep_token_id]
    separator = tokenizer.eos_token_id if causal else tokenizer.sep_token_id
    if None in first + last or separator is None:
        raise ConfigError("the tokenizer needs [CLS]/[SEP]/[MASK] (bert) or <s>/</s> (llama) special tokens")
    body = block_size - len(first) - len(last)
    stream: list[int] = []
    passages = [p for doc in documents for p in doc]
    ids = tokenizer(passages, add_special_tokens=False)["input_ids"] if passages else []
    k = 0
    for doc in documents:
        for _ in doc:
            stream.extend(ids[k])
            k += 1
        stream.append(separator)
    blocks = [{"input_ids": first + stream[i:i + body] + last} for i in range(0, len(stream) - body + 1, body)]
    return blocks, sum(len(x) for x in ids)


def packed_corpus(tokenizer, config: CorpusConfig) -> PackedCorpus:
    docs = corpus_documents(config)
    val = [d for d in docs if in_validation(d[0], config.validation_fraction)]
    train = [d for d in docs if not in_validation(d[0], config.validation_fraction)]
    if not val or not train:
        raise ConfigError(f"{len(docs)} documents leave an empty split: raise max_chars (--max-chars) or "
                          "validation_fraction (--validation-fraction)")
    train_blocks, train_tokens = pack(tokenizer, [p for _, p in train], config.block_size)
    val_blocks, val_tokens = pack(tokenizer, [p for _, p in val], config.block_size)
    return PackedCorpus(train_blocks, val_blocks, (len(train), len(val)), (train_tokens, val_tokens))


def corpus_texts(config: CorpusConfig) -> list[str]:
    """The training documents' passages (what a study tokenizer is trained on: no validation text)."""
    return [p for doc_id, ps in corpus_documents(config) if not in_validation(doc_id, config.validation_fraction)
            for p in ps]
