"""Fitting a fresh language-modelling head on a frozen model (e.g. a sentence encoder shipped without one)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..arch import base_model
from ..errors import ConfigError
from .loop import TrainConfig, TrainResult, causal_lm_collate, train


def is_causal_lm(model: torch.nn.Module) -> bool:
    """True for generating (causal) LMs, False for masked LMs."""
    return bool(getattr(model, "can_generate", lambda: False)())


def lm_collate(tokenizer, causal: bool, mlm_probability: float = 0.15):
    """Batches for the LM objective: BERT-style masking for masked LMs, padded labels for causal LMs."""
    from transformers import DataCollatorForLanguageModeling

    if causal:
        return causal_lm_collate(tokenizer)
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)


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
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    try:
        result = train(model, [{"input_ids": i} for i in ids],
                       TrainConfig(out_dir=str(out_dir), max_steps=steps, batch_size=batch_size, lr=lr,
                                   warmup_steps=max(1, steps // 10), resume=False, progress=progress, seed=seed),
                       collate_fn=lm_collate(tokenizer, is_causal_lm(model), mlm_probability))
    finally:
        for p in model.parameters():
            p.requires_grad = before[id(p)]
    model.eval()
    return result


# Families whose LM head is one module mapping hidden states to vocabulary logits.
_ONE_MODULE_MLM_HEADS = ("bert", "roberta", "xlm-roberta")


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's LM loss on a collated batch, for a masked LM computing vocabulary logits only at
    the masked positions (~15% of tokens), which makes the output projection ~7x cheaper than
    ``model(**batch).loss`` at the same value. Other models fall back to ``model(**batch).loss``."""
    from torch.nn import functional as F

    from ..arch import head

    if is_causal_lm(model) or getattr(model.config, "model_type", None) not in _ONE_MODULE_MLM_HEADS:
        return model(**batch).loss
    lm_head = head(model)
    if lm_head is None:
        return model(**batch).loss
    hidden = base_model(model)(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state
    keep = batch["labels"] != -100
    return F.cross_entropy(lm_head(hidden[keep]).float(), batch["labels"][keep])
