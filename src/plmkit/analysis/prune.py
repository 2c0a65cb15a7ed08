"""Structured FFN pruning into a real smaller model (rows and columns removed, never masked).

The skill-neuron paper's pruning experiment (Wang et al. 2022): keep some FFN neurons of some layers and
fold the removed neurons' mean activation into the ``ffn_out`` bias, so the pruned model computes exactly
what the original computes with those neurons mean-ablated (``hooks.mean_ablate`` at ``ffn.neurons``).

>>> stats = activation_stats(model, batches, sites=["blocks.3.ffn.neurons"], pool="tokens")   # doctest: +SKIP
>>> report = prune_ffn_neurons(model, {"blocks.3.ffn.neurons": keep_idx}, stats)             # doctest: +SKIP
>>> save_pruned(model, tokenizer, "out/pruned")   # plmkit.assets.load_model("out/pruned") loads it  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .. import arch
from .._io import atomic_dir
from ..errors import ConfigError
from .neurons import RunningStats

from ..arch.resize import FFN_OUT_BIAS_KEY as BIAS_KEY  # noqa: F401  (config keys, re-exported)
from ..arch.resize import FFN_SIZES_KEY as SIZES_KEY  # noqa: F401
from ..arch.resize import ffn_sizes, record_ffn_sizes, shrink_ffn
from ..assets.pruned import load_pruned  # noqa: F401  (load_model reads pruned folders through it)


@dataclass
class LayerPrune:
    site: str
    d_ff_before: int
    d_ff_after: int


@dataclass
class PruneReport:
    """What :func:`prune_ffn_neurons` did. ``expected_removed`` is computed from the module shapes before
    pruning; it equals ``params_before - params_after``."""

    params_before: int
    params_after: int
    expected_removed: int
    ffn_params_before: int
    ffn_params_after: int
    layers: list[LayerPrune] = field(default_factory=list)
    ffn_sizes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def removed(self) -> int:
        return self.params_before - self.params_after


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ffn_projections(layer: arch.Layer) -> list[nn.Module]:
    return [m for m in (layer.ffn_in, layer.ffn_gate, layer.ffn_out) if m is not None]


def ffn_params(model: nn.Module) -> int:
    """Parameters in the FFN projections (ffn_in, ffn_gate, ffn_out weights and biases) of every layer."""
    return sum(p.numel() for layer in arch.layers(model) for m in _ffn_projections(layer) for p in m.parameters())


def _indices(value: Any, d_ff: int, site: str) -> torch.Tensor:
    """Sorted unique neuron indices in [0, d_ff), or a one-line ConfigError."""
    t = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    t = t.reshape(-1)
    if t.numel() == 0:
        raise ConfigError(f"prune: keep['{site}'] keeps no neurons; keep at least one (or leave the layer out of keep)")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise ConfigError(f"prune: keep['{site}'] must hold integer neuron indices, got dtype {t.dtype}")
    t = t.long()
    bad = t[(t < 0) | (t >= d_ff)]
    if bad.numel():
        raise ConfigError(f"prune: keep['{site}'] holds index {int(bad[0])}, outside [0, {d_ff}) (the layer's d_ff)")
    unique = torch.unique(t)  # sorted
    if unique.numel() != t.numel():
        raise ConfigError(f"prune: keep['{site}'] lists some neuron more than once")
    return unique


def _means(value: Any, d_ff: int, site: str) -> torch.Tensor:
    m = value.mean if isinstance(value, RunningStats) else value
    if m is None:
        raise ConfigError(f"prune: means['{site}'] is an empty RunningStats")
    m = m.detach().cpu() if isinstance(m, torch.Tensor) else torch.as_tensor(np.asarray(m))
    m = m.double().reshape(-1)
    if m.numel() != d_ff:
        raise ConfigError(f"prune: means['{site}'] has {m.numel()} values; the layer has {d_ff} neurons")
    if not torch.isfinite(m).all():
        raise ConfigError(f"prune: means['{site}'] holds NaN or infinite values")
    return m


def check_plain_ffn(layer: arch.Layer) -> None:
    """Refuse FFNs where a wrapper (MoEfication, LoRA, ...) stands on the FFN or a projection: shapes would disagree."""
    for module in (*_ffn_projections(layer), arch.ffn_module(layer), arch.outside_ffn_out(layer)):
        if module is not None and arch.is_wrapper(module):
            raise ConfigError(f"prune: {layer.name}: a {type(module).__name__} wraps the FFN; prune before wrapping, "
                              "or merge/unwrap it first (plmkit.arch.unwrap)")
    layer.ffn_in_weight(), layer.ffn_gate_weight()  # a quantized projection raises here, before anything changes


def _removed_params(layer: arch.Layer, n_removed: int, adds_bias: bool) -> int:
    """Parameters that removing ``n_removed`` neurons of ``layer`` takes away, from the module shapes."""
    n = 0
    for module in (layer.ffn_in, layer.ffn_gate):
        if module is not None:
            n += n_removed * (layer.d_model + (module.bias is not None))
    return n + n_removed * layer.d_model - (layer.d_model if adds_bias else 0)


def prune_ffn_neurons(model: nn.Module, keep: Mapping[str, Any],
                      means: Mapping[str, Any] | None = None) -> PruneReport:
    """Remove every FFN neuron not in ``keep`` ({``blocks.3.ffn.neurons``: indices to keep}), in place.

    For each listed layer the ffn_in (and ffn_gate) rows and biases and the ffn_out columns of the removed
    neurons go; layers not listed are untouched. With ``means`` ({site: per-neuron means, an array or a
    :class:`RunningStats`}) the removed neurons' mean contribution ``W_out[:, removed] @ mean[removed]`` is
    folded into ffn_out's bias (created when the family has none), so the result equals the original with
    those neurons mean-ablated; without, they are simply dropped (as if zeroed). Everything is checked
    before anything changes.
    """
    by_site = {f"{layer.name}.ffn.neurons": layer for layer in arch.layers(model)}
    plan: list[tuple[str, arch.Layer, torch.Tensor, torch.Tensor | None]] = []
    for site, value in keep.items():
        if site not in by_site:
            raise ConfigError(f"prune: unknown site '{site}'; expected one of {', '.join(list(by_site)[:3])}, ...")
        layer = by_site[site]
        check_plain_ffn(layer)
        idx = _indices(value, layer.d_ff, site)
        mean = None
        if means is not None:
            if site not in means:
                raise ConfigError(f"prune: no means for '{site}'; pass means for every site in keep, or means=None")
            mean = _means(means[site], layer.d_ff, site)
        plan.append((site, layer, idx, mean))

    before, ffn_before, expected = n_params(model), ffn_params(model), 0
    report_layers = []
    for site, layer, idx, mean in plan:
        d_ff = layer.d_ff
        removed = torch.ones(d_ff, dtype=torch.bool)
        removed[idx] = False
        fold = None
        if mean is not None and removed.any():
            w_out = layer.ffn_out_weight().detach()
            rm = removed.nonzero().reshape(-1)
            fold = w_out[:, rm.to(w_out.device)].double() @ mean[rm].to(w_out.device)
        expected += _removed_params(layer, int(removed.sum()), fold is not None and layer.ffn_out.bias is None)
        with torch.no_grad():
            shrink_ffn(layer, idx, fold)
        report_layers.append(LayerPrune(site, d_ff, layer.d_ff))
    record_ffn_sizes(model)
    return PruneReport(params_before=before, params_after=n_params(model), expected_removed=expected,
                       ffn_params_before=ffn_before, ffn_params_after=ffn_params(model), layers=report_layers,
                       ffn_sizes=ffn_sizes(model))


def save_pruned(model: nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write ``model`` (pruned or not) and ``tokenizer`` as a Hugging Face folder (config.json with the per-layer
    FFN sizes as ``plmkit_ffn_sizes``, model.safetensors, tokenizer files), atomically: the folder appears whole
    or not at all. :func:`plmkit.assets.load_model` loads it back at the pruned shapes."""
    out = Path(out_dir)
    record_ffn_sizes(model)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


__all__ = ["LayerPrune", "PruneReport", "ffn_params", "ffn_sizes", "load_pruned", "prune_ffn_neurons", "save_pruned"]
