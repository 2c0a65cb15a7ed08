"""Datasets as plain records (lists of dicts), with ``to_dataset`` for a ``datasets.Dataset``."""
from __future__ import annotations

from typing import Any

from . import chinese, geonames, kg, text, wordnet
from .batching import token_batches
from .kg import DescribedKG, KGSplit, KGVocab, sample_subgraph, split_inductive, split_transductive
from .wordnet import WordNetGraph, wordnet_graph, wordnet_kg


def to_dataset(records: list[dict[str, Any]]):
    """A ``datasets.Dataset`` from plain records."""
    import datasets

    return datasets.Dataset.from_list(records)


__all__ = ["DescribedKG", "KGSplit", "KGVocab", "WordNetGraph", "chinese", "geonames", "kg", "sample_subgraph", "split_inductive", "split_transductive", "text",
           "to_dataset", "token_batches", "wordnet", "wordnet_graph", "wordnet_kg"]
