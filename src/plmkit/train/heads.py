"""Language-model training: a whole model (pretraining from scratch, continued pretraining), or only a
fresh LM head on a frozen model (e.g. a sentence encoder shipped without one)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..arch import base_model
from ..errors import ConfigError
from ..eval.lm import is_causal_lm, lm_loss
from .loop import TrainConfig, TrainResult, causal_lm_collate, train


def lm_collate(tokenizer, causal: bool, mlm_probability: float = 0.15):
    """Batches for the LM objective: BERT-style masking for masked LMs, padded labels for causal LMs."""
    from transformers import DataCollatorForLanguageModeling

    if causal:
        return causal_lm_collate(tokenizer)
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)


def real_tokens(batch: dict, step: int) -> dict[str, float]:
    """A ``counters`` function for :func:`plmkit.train.train`: the real (unpadded) tokens of a batch."""
    mask = batch.get("attention_mask")
    return {"tokens": float(mask.sum() if mask is not None else batch["input_ids"].numel())}


def train_lm(model: torch.nn.Module, tokenizer, texts: Sequence[str], config: TrainConfig, *,
             mlm_probability: float = 0.15, max_length: int = 128, min_tokens: int = 1) -> TrainResult:
    """Train ``model`` (its parameters with ``requires_grad``) on the LM objective over ``texts``:
    masked-token prediction for masked LMs, next-token prediction for causal LMs. ``result.totals["tokens"]``
    counts the real tokens trained on.

    Texts with fewer than ``min_tokens`` tokens besides special tokens are skipped."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    specials = tokenizer.num_special_tokens_to_add()
    data = [{"input_ids": i} for i in ids if len(i) - specials >= min_tokens]
    return train(model, data, config, lm_loss, collate_fn=lm_collate(tokenizer, is_causal_lm(model), mlm_probability),
                 counters=real_tokens)


def fit_lm_head(model: torch.nn.Module, tokenizer, texts: Sequence[str], out_dir: str | Path, *, steps: int = 300,
                batch_size: int = 16, lr: float = 1e-3, mlm_probability: float = 0.15, max_length: int = 128,
                seed: int = 0, progress: bool = True) -> TrainResult:
    """Train only the parameters outside the base model (the LM head; tied embeddings stay frozen).

    Used where a checkpoint has no LM head, such as MiniLM's sentence encoder: the head is trained
    on ``texts`` with the encoder frozen, so language modelling can be measured and continued
    without changing what the encoder computes. ``requires_grad`` is restored afterwards.
    """
    base = {id(p) for p in base_model(model).parameters()}
    head = [p for p in model.parameters() if id(p) not in base]
    if not head:
        raise ConfigError("the model has no parameters outside its base model: load it with an LM head "
                          "(task='masked-lm' or 'causal-lm')")
    before = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad = id(p) not in base
    try:
        result = train_lm(model, tokenizer, texts,
                          TrainConfig(out_dir=str(out_dir), max_steps=steps, batch_size=batch_size, lr=lr,
                                      warmup_steps=max(1, steps // 10), resume=False, progress=progress, seed=seed),
                          mlm_probability=mlm_probability, max_length=max_length)
    finally:
        for p in model.parameters():
            p.requires_grad = before[id(p)]
    model.eval()
    return result
