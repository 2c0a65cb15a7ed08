"""Answers for models without ReLU sparsity (GELU MiniLM, SiLU-gated SmolLM2).

- ``relufy``: swap every FFN activation for ReLU (then fine-tune briefly, e.g. with plmkit.train):
  the activations get exact zeros, and MoEfication's routers have real sparsity to find.
- ``magnitude_mask``: CATS-style neuron selection without retraining: per layer, zero the neurons
  whose |act(gate)| (|act(in)| for a plain FFN) falls below a threshold calibrated so that a given
  fraction stays active. This is a *quality* measurement at neuron granularity: it computes the FFN
  densely and masks, so it has no speed of its own (CATS and TEAL get theirs from custom kernels).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ... import arch
from ...arch.wrap import ActivationWrapper
from ...errors import ConfigError


class ReLUAct(ActivationWrapper):
    """ReLU in place of an FFN's activation; the original stays as ``base_layer``."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer, nn.ReLU())


def relufy(model: nn.Module, override: arch.layers.Override = None) -> nn.Module:
    """Make every FFN use ReLU (in place); for a gated FFN, ``relu(gate) * up``. Undo with :func:`unrelufy`.

    Deterministic: no random draw is involved."""
    for layer in arch.layers(model, override):
        if not isinstance(arch.ffn_act(layer), ReLUAct):
            arch.set_ffn_act(layer, ReLUAct(arch.ffn_act(layer)))
    return model


def unrelufy(model: nn.Module) -> int:
    """Give every FFN its original activation back; returns how many were restored."""
    return arch.unwrap(model, ReLUAct)


class ThresholdAct(ActivationWrapper):
    """``act(x)`` with entries of magnitude below ``threshold`` set to zero (``act`` is kept as ``base_layer``)."""

    def __init__(self, act: nn.Module, threshold: float):
        super().__init__(act)
        self.threshold = threshold

    @property
    def inner(self) -> nn.Module:
        return self.base_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.base_layer(x)
        return a * (a.abs() >= self.threshold)


def magnitude_mask(model: nn.Module, active: float, calibration: Iterable[dict[str, torch.Tensor]],
                   max_tokens: int = 4096, override: arch.layers.Override = None, seed: int = 0) -> list[float]:
    """Install per-layer thresholds keeping ``active`` of the neurons on calibration tokens; returns them.

    Undo with :func:`remove_magnitude_mask`.
    """
    from .model import collect_ffn_inputs

    if not 0 < active <= 1:
        raise ConfigError(f"active must lie in (0, 1], got {active}")
    layer_list = arch.layers(model, override)
    if any(isinstance(arch.ffn_act(l), ThresholdAct) for l in layer_list):
        raise ConfigError("a magnitude mask is already installed; call remove_magnitude_mask(model) first")
    inputs = collect_ffn_inputs(model, calibration, max_tokens, override)
    g = torch.Generator().manual_seed(seed)
    thresholds = []
    for layer, x in zip(layer_list, inputs):
        act = arch.ffn_act(layer)
        sel = layer.ffn_gate if layer.ffn_gate is not None else layer.ffn_in
        with torch.no_grad():
            mag = act(sel(x.to(device=layer.ffn_in_weight().device, dtype=layer.ffn_in_weight().dtype)))
            mag = mag.abs().float().flatten().cpu()
        sample = mag[torch.randperm(len(mag), generator=g)[:1_000_000]]
        t = float(torch.quantile(sample, 1 - active)) if active < 1 else 0.0
        arch.set_ffn_act(layer, ThresholdAct(act, t))
        thresholds.append(t)
    return thresholds


def remove_magnitude_mask(model: nn.Module, override: arch.layers.Override = None) -> None:
    """Undo :func:`magnitude_mask`."""
    arch.unwrap(model, ThresholdAct)
