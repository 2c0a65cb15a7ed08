"""Model FLOPs by the parameter count: the accounting pretraining studies compare compute with.

A dense transformer does about ``2·N`` FLOPs per token in a forward pass and ``6·N`` in a training step
(forward and backward), where ``N`` counts the parameters that take part in matrix products: every
parameter except the input embedding tables (a lookup costs no multiply), plus the output projection onto
the vocabulary even when it shares its weight with the input embedding. The attention-score products
(``4·T·d`` per token and layer) are left out, as is usual; at the short sequences plmkit pretrains on they
are a few per cent. :func:`plmkit.eval.timing.count_flops` measures a call's FLOPs instead.
"""
from __future__ import annotations

import torch
from torch import nn


def matmul_params(model: nn.Module) -> int:
    """Parameters that multiply activations: all but the input embedding tables, the tied LM head counted."""
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    total = sum(p.numel() for p in model.parameters() if id(p) not in lookups)
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(out, "weight", None)
    if isinstance(weight, torch.Tensor) and id(weight) in lookups:  # tied: the projection still multiplies
        total += weight.numel()
    return total


def _n(model: nn.Module | int) -> int:
    return model if isinstance(model, int) else matmul_params(model)


def forward_flops(model: nn.Module | int, tokens: int) -> int:
    """FLOPs of a forward pass over ``tokens`` tokens: ``2·N·tokens`` (``model`` or its :func:`matmul_params`)."""
    return 2 * _n(model) * int(tokens)


def train_flops(model: nn.Module | int, tokens: int) -> int:
    """FLOPs of a training step (forward and backward) over ``tokens`` tokens: ``6·N·tokens``."""
    return 6 * _n(model) * int(tokens)
