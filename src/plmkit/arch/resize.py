"""Resizing a layer's FFN in place (rows of ffn_in/ffn_gate and columns of ffn_out kept), and the config keys
that let a model with per-layer FFN sizes be saved and rebuilt (:mod:`plmkit.assets.pruned`)."""
from __future__ import annotations

import torch
from torch import nn

from .layers import Layer, dense_weight, hf_model, layers

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


def _oriented(module: nn.Module, conv1d: bool) -> torch.Tensor:
    """The layer's dense float weight as (out, in); quantized or wrapped layers are refused with one line."""
    w = dense_weight(module).detach()
    return w.t() if conv1d else w


def keep_rows(module: nn.Module, rows: torch.Tensor, conv1d: bool) -> None:
    """Keep output rows ``rows`` of a linear layer (and of its bias), in place."""
    w = _oriented(module, conv1d)
    set_weight(module, w[rows.to(w.device)], conv1d)
    if getattr(module, "bias", None) is not None:
        module.bias = nn.Parameter(module.bias.detach()[rows.to(module.bias.device)].clone(),
                                   requires_grad=module.bias.requires_grad)


def keep_columns(module: nn.Module, cols: torch.Tensor, conv1d: bool) -> None:
    """Keep input columns ``cols`` of a linear layer, in place (the bias is per output: it stays)."""
    w = _oriented(module, conv1d)
    set_weight(module, w[:, cols.to(w.device)], conv1d)


def shrink_ffn(layer: Layer, keep: torch.Tensor, fold: torch.Tensor | None) -> None:
    """Keep neurons ``keep`` of ``layer`` in place; add ``fold`` (d_model) to ffn_out's bias, creating it if needed."""
    for module in (layer.ffn_in, layer.ffn_gate):
        if module is not None:
            keep_rows(module, keep, layer.conv1d)
    out = layer.ffn_out
    w = layer.ffn_out_weight()
    keep_columns(out, keep, layer.conv1d)
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


# ------------------------------------------------------------------------------------------ heads and layers

def remove_kv_groups(model: nn.Module, keep: list[torch.Tensor]) -> dict[str, int]:
    """Keep, in layer ``i``, the key/value heads ``keep[i]`` with their groups of query heads (GQA-aware:
    a group is removed whole), in place: rows of q/k/v and columns of the output projection go. Every layer
    must keep the same number, which is written into the config (``num_attention_heads``,
    ``num_key_value_heads``; ``head_dim`` stays) so plain ``transformers`` rebuilds the smaller model."""
    from ..errors import ConfigError
    from .layers import attention

    config = hf_model(model)[0].config
    geo = attention(model)
    if getattr(config, "head_dim", None) != geo.head_dim:
        raise ConfigError(f"head pruning writes a model whose head width stays {geo.head_dim}; "
                          f"{type(config).__name__} derives it from hidden_size / heads, so removed heads would not "
                          "reload: prune FFN neurons or whole layers of this family instead")
    if len({len(k) for k in keep}) != 1:
        raise ConfigError("head pruning keeps the same number of key/value heads in every layer (one config)")
    hd, rep = geo.head_dim, geo.group
    for layer, kv in zip(layers(model), keep):
        if layer.attn_q is None:
            raise ConfigError(f"{layer.name}: head pruning needs separate q/k/v projections (this family fuses them)")
        kv = kv.sort().values.long().cpu()
        q_heads = (kv[:, None] * rep + torch.arange(rep)).reshape(-1)
        kv_rows = (kv[:, None] * hd + torch.arange(hd)).reshape(-1)
        q_rows = (q_heads[:, None] * hd + torch.arange(hd)).reshape(-1)
        keep_rows(layer.attn_q, q_rows, layer.conv1d)
        keep_rows(layer.attn_k, kv_rows, layer.conv1d)
        keep_rows(layer.attn_v, kv_rows, layer.conv1d)
        keep_columns(layer.attn_o, q_rows, layer.conv1d)
    n_kv = len(keep[0])
    config.num_key_value_heads = n_kv
    config.num_attention_heads = n_kv * rep
    return {"n_heads": n_kv * rep, "n_kv_heads": n_kv}


LAYER_COUNT_ATTRS = ("num_hidden_layers", "n_layer", "num_layers")


def remove_layers(model: nn.Module, keep: list[int]) -> dict[str, int]:
    """Keep only the blocks ``keep`` (indices, single-stack models), in place: the others leave the
    ModuleList, the kept ones are renumbered (``layer_idx``, which KV caches read) and the config's layer
    count and per-layer lists follow, so plain ``transformers`` rebuilds the shallower model."""
    from ..errors import ConfigError
    from .layers import base_model, resolve

    spec = resolve(model)
    if len(spec.stacks) != 1:
        raise ConfigError("layer pruning supports single-stack models (an encoder or a decoder), "
                          f"not {spec.family}'s {len(spec.stacks)} stacks")
    blocks = base_model(model).get_submodule(spec.stacks[0].blocks)
    n = len(blocks)
    keep = sorted({int(i) for i in keep})
    if not keep or keep[0] < 0 or keep[-1] >= n:
        raise ConfigError(f"layer pruning: keep indices in [0, {n}) and at least one layer, got {keep}")
    kept = [blocks[i] for i in keep]
    for new, block in enumerate(kept):
        for m in block.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new
    for i in reversed(range(n)):  # emptied, then refilled in the new order (ModuleList renumbers)
        del blocks[i]
    blocks.extend(kept)
    config = hf_model(model)[0].config
    for attr in LAYER_COUNT_ATTRS:
        if getattr(config, attr, None) == n:
            setattr(config, attr, len(keep))
    for attr, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == n and attr != "architectures":
            setattr(config, attr, [value[i] for i in keep])  # per-layer settings such as layer_types
    for key in (FFN_SIZES_KEY, FFN_OUT_BIAS_KEY):
        per_stack = getattr(config, key, None)
        if isinstance(per_stack, dict):
            setattr(config, key, {s: [v[i] for i in keep] for s, v in per_stack.items()})
    return {"layers_before": n, "layers_after": len(keep)}
