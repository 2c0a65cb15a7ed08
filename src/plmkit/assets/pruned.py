"""Loading a model whose layers have different FFN sizes (written by :func:`plmkit.analysis.prune.save_pruned`):
:func:`plmkit.assets.load_model` calls :func:`load_pruned` when the config carries ``plmkit_ffn_sizes``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .. import arch
from ..arch.resize import FFN_OUT_BIAS_KEY as BIAS_KEY
from ..arch.resize import FFN_SIZES_KEY as SIZES_KEY
from ..arch.resize import shrink_ffn
from ..errors import ConfigError


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

    from .models import build_from_config

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
                shrink_ffn(layer, torch.arange(size), torch.zeros(layer.d_model) if needs_bias else None)
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
