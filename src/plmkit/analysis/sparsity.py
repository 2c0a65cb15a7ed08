"""FFN activation sparsity: how many neurons matter per token, layer by layer.

For each token (padding excluded) and layer, at the neuron site (the input of ffn_out):
- ``active@t``: the fraction of neurons with |activation| > t (for ReLU, t=0 counts the non-zero ones);
- ``top{p}%``: the share of the token's total |activation| mass held by its top p% neurons.
A ReLU FFN with 5% active neurons needs only those 5%; a GELU/SiLU FFN has no exact zeros, so the
mass concentration says how much a magnitude-selected subset can carry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .. import arch, hooks
from ..data.batching import token_batches


@dataclass
class SparsityConfig:
    thresholds: tuple[float, ...] = (0.0, 0.01, 0.05, 0.1)
    top_fractions: tuple[float, ...] = (0.1, 0.2, 0.3)
    max_length: int = 128
    batch_size: int = 8
    hist_bins: int = 40

    def __post_init__(self) -> None:
        if not all(0 < f < 1 for f in self.top_fractions):
            raise ValueError("top_fractions must lie in (0, 1)")


@dataclass
class LayerSparsity:
    layer: str
    d_ff: int
    n_tokens: int
    active: dict[str, dict[str, float]]  # "active@0.1" -> {"mean", "p10", "p50", "p90"} over tokens
    top_mass: dict[str, float]  # "top10%" -> mean share of |activation| mass
    hist: list[int] = field(default_factory=list)  # per-token active@(largest threshold) histogram on [0, 1]

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _token_stats(a: torch.Tensor, cfg: SparsityConfig) -> dict[str, torch.Tensor]:
    """Per-token statistics of activations ``a`` (tokens, d_ff)."""
    mag = a.abs().float()
    out = {f"active@{t:g}": (mag > t).float().mean(1) for t in cfg.thresholds}
    sorted_mag = mag.sort(1, descending=True).values
    total = sorted_mag.sum(1).clamp_min(1e-12)
    cum = sorted_mag.cumsum(1)
    d = a.shape[1]
    for f in cfg.top_fractions:
        k = max(1, int(round(f * d)))
        out[f"top{int(round(f * 100))}%"] = cum[:, k - 1] / total
    return out


def ffn_sparsity(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    config: SparsityConfig | None = None,
    progress: bool = True,
    override: arch.layers.Override = None,
) -> list[LayerSparsity]:
    """Measure FFN activation sparsity of ``model`` on ``texts``, one entry per layer (first stack)."""
    from tqdm.auto import tqdm

    cfg = config or SparsityConfig()
    spec = arch.resolve(model, override)
    stack = spec.stacks[0].name
    sites = hooks.site_names(model, "ffn.neurons", stack=stack, override=override)
    per_site: dict[str, dict[str, list[torch.Tensor]]] = {s: {} for s in sites}
    device = next(model.parameters()).device
    n_batches = -(-len(texts) // cfg.batch_size)
    batches = token_batches(tokenizer, texts, cfg.batch_size, cfg.max_length, device)
    for enc in tqdm(batches, total=n_batches, desc="sparsity", disable=not progress):
        with torch.no_grad(), hooks.capture(model, sites, pool="tokens", attention_mask=enc["attention_mask"],
                                            override=override) as acts:
            model(**enc)
        for s in sites:
            for k, v in _token_stats(acts[s], cfg).items():
                per_site[s].setdefault(k, []).append(v)
    layers = arch.layers(model, override, stack=stack)
    result = []
    hist_key = f"active@{max(cfg.thresholds):g}"
    for s, layer in zip(sites, layers):
        stats = {k: torch.cat(v).cpu().numpy() for k, v in per_site[s].items()}  # numpy statistics: on the CPU
        active = {
            k: {"mean": float(v.mean()), "p10": float(np.quantile(v, 0.1)), "p50": float(np.median(v)),
                "p90": float(np.quantile(v, 0.9))}
            for k, v in stats.items() if k.startswith("active@")
        }
        top = {k: float(v.mean()) for k, v in stats.items() if k.startswith("top")}
        hist = np.histogram(stats[hist_key], bins=cfg.hist_bins, range=(0, 1))[0].tolist()
        result.append(LayerSparsity(s, layer.d_ff, int(len(stats[hist_key])), active, top, hist))
    return result
