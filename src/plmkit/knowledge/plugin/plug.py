"""Plug and play: a mapper put into a downstream model that was trained without knowledge, and the controls that
tell what the plug brings.

Controls (:data:`CONTROLS`), each on the same records:

- ``no plug``: the downstream model alone;
- ``plug``: each linked mention gets its entity's mapped vector before it;
- ``zero vector``: a zero vector in the same places (the effect of the extra position alone);
- ``random vector``: norm-matched random KG vectors through the same mapper (knowledge-free vectors of the
  same scale);
- ``description``: no vector; the entity's description written into the text before its mention instead
  (a retrieval-style baseline).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ...device import to_device
from ...errors import ConfigError
from ...pretrain.masking import pad_collate
from ...train.loop import TrainConfig, TrainResult
from .inject import attach, detach
from .maptune import train_mapper
from .records import plug_entities

CONTROLS = ("no plug", "plug", "zero vector", "random vector", "description")


class ZeroMapper(nn.Module):
    """Maps every entity vector to the zero vector of the model's input-embedding space."""

    def __init__(self, model_dim: int):
        super().__init__()
        self.model_dim = model_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.model_dim)


@contextlib.contextmanager
def plugged(model: nn.Module, mapper: nn.Module, table: torch.Tensor) -> Iterator[nn.Module]:
    """``model`` with the plug attached inside the block, detached after (also on an exception)."""
    attach(model, mapper, table)
    try:
        yield model
    finally:
        detach(model)


def plug_collate(tokenizer: Any, *, entities: bool = True) -> Callable[[list[dict]], dict]:
    """Pad ``{"input_ids", "mentions"[, "label"]}`` records into a batch with ``plmkit_entities`` (one pseudo-token
    before each mention; none with ``entities=False``) and ``labels`` when the records carry one."""
    pad = pad_collate(tokenizer)

    def collate(rows: list[dict]) -> dict:
        batch = pad([{"input_ids": r["input_ids"]} for r in rows])
        left = getattr(tokenizer, "padding_side", "right") == "left"
        if left:  # positions count from each text's first token, with or without a plug
            batch["position_ids"] = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        if entities:
            t = batch["input_ids"].shape[1]
            batch["plmkit_entities"] = [[(p + (t - len(r["input_ids"]) if left else 0), e) for p, e in plug_entities(r)]
                                        for r in rows]
            batch["plmkit_padding_side"] = "left" if left else "right"
        if "label" in rows[0]:
            batch["labels"] = torch.tensor([r["label"] for r in rows])
        return batch

    return collate


@torch.no_grad()
def predict_classes(model: nn.Module, tokenizer: Any, records: Sequence[dict], *, entities: bool = True,
                    batch_size: int = 32) -> list[int]:
    """The arg-max class of a sequence classifier on each record (with its plug's entities when ``entities``)."""
    model.eval()
    collate = plug_collate(tokenizer, entities=entities)
    preds: list[int] = []
    for i in range(0, len(records), batch_size):
        batch = collate([{k: v for k, v in r.items() if k != "label"} for r in records[i:i + batch_size]])
        preds += model(**to_device(batch, model)).logits.argmax(-1).tolist()
    return preds


def control_setup(control: str, mapper: nn.Module, table: torch.Tensor, model_dim: int, *, seed: int = 0
                  ) -> tuple[nn.Module, torch.Tensor] | None:
    """The mapper and table a vector control plugs (None for ``no plug`` and ``description``, which plug nothing)."""
    from ..ernie.study import norm_matched_random

    if control not in CONTROLS:
        raise ConfigError(f"unknown control '{control}'; choose from {', '.join(CONTROLS)}")
    if control == "plug":
        return mapper, table
    if control == "zero vector":
        return ZeroMapper(model_dim), table
    if control == "random vector":
        return mapper, torch.cat([table[:1], norm_matched_random(table[1:], seed)])
    return None


def under_controls(model: nn.Module, mapper: nn.Module, table: torch.Tensor, controls: Sequence[str],
                   run: Callable[[Sequence[dict], bool], Any], records: Sequence[dict],
                   described: Sequence[dict] | None = None, *, seed: int = 0) -> dict[str, Any]:
    """``run(records, entities)`` once per control: with the control's plug attached (``entities=True``), with
    none, or on ``described`` (the records with the descriptions written into their text) for ``description``."""
    dim = model.get_input_embeddings().weight.shape[1]
    out = {}
    for control in controls:
        if control == "description":
            if described is None:
                raise ConfigError("the description control needs the described records (description_records)")
            out[control] = run(described, False)
            continue
        setup = control_setup(control, mapper, table, dim, seed=seed)
        if setup is None:
            out[control] = run(records, False)
            continue
        with plugged(model, *setup):
            out[control] = run(records, True)
    return out


def evaluate_controls(model: nn.Module, tokenizer: Any, records: Sequence[dict], mapper: nn.Module,
                      table: torch.Tensor, *, description_records: Sequence[dict] | None = None,
                      controls: Sequence[str] = CONTROLS, seed: int = 0,
                      score: Callable[[list[int], Sequence[dict]], dict] | None = None) -> dict[str, dict]:
    """Score a downstream classifier on ``records`` under each control (``description`` reads
    ``description_records``: the same rows with the descriptions written into their text). ``score(preds,
    records)`` defaults to accuracy and macro-F1."""
    from ..ernie.finetune import scores as default_score

    score = score or default_score

    def run(recs: Sequence[dict], entities: bool) -> dict:
        return score(predict_classes(model, tokenizer, recs, entities=entities), recs)

    return under_controls(model, mapper, table, controls, run, records, description_records, seed=seed)


def task_map_tune(model: nn.Module, mapper: nn.Module, table: torch.Tensor, tokenizer: Any,
                  records: Sequence[dict], config: TrainConfig, *, dropout: float = 0.25) -> TrainResult:
    """Task-specific map-tuning: only ``mapper`` trains, on the downstream model's own task loss over ``records``
    (``{"input_ids", "mentions", "label"}``); the model stays frozen. The plug stays attached (detach to undo)."""
    return train_mapper(model, mapper, table, records, config, plug_collate(tokenizer), dropout=dropout)


@torch.no_grad()
def mention_loss(model: nn.Module, tokenizer: Any, records: Sequence[dict], *, mlm: bool, entities: bool = True,
                 batch_size: int = 16) -> float:
    """The mention-masked LM loss per mention token on ``records`` (``{"input_ids", "mentions"}``), with the
    attached plug's pseudo-tokens (``entities``) or without any."""
    from .maptune import mention_batch

    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(records), batch_size):
        batch = mention_batch(tokenizer, records[i:i + batch_size], mlm=mlm)
        if not entities:
            batch.pop("plmkit_entities")
            batch.pop("plmkit_padding_side")
        scored = batch["labels"] if mlm else batch["labels"][:, 1:]  # a causal LM never predicts position 0
        n = int((scored != -100).sum())  # the model's loss is the mean over these tokens
        if n:
            total += float(model(**to_device(batch, model)).loss) * n
            count += n
    return total / max(count, 1)


def mention_loss_controls(model: nn.Module, tokenizer: Any, records: Sequence[dict], mapper: nn.Module,
                          table: torch.Tensor, *, mlm: bool, seed: int = 0) -> dict[str, float]:
    """:func:`mention_loss` with no plug, a zero vector, random vectors and the plug: does the mapped vector carry
    the mention?"""
    def run(recs: Sequence[dict], entities: bool) -> float:
        return mention_loss(model, tokenizer, recs, mlm=mlm, entities=entities)

    return under_controls(model, mapper, table, ("no plug", "zero vector", "random vector", "plug"), run, records,
                          seed=seed)
