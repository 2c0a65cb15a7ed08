"""Resizing a layer's FFN in place (rows of ffn_in/ffn_gate and columns of ffn_out kept), and the config keys
that let a model with per-layer FFN sizes be saved and rebuilt (:mod:`plmkit.assets.pruned`)."""
from __future__ import annotations

import torch
from torch import nn

from .layers import Layer, hf_model, layers

FFN_SIZES_KEY = "plmkit_ffn_sizes"  # config.json: {stack: [d_ff per layer]}
FFN_OUT_BIAS_KEY = "plmkit_ffn_out_bias"  # config.json: {stack: [ffn_out has a bias, per layer]}


def set_weight(module: nn.Module, w: torch.Tensor, conv1d: bool) -> None:
    """Put ``w`` (torch's Linear orientation, (out, in)) into ``module`` and update its feature attributes."""
    old = module.weight
    module.weight = nn.Parameter((w.t() if conv1d else w).contiguous(), requires_grad=old.requires_grad)
    n_out, n_in = w.shape
    for attr, value in (("out_features", n_out), ("in_features", n_in), ("nf", n_out), ("nx", n_in)):
        if hasattr(module, attr):  # nn.Linear: in/out_features; GPT-2's Conv1D: nx/nf
            setattr(module, attr, value)


def shrink_ffn(layer: Layer, keep: torch.Tensor, fold: torch.Tensor | None) -> None:
    """Keep neurons ``keep`` of ``layer`` in place; add ``fold`` (d_model) to ffn_out's bias, creating it if needed."""
    for module, w in ((layer.ffn_in, layer.ffn_in_weight()), (layer.ffn_gate, layer.ffn_gate_weight())):
        if module is None:
            continue
        set_weight(module, w[keep.to(w.device)], layer.conv1d)
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias.detach()[keep.to(module.bias.device)].clone(),
                                       requires_grad=module.bias.requires_grad)
    out = layer.ffn_out
    w = layer.ffn_out_weight()
    set_weight(out, w[:, keep.to(w.device)], layer.conv1d)
    if fold is not None:
        if out.bias is None:
            out.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device),
                                    requires_grad=out.weight.requires_grad)
        with torch.no_grad():
            out.bias += fold.to(device=out.bias.device, dtype=out.bias.dtype)


def ffn_sizes(model: nn.Module) -> dict[str, list[int]]:
    """d_ff of every layer, per stack: ``{"blocks": [48, 24]}`` or ``{"encoder": [...], "decoder": [...]}``."""
    out: dict[str, list[int]] = {}
    for layer in layers(model):
        out.setdefault(layer.stack, []).append(layer.d_ff)
    return out


def record_ffn_sizes(model: nn.Module) -> None:
    """Note the per-layer FFN sizes (and which ffn_out have a bias) in the config, for save and load."""
    config = hf_model(model)[0].config
    sizes, bias = ffn_sizes(model), {}
    for layer in layers(model):
        bias.setdefault(layer.stack, []).append(layer.ffn_out.bias is not None)
    setattr(config, FFN_SIZES_KEY, sizes)
    setattr(config, FFN_OUT_BIAS_KEY, bias)



FFN_CONFIG_ATTRS = ("intermediate_size", "d_ff", "n_inner", "ffn_dim", "encoder_ffn_dim")


def make_config_plain(model: nn.Module, original_d_ff: int) -> bool:
    """When every layer now has the same FFN size, write it into the config's own FFN-size attribute (the one
    that held ``original_d_ff``) and drop plmkit's per-layer keys, so plain ``transformers`` rebuilds the model
    at its new shapes. Returns whether that was possible; when not (sizes differ, or no attribute held the old
    size) the per-layer keys stay and :func:`plmkit.load_model` rebuilds it. Only for pruning that added no
    ffn_out bias (mean folding does)."""
    config = hf_model(model)[0].config
    sizes = {layer.d_ff for layer in layers(model)}
    attrs = [a for a in FFN_CONFIG_ATTRS if getattr(config, a, None) == original_d_ff]
    if len(sizes) != 1 or not attrs:
        return False
    size = sizes.pop()
    for a in attrs:
        setattr(config, a, size)
    for key in (FFN_SIZES_KEY, FFN_OUT_BIAS_KEY):
        if hasattr(config, key):
            delattr(config, key)
    return True
