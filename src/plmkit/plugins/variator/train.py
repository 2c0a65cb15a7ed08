"""Train compression plugins by distillation from the same model with its plugins bypassed."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...compress.distill import kd_loss, masked_mean
from ...device import unwrap_model
from ...errors import ConfigError
from ...train import TrainConfig, TrainResult, train
from .model import bypassed, config_of, plugin_parameters, plugged

_NOT_INPUTS = ("labels",)


def distillation_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """MSE of the last hidden states and/or KL of the logits (the config's ``loss``), plugged vs bypassed.

    The teacher is the same network with its plugins bypassed, run under ``no_grad``; both runs see the
    backbone in eval mode (no dropout), so the only difference between them is the plugins. Padding
    positions are left out of both terms.
    """
    user = unwrap_model(model)
    user.eval()
    cfg = config_of(user)
    inputs = {k: v for k, v in batch.items() if k not in _NOT_INPUTS}
    want_hidden = cfg.loss in ("hidden", "both")
    with torch.no_grad(), bypassed(user):
        teacher = user(**inputs, output_hidden_states=want_hidden)
    student = model(**inputs, output_hidden_states=want_hidden)
    mask = inputs.get("attention_mask")
    loss = torch.zeros((), device=_logits(student).device)
    if want_hidden:
        loss = loss + masked_mean(F.mse_loss(_last_hidden(student).float(), _last_hidden(teacher).float(),
                                             reduction="none").mean(-1), mask)
    if cfg.loss in ("logits", "both"):
        loss = loss + kd_loss(_logits(student), _logits(teacher), cfg.temperature, mask)
    return loss


def distill(model: nn.Module, data: Sequence[Any], config: TrainConfig, *,
            collate_fn: Callable[[list[Any]], Any] | None = None) -> TrainResult:
    """Train only the plugins of ``model`` (attach them first) on ``data`` through :func:`plmkit.train.train`.

    The backbone's ``requires_grad`` flags are cleared for the run and restored afterwards.
    """
    if not plugged(model):
        raise ConfigError("attach plugins first: plmkit.plugins.variator.attach(model, VariatorConfig(k=...))")
    own = {id(p) for p in plugin_parameters(model)}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in own)
        return train(model, data, config, distillation_loss, collate_fn=collate_fn)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _last_hidden(out: Any) -> torch.Tensor:
    hs = getattr(out, "decoder_hidden_states", None) or getattr(out, "hidden_states", None)
    if hs is not None:
        return hs[-1]
    return out.last_hidden_state


def _logits(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    return logits if logits is not None else _last_hidden(out)
