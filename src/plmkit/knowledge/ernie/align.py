"""Entities onto word pieces: each linked mention's entity sits on the first word piece of the mention."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ...errors import ConfigError


def table_row(entities: Any) -> Callable[[str], int]:
    """Entity id -> row of ERNIE's entity table (index + 1; 0 for an entity the table does not hold)."""
    def row(entity: str) -> int:
        return entities.index(entity) + 1 if entity in entities else 0

    return row


def first_piece_entities(offsets: Sequence[tuple[int, int]], mentions: Sequence[Any], row: Callable[[str], int]
                         ) -> list[int]:
    """Per word piece (given its character ``offsets``), the table row of the entity whose mention starts at it,
    else 0. A mention lands on the first piece that lies inside it; a mention cut off by truncation is lost."""
    out = [0] * len(offsets)
    starts = sorted(((m.start, m.end, row(m.entity)) for m in mentions), key=lambda x: x[0])
    j = 0
    for i, (a, b) in enumerate(offsets):
        if a == b:  # special token or padding
            continue
        while j < len(starts) and starts[j][1] <= a:
            j += 1
        if j < len(starts) and starts[j][0] <= a < starts[j][1]:
            out[i] = starts[j][2]
            j += 1
    return out


def encode_with_entities(tokenizer: Any, texts: Sequence[str], mentions: Sequence[Sequence[Any]], entities: Any,
                         *, max_length: int = 128) -> list[dict]:
    """Tokenize ``texts`` (no padding) with the entity of each word piece: ``{"input_ids", "entity_ids"}`` records.

    ``mentions[i]`` are text ``i``'s linked mentions (``start``, ``end``, ``entity``), ``entities`` the KG
    embedding table (an ``EntityEmbeddings``: ``entity in entities``, ``entities.index(entity)``)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("aligning entities needs a fast tokenizer (character offsets); load it with use_fast=True")
    if len(texts) != len(mentions):
        raise ConfigError(f"{len(texts)} texts but {len(mentions)} mention lists: pass linker.link(texts) for the "
                          "same texts, one list per text")
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True)
    row = table_row(entities)
    return [{"input_ids": ids, "entity_ids": first_piece_entities(offs, ms, row)}
            for ids, offs, ms in zip(enc["input_ids"], enc["offset_mapping"], mentions)]


def entity_collate(tokenizer: Any) -> Callable[[list[dict]], dict]:
    """Pad ``{"input_ids", "entity_ids"[, "label"]}`` records into a batch (entities padded with 0, on the
    tokenizer's padding side)."""
    from ...pretrain.masking import pad_collate

    pad = pad_collate(tokenizer)

    def collate(rows: list[dict]) -> dict:
        batch = pad(rows)
        t = batch["input_ids"].shape[1]
        left = getattr(tokenizer, "padding_side", "right") == "left"
        ents = torch.zeros(len(rows), t, dtype=torch.long)
        for i, r in enumerate(rows):
            e = torch.tensor(r["entity_ids"], dtype=torch.long)
            if left:
                ents[i, t - len(e):] = e
            else:
                ents[i, :len(e)] = e
        batch["entity_ids"] = ents
        if "label" in rows[0]:
            batch["labels"] = torch.tensor([r["label"] for r in rows])
        return batch

    return collate
