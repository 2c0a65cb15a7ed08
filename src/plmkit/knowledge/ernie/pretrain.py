"""ERNIE's pretraining: masked language modelling plus the denoising entity auto-encoder (dEA).

dEA corrupts the aligned entities of each sequence (a share replaced by a random entity, a share dropped, the
rest kept) and asks each such token's final state, taken into entity space by the entity head, to pick its
original entity among the batch's entities (dot products, cross-entropy). Masks and corruptions are drawn
inside the loss from the seed, the step and the batch's ids, so a resumed run reproduces the same draws.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.nn import functional as F

from ... import arch
from ...errors import ConfigError
from ...pretrain.masking import batch_generator, mask_batch
from ...train.loop import TrainConfig, TrainResult, train, unwrap_model
from .align import entity_collate
from .model import ERNIE


def corrupt_entities(entity_ids: torch.Tensor, num_entities: int, replace: float, drop: float,
                     generator: torch.Generator) -> torch.Tensor:
    """dEA's input: of the aligned entities (ids > 0), a ``replace`` share becomes a uniformly drawn entity and a
    ``drop`` share becomes 0 (no entity); the rest stay."""
    u = torch.rand(entity_ids.shape, generator=generator).to(entity_ids.device)
    random_ids = torch.randint(1, num_entities + 1, entity_ids.shape, generator=generator).to(entity_ids.device)
    aligned = entity_ids > 0
    out = torch.where(aligned & (u < replace), random_ids, entity_ids)
    return out.masked_fill(aligned & (u >= replace) & (u < replace + drop), 0)


def dea_loss(ernie: ERNIE, hidden: torch.Tensor, entity_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each aligned token's original entity among the batch's entities (zero when the batch holds
    fewer than two distinct entities: nothing to choose between; the zero still touches the entity head, so that
    every process of a distributed run has gradients for the same parameters)."""
    aligned = entity_ids > 0
    candidates = torch.unique(entity_ids[aligned])
    if candidates.numel() < 2:
        return ernie.entity_head(hidden[:, :1]).sum() * 0.0
    pred = ernie.entity_head(hidden[aligned])
    scores = pred @ ernie.entity_table[candidates].to(pred.dtype).T
    return F.cross_entropy(scores.float(), torch.searchsorted(candidates, entity_ids[aligned]))


def pretrain_loss(tokenizer: Any, *, mlm_probability: float = 0.15, seed: int = 0):
    """``loss(model, batch, step)`` for :func:`plmkit.train.train`: MLM loss + ``dea_weight`` * dEA loss. The MLM
    head runs on the masked positions only (the vocabulary projection of every other token would be wasted)."""
    def loss(model: Any, batch: dict, step: int) -> torch.Tensor:
        ernie: ERNIE = unwrap_model(model)
        head = arch.head(ernie.model)
        if head is None:
            raise ConfigError("ERNIE pretraining needs an encoder with an MLM head (e.g. *ForMaskedLM)")
        g = batch_generator(batch["input_ids"], step, seed)
        inputs, labels = mask_batch(batch["input_ids"], tokenizer, mlm_probability, g)
        cfg = ernie.config
        noisy = corrupt_entities(batch["entity_ids"], ernie.num_entities, cfg.dea_replace, cfg.dea_drop, g)
        hidden = model(input_ids=inputs, attention_mask=batch["attention_mask"], entity_ids=noisy, encode_only=True)
        masked = labels != -100
        mlm = (F.cross_entropy(head(hidden[masked]).float(), labels[masked]) if masked.any()
               else head(hidden[:, :1]).sum() * 0.0)
        return mlm + cfg.dea_weight * dea_loss(ernie, hidden, batch["entity_ids"])

    return loss


def pretrain(ernie: ERNIE, tokenizer: Any, records: Sequence[dict], config: TrainConfig, *,
             mlm_probability: float = 0.15, eval_fn: Any = None) -> TrainResult:
    """Continue pretraining ``ernie`` (over a model with an MLM head) on ``records`` from
    :func:`~plmkit.knowledge.ernie.encode_with_entities`, through :func:`plmkit.train.train` (resumable,
    mixed precision, several processes). The entity table stays frozen (it is a buffer)."""
    def counters(batch: dict, step: int) -> dict[str, float]:
        return {"tokens": float(batch["attention_mask"].sum()), "entities": float((batch["entity_ids"] > 0).sum())}

    return train(ernie, list(records), config, pretrain_loss(tokenizer, mlm_probability=mlm_probability,
                                                             seed=config.seed),
                 collate_fn=entity_collate(tokenizer), eval_fn=eval_fn, counters=counters)
