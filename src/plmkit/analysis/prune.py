"""Structured FFN pruning into a real smaller model (rows and columns removed, never masked).

The skill-neuron paper's pruning experiment (Wang et al. 2022): keep some FFN neurons of some layers and
fold the removed neurons' mean activation into the ``ffn_out`` bias, so the pruned model computes exactly
what the original computes with those neurons mean-ablated (``hooks.mean_ablate`` at ``ffn.neurons``).

>>> stats = activation_stats(model, batches, sites=["blocks.3.ffn.neurons"], pool="tokens")   # doctest: +SKIP
>>> report = prune_ffn_neurons(model, {"blocks.3.ffn.neurons": keep_idx}, stats)             # doctest: +SKIP
>>> save_pruned(model, tokenizer, "out/pruned")   # plmkit.assets.load_model("out/pruned") loads it  # doctest: +SKIP
"""
from __future__ import annotations

import json
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

SIZES_KEY = "plmkit_ffn_sizes"  # config.json: {stack: [d_ff per layer]}
BIAS_KEY = "plmkit_ffn_out_bias"  # config.json: {stack: [ffn_out has a bias, per layer]}


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


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ffn_projections(layer: arch.Layer) -> list[nn.Module]:
    return [m for m in (layer.ffn_in, layer.ffn_gate, layer.ffn_out) if m is not None]


def ffn_params(model: nn.Module) -> int:
    """Parameters in the FFN projections (ffn_in, ffn_gate, ffn_out weights and biases) of every layer."""
    return sum(p.numel() for layer in arch.layers(model) for m in _ffn_projections(layer) for p in m.parameters())


def ffn_sizes(model: nn.Module) -> dict[str, list[int]]:
    """d_ff of every layer, per stack: ``{"blocks": [48, 24]}`` or ``{"encoder": [...], "decoder": [...]}``."""
    out: dict[str, list[int]] = {}
    for layer in arch.layers(model):
        out.setdefault(layer.stack, []).append(layer.d_ff)
    return out


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


def _check_plain(layer: arch.Layer) -> None:
    """Refuse FFNs where a wrapper (MoEfication, LoRA, ...) stands on the FFN or a projection: shapes would disagree."""
    for module in (*_ffn_projections(layer), arch.ffn_module(layer), arch.outside_ffn_out(layer)):
        if module is not None and arch.is_wrapper(module):
            raise ConfigError(f"prune: {layer.name}: a {type(module).__name__} wraps the FFN; prune before wrapping, "
                              "or merge/unwrap it first (plmkit.arch.unwrap)")
    layer.ffn_in_weight(), layer.ffn_gate_weight()  # a quantized projection raises here, before anything changes


def _set_weight(module: nn.Module, w: torch.Tensor, conv1d: bool) -> None:
    """Put ``w`` (torch's Linear orientation, (out, in)) into ``module`` and update its feature attributes."""
    old = module.weight
    module.weight = nn.Parameter((w.t() if conv1d else w).contiguous(), requires_grad=old.requires_grad)
    n_out, n_in = w.shape
    for attr, value in (("out_features", n_out), ("in_features", n_in), ("nf", n_out), ("nx", n_in)):
        if hasattr(module, attr):  # nn.Linear: in/out_features; GPT-2's Conv1D: nx/nf
            setattr(module, attr, value)


def _shrink(layer: arch.Layer, keep: torch.Tensor, fold: torch.Tensor | None) -> None:
    """Keep neurons ``keep`` of ``layer`` in place; add ``fold`` (d_model) to ffn_out's bias, creating it if needed."""
    for module, w in ((layer.ffn_in, layer.ffn_in_weight()), (layer.ffn_gate, layer.ffn_gate_weight())):
        if module is None:
            continue
        _set_weight(module, w[keep.to(w.device)], layer.conv1d)
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias.detach()[keep.to(module.bias.device)].clone(),
                                       requires_grad=module.bias.requires_grad)
    out = layer.ffn_out
    w = layer.ffn_out_weight()
    _set_weight(out, w[:, keep.to(w.device)], layer.conv1d)
    if fold is not None:
        if out.bias is None:
            out.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device),
                                    requires_grad=out.weight.requires_grad)
        with torch.no_grad():
            out.bias += fold.to(device=out.bias.device, dtype=out.bias.dtype)


def _removed_params(layer: arch.Layer, n_removed: int, adds_bias: bool) -> int:
    """Parameters that removing ``n_removed`` neurons of ``layer`` takes away, from the module shapes."""
    n = 0
    for module in (layer.ffn_in, layer.ffn_gate):
        if module is not None:
            n += n_removed * (layer.d_model + (module.bias is not None))
    return n + n_removed * layer.d_model - (layer.d_model if adds_bias else 0)


def _record(model: nn.Module) -> None:
    """Note the per-layer FFN sizes (and which ffn_out have a bias) in the config, for save and load."""
    config = arch.hf_model(model)[0].config
    sizes, bias = ffn_sizes(model), {}
    for layer in arch.layers(model):
        bias.setdefault(layer.stack, []).append(layer.ffn_out.bias is not None)
    setattr(config, SIZES_KEY, sizes)
    setattr(config, BIAS_KEY, bias)


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
        _check_plain(layer)
        idx = _indices(value, layer.d_ff, site)
        mean = None
        if means is not None:
            if site not in means:
                raise ConfigError(f"prune: no means for '{site}'; pass means for every site in keep, or means=None")
            mean = _means(means[site], layer.d_ff, site)
        plan.append((site, layer, idx, mean))

    before, ffn_before, expected = _n_params(model), ffn_params(model), 0
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
            _shrink(layer, idx, fold)
        report_layers.append(LayerPrune(site, d_ff, layer.d_ff))
    _record(model)
    return PruneReport(params_before=before, params_after=_n_params(model), expected_removed=expected,
                       ffn_params_before=ffn_before, ffn_params_after=ffn_params(model), layers=report_layers,
                       ffn_sizes=ffn_sizes(model))


def save_pruned(model: nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write ``model`` (pruned or not) and ``tokenizer`` as a Hugging Face folder (config.json with the per-layer
    FFN sizes as ``plmkit_ffn_sizes``, model.safetensors, tokenizer files), atomically: the folder appears whole
    or not at all. :func:`plmkit.assets.load_model` loads it back at the pruned shapes."""
    out = Path(out_dir)
    _record(model)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


def _state_dict_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = folder / "model.safetensors"
    if not single.exists():
        raise ConfigError(f"{folder}: a pruned model folder needs model.safetensors; none found")
    return [single]


def _torch_dtype(dtype: Any, state: Mapping[str, torch.Tensor]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):  # the checkpoint's own
        return next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    return getattr(torch, str(dtype).removeprefix("torch."))


def load_pruned(folder: str | Path, config: Any, *, task: str = "auto", dtype: Any = torch.float32,
                trust_remote_code: bool = False, **kwargs: Any) -> nn.Module:
    """The model saved by :func:`save_pruned` in ``folder`` (whose config carries ``plmkit_ffn_sizes``): built
    from ``config``, each layer's FFN shrunk to its recorded size, then the safetensors loaded strictly
    (tied weights apart). ``kwargs`` may only set config attributes (e.g. ``num_labels``)."""
    from safetensors.torch import load_file

    from ..assets.models import build_from_config

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: pruned models (config with {SIZES_KEY}) load from a local folder only")
    for key, value in kwargs.items():
        if not hasattr(config, key):
            raise ConfigError(f"load_model: '{key}' is not supported when loading a pruned folder ({folder})")
        setattr(config, key, value)
    model = build_from_config(config, task, trust_remote_code)
    sizes, biases = getattr(config, SIZES_KEY), getattr(config, BIAS_KEY, None) or {}
    stacks: dict[str, list[arch.Layer]] = {}
    for layer in arch.layers(model):
        stacks.setdefault(layer.stack, []).append(layer)
    if {k: len(v) for k, v in stacks.items()} != {k: len(v) for k, v in sizes.items()}:
        raise ConfigError(f"{folder}: {SIZES_KEY} {sizes} does not match the model's layers "
                          f"{ {k: len(v) for k, v in stacks.items()} }")
    with torch.no_grad():
        for stack, stack_layers in stacks.items():
            flags = biases.get(stack, [False] * len(stack_layers))
            for layer, size, bias in zip(stack_layers, sizes[stack], flags):
                if not 0 < size <= layer.d_ff:
                    raise ConfigError(f"{folder}: {SIZES_KEY} gives {layer.name} {size} neurons (of {layer.d_ff})")
                needs_bias = bool(bias) and layer.ffn_out.bias is None
                _shrink(layer, torch.arange(size), torch.zeros(layer.d_model) if needs_bias else None)
    state: dict[str, torch.Tensor] = {}
    for f in _state_dict_files(folder):
        state.update(load_file(str(f)))
    model.to(_torch_dtype(dtype, state))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = _tied_to_loaded(model, set(state))
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ConfigError(f"{folder}: the checkpoint does not match the pruned model (missing: {missing[:3]}, "
                          f"unexpected: {unexpected[:3]}); load it with the task it was saved with")
    return model.eval()


def _tied_to_loaded(model: nn.Module, loaded: set[str]) -> set[str]:
    """Names of tensors that share storage with a loaded one (tied embeddings, which the checkpoint stores once)."""
    groups: dict[int, list[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        groups.setdefault(id(t), []).append(name)
    return {n for names in groups.values() if any(x in loaded for x in names) for n in names}


__all__ = ["LayerPrune", "PruneReport", "ffn_params", "ffn_sizes", "load_pruned", "prune_ffn_neurons", "save_pruned"]
