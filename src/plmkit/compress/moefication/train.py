"""Training a MoEfied model end to end: the experts and routers fine-tuned on the LM objective through
:mod:`plmkit.train` (the LLaMA-MoE route of continued training after the split), everything else frozen."""
from __future__ import annotations

from typing import Sequence

import torch

from ...errors import ConfigError
from ...train import TrainConfig, TrainResult
from .model import _require_moe

PARTS = ("experts", "routers")


def trainable_parameters(model: torch.nn.Module, parts: Sequence[str] = PARTS) -> list[torch.nn.Parameter]:
    """The expert weights and / or router parameters of every MoE layer."""
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise ConfigError(f"parts must be a non-empty subset of {PARTS}, not {tuple(parts)}")
    params: list[torch.nn.Parameter] = []
    for m in _require_moe(model):
        if "experts" in parts:
            params += [p for p in (m.w_in, m.b_in, m.w_out, m.b_out) if p is not None]
        if "routers" in parts:
            params += list(m.router.parameters())
    return params


def train_moe(model: torch.nn.Module, tokenizer, texts: Sequence[str], config: TrainConfig, *,
              parts: Sequence[str] = PARTS, max_length: int = 256) -> TrainResult:
    """Fine-tune the MoE layers of a MoEfied ``model`` (from :func:`moefy`) on ``texts`` with the LM objective,
    the tokens flowing through the sparse experts as at inference. Only ``parts`` train; ``requires_grad`` is
    restored afterwards. The trained experts are written back into the original FFN modules (so hooks,
    ``arch`` and :func:`unmoefy` see the trained weights), and :func:`save_moefication` then saves them.

    plmkit's own callers train in fp32 (``mixed_precision="no"``): on this project's 2-core AMD EPYC a bf16
    autocast step of SmolLM2 at 25% active ran no faster than an fp32 one (one thread, 8 x 128 tokens), and on
    the 2-core Xeon with AMX it ran slower (9.4 s against 6.9-7.3 s a step at 50% active, 8 x 128 tokens).
    """
    from ...train.heads import train_lm

    params = trainable_parameters(model, parts)
    if not params:
        raise ConfigError(f"nothing to train: the MoE layers have no {' or '.join(parts)} parameters "
                          "(a similarity router has none; use router='mlp')")
    layers = _require_moe(model)
    before = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad = False
    for p in params:
        p.requires_grad = True
    try:
        return train_lm(model, tokenizer, texts, config, max_length=max_length)
    finally:
        for p in model.parameters():
            p.requires_grad = before[id(p)]
        for m in layers:
            if "experts" in parts:
                m.write_back()
                m.trained = True
