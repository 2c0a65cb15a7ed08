"""Linked text as knowledge-plug records: word pieces with each mention's token span and its row of the plug table.

The plug table (:func:`plug_table`) is the KG embeddings with a zero row in front: row 0 is an entity the table
does not hold (plugged as a zero vector), row ``i + 1`` is entity ``i`` (the numbering ERNIE's table uses too).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...errors import ConfigError
from ..ernie.align import table_row


def plug_table(vectors: torch.Tensor) -> torch.Tensor:
    """``vectors`` (N, d) with a zero row in front: the table :func:`~plmkit.knowledge.plugin.attach` takes."""
    return torch.cat([vectors.new_zeros(1, vectors.shape[1]), vectors])


def token_spans(offsets: Sequence[tuple[int, int]], start: int, end: int, text: str | None = None
                ) -> tuple[int, int] | None:
    """The word pieces ``[first, last + 1)`` whose characters lie in ``[start, end)``; None when none does or
    truncation cut the mention short. With ``text``, a piece's leading whitespace does not count (byte-level BPE
    tokenizers such as SmolLM2's put the space before a word inside the word's piece)."""
    def first_char(a: int, b: int) -> int:  # b when the piece is whitespace alone
        if text is None:
            return a
        return a + len(text[a:b]) - len(text[a:b].lstrip())

    inside = [i for i, (a, b) in enumerate(offsets) if start <= first_char(a, b) < b <= end]
    if not inside or max(b for a, b in offsets if a < b) < end:
        return None
    return inside[0], inside[-1] + 1


def token_mentions(tokenizer: Any, texts: Sequence[str], mentions: Sequence[Sequence[Any]], entities: Any, *,
                   max_length: int = 128, keep_unknown: bool = True) -> list[dict]:
    """Tokenize ``texts`` (no padding): ``{"input_ids", "mentions": [(first piece, end piece, plug-table row)]}``.

    ``mentions[i]`` are text ``i``'s linked mentions (``start``, ``end``, ``entity``); ``entities`` the KG table
    (``entity in entities``, ``entities.index``). A mention of an entity the table lacks gets row 0 (a zero
    vector) or, with ``keep_unknown=False``, is left out (map-tuning has nothing to learn from it)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("knowledge plugs need a fast tokenizer (character offsets); load it with use_fast=True")
    if len(texts) != len(mentions):
        raise ConfigError(f"{len(texts)} texts but {len(mentions)} mention lists: pass linker.link(texts) for the "
                          "same texts, one list per text")
    if not texts:
        return []
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True)
    row = table_row(entities)
    out = []
    for text, ids, offsets, ms in zip(texts, enc["input_ids"], enc["offset_mapping"], mentions):
        spans = []
        for m in sorted(ms, key=lambda m: m.start):
            span, r = token_spans(offsets, m.start, m.end, text), row(m.entity)
            if span is not None and (r or keep_unknown):
                spans.append((span[0], span[1], r))
        out.append({"input_ids": list(ids), "mentions": spans})
    return out


def plug_entities(record: dict) -> list[tuple[int, int]]:
    """``(token index, table row)`` of each mention of a record: the pseudo-token goes before its first piece."""
    return [(start, r) for start, _, r in record["mentions"]]


def with_descriptions(texts: Sequence[str], mentions: Sequence[Sequence[Any]], describe: Any, *,
                      marks: str = "") -> list[str]:
    """The texts with each linked entity's description written in before its mention, in parentheses (the
    retrieval-style control: the knowledge as text instead of a vector). ``describe(entity)`` returns the text,
    or None for an entity without one. A mention opened by one of ``marks`` (a task's mention markers) gets its
    description before the marker, so the marked span stays as the model was trained on it."""
    out = []
    for text, ms in zip(texts, mentions):
        for m in sorted(ms, key=lambda m: m.start, reverse=True):
            d = describe(m.entity)
            if d:
                at = m.start - 1 if m.start > 0 and text[m.start - 1] in marks else m.start
                text = f"{text[:at]}({d}) {text[at:]}"
        out.append(text)
    return out
