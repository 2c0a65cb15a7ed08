"""General map-tuning: the model frozen, only the mapper trains, on mention-masked language modelling.

Each linked mention gets its mapped entity vector as a pseudo-token before it. A masked LM sees the mention's
tokens replaced by its mask token (the pseudo-token kept) and must restore them; a causal LM predicts the mention's
tokens after the pseudo-token. The loss is on the mention's tokens only, so the entity vector is what carries
them. Dropout on the frozen model is a setting (the reference found 0.25 to matter).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ... import arch
from ...errors import ConfigError
from ...pretrain.masking import pad_collate
from ...train.loop import TrainConfig, TrainResult, train
from .inject import IGNORE, attach, detach


@dataclass(frozen=True)
class MapTuneConfig:
    dropout: float = 0.25  # dropout on the frozen model while the mapper trains
    mlm: bool | None = None  # mask the mention (masked LM) or predict it (causal LM); None: from the model

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout must lie in [0, 1)")


@contextlib.contextmanager
def dropout_set(model: nn.Module, p: float) -> Iterator[None]:
    """Every ``nn.Dropout`` of ``model`` at ``p`` inside the block, then back."""
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    old = [m.p for m in drops]
    for m in drops:
        m.p = p
    try:
        yield
    finally:
        for m, q in zip(drops, old):
            m.p = q


def mention_batch(tokenizer: Any, rows: Sequence[dict], *, mlm: bool) -> dict[str, Any]:
    """Pad ``{"input_ids", "mentions": [(start, end, table row)]}`` records (token spans) into a batch with
    ``plmkit_entities`` (a pseudo-token before each mention) and labels on the mention tokens; for a masked LM the
    mention tokens are replaced by the mask token."""
    pad = pad_collate(tokenizer)(rows)
    ids, labels = pad["input_ids"].clone(), torch.full_like(pad["input_ids"], IGNORE)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    entities = []
    for b, r in enumerate(rows):
        off = ids.shape[1] - len(r["input_ids"]) if left else 0
        row = []
        for start, end, entity in r["mentions"]:
            labels[b, off + start:off + end] = ids[b, off + start:off + end]
            if mlm:
                ids[b, off + start:off + end] = tokenizer.mask_token_id
            row.append((off + start, entity))
        entities.append(row)
    return {"input_ids": ids, "attention_mask": pad["attention_mask"], "labels": labels, "plmkit_entities": entities,
            "plmkit_padding_side": "left" if left else "right"}


def map_tune(model: nn.Module, mapper: nn.Module, table: torch.Tensor, tokenizer: Any, records: Sequence[dict],
             config: TrainConfig, tune: MapTuneConfig | None = None) -> TrainResult:
    """Attach ``mapper`` to ``model`` (see :func:`~plmkit.knowledge.plugin.attach`) and train it alone on
    ``records`` (``{"input_ids", "mentions": [(token start, token end, table row)]}``) through
    :func:`plmkit.train.train`; the model's own weights stay frozen. The plug stays attached."""
    tune = tune or MapTuneConfig()
    mlm = (not arch.is_causal(model)) if tune.mlm is None else tune.mlm
    if mlm and tokenizer.mask_token_id is None:
        raise ConfigError("mention-masked LM needs a tokenizer with a mask token; pass MapTuneConfig(mlm=False) "
                          "for a causal LM")

    def collate(rows: list[dict]) -> dict:
        return mention_batch(tokenizer, rows, mlm=mlm)

    return train_mapper(model, mapper, table, records, config, collate, dropout=tune.dropout)


def train_mapper(model: nn.Module, mapper: nn.Module, table: torch.Tensor, records: Sequence[dict],
                 config: TrainConfig, collate: Any, *, dropout: float = 0.25) -> TrainResult:
    """Attach ``mapper`` to ``model`` and train the mapper alone on the model's own loss over ``collate``'s batches
    (which carry ``plmkit_entities``), every dropout of the frozen model at ``dropout``. The plug stays attached."""
    for p in model.parameters():
        p.requires_grad_(False)
    attach(model, mapper, table)
    for p in mapper.parameters():
        p.requires_grad_(True)

    def loss(m: nn.Module, batch: dict) -> torch.Tensor:
        return m(**batch).loss

    try:
        with dropout_set(model, dropout):
            return train(model, list(records), config, loss, collate_fn=collate)
    except BaseException:
        detach(model)  # a failed run leaves the model as it found it
        raise
