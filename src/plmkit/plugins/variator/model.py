"""Put compression plugins on a model, take them off, save, load and swap them at run time."""
from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import nn

from ... import arch
from ..._io import atomic_dir
from ...errors import ConfigError, PlmkitError
from .config import VariatorConfig
from .plugin import CompressionPlugin, MaskContext, VariatorFFN

WEIGHTS, CONFIG = "variator.safetensors", "variator.json"


def plugged(model: nn.Module) -> list[VariatorFFN]:
    """The plugged FFNs of ``model``, in block order."""
    return [m for m in model.modules() if isinstance(m, VariatorFFN)]


def attach(model: nn.Module, config: VariatorConfig, *, seed: int = 0,
           override: arch.layers.Override = None) -> list[VariatorFFN]:
    """Wrap the FFN of each chosen block in a fresh plugin (zero-initialised correction; the backbone is
    untouched and stays reachable as each wrapper's ``base_layer``). Plugins sit on the FFNs' device and
    dtype. :func:`detach` undoes it."""
    if plugged(model):
        raise ConfigError("this model already has Variator plugins; call plmkit.plugins.variator.detach(model) "
                          "or load(model, path) to swap them")
    blocks = arch.layers(model, override)
    chosen = _chosen(blocks, config.layers)
    g = torch.Generator().manual_seed(seed)
    contexts: dict[str, MaskContext] = {}
    out: list[VariatorFFN] = []
    for layer in chosen:
        ref = layer.ffn_out_weight()
        plugin = CompressionPlugin(layer.d_model, config.k, config.hidden, config.exact_prefix)
        plugin.reset_parameters(g)
        plugin.to(device=ref.device, dtype=ref.dtype)
        causal = config.causal if config.causal is not None else arch.is_causal(model, layer.stack, override)
        ctx = contexts.setdefault(layer.stack, MaskContext())
        wrapper = VariatorFFN(arch.ffn_module(layer), arch.outside_ffn_out(layer), plugin, causal, layer.name, ctx)
        arch.replace_ffn(layer, wrapper)
        out.append(wrapper)
    hooks = [_mask_hook(entry, ctx) for entry, ctx in _mask_entries(model, contexts, override)]
    model._plmkit_variator = {"config": config, "hooks": hooks}
    return out


def detach(model: nn.Module, override: arch.layers.Override = None) -> nn.Module:
    """Take every plugin off: each FFN is the original module again (the same objects, bit for bit)."""
    state = _state(model)
    for layer in arch.layers(model, override):
        arch.restore_ffn(layer, VariatorFFN)
    for h in state["hooks"]:
        h.remove()
    del model._plmkit_variator
    return model


@contextlib.contextmanager
def bypassed(model: nn.Module) -> Iterator[nn.Module]:
    """Run the original FFNs inside the block (the distillation teacher: the same model, no second copy)."""
    wrappers = plugged(model)
    before = [w.active for w in wrappers]
    for w in wrappers:
        w.active = False
    try:
        yield model
    finally:
        for w, a in zip(wrappers, before):
            w.active = a


def plugin_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every trainable plugin weight (nothing of the backbone)."""
    return [p for w in plugged(model) if w.plugin is not None for p in w.plugin.parameters()]


def extra_parameters(model: nn.Module) -> tuple[int, float]:
    """Plugin parameters: their count and their share of the backbone's parameters."""
    extra = {id(p): p.numel() for p in plugin_parameters(model)}
    backbone = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if id(p) not in extra)
    n = sum(extra.values())
    return n, n / max(backbone, 1)


def config_of(model: nn.Module) -> VariatorConfig:
    return _state(model)["config"]


def save(model: nn.Module, path: str | Path) -> Path:
    """Write the plugins only (``variator.safetensors`` + ``variator.json``; a few MB); atomic."""
    from safetensors.torch import save_file

    wrappers = [w for w in plugged(model) if w.plugin is not None]
    if not wrappers:
        raise ConfigError("this model has no Variator plugins to save; attach(model, VariatorConfig(...)) first")
    tensors = {f"{w.name}.{k}": v.detach().contiguous() for w in wrappers for k, v in w.plugin.state_dict().items()}
    meta = {"config": config_of(model).to_dict(), "layers": [w.name for w in wrappers],
            "causal": {w.name: w.causal for w in wrappers}, **_identity(model)}
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a saved plugin set, checked for completeness."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise PlmkitError(f"{path} holds no Variator plugins ({WEIGHTS} and {CONFIG}); write them with "
                          "plmkit.plugins.variator.save() or `plmkit variator train --out DIR`")
    return json.loads((path / CONFIG).read_text()), load_file(str(path / WEIGHTS))


def load(model: nn.Module, path: str | Path | tuple[dict, dict], override: arch.layers.Override = None
         ) -> list[VariatorFFN]:
    """Plug the saved plugins into ``model`` (swapping out any it has: one loaded model, any k)."""
    meta, tensors = read(path) if not isinstance(path, tuple) else path
    mismatch = {k: (v, meta.get(k)) for k, v in _identity(model).items() if meta.get(k) not in (None, v)}
    if mismatch:
        raise ConfigError(f"these plugins were trained for another model: {mismatch} (saved, this model)")
    config = VariatorConfig.from_dict(meta["config"])
    if plugged(model):
        detach(model, override)
    wrappers = attach(model, config, override=override)
    names = [w.name for w in wrappers]
    if names != meta["layers"]:
        detach(model, override)
        raise ConfigError(f"the saved plugins cover blocks {meta['layers']}, this model's config gives {names}")
    for w in wrappers:
        w.plugin.load_state_dict({k[len(w.name) + 1:]: v for k, v in tensors.items() if k.startswith(w.name + ".")})
    return wrappers


class PluginBank:
    """Plugin sets for several k held in memory (a few MB each), swapped on one loaded model by workload.

    ``thresholds`` maps k to the smallest workload (batch size, queue length: any count the caller
    measures) at which it is used; k = 1 means no plugins. Default: 4, 16, 64, ... for the bank's k in
    increasing order. ``bank.use_for(workload)`` plugs the largest k whose threshold the workload reaches
    and returns it.
    """

    def __init__(self, model: nn.Module, paths: Mapping[int, str | Path], thresholds: Mapping[int, int] | None = None,
                 override: arch.layers.Override = None):
        self.model, self.override = model, override
        self.sets = {int(k): read(p) for k, p in paths.items()}
        for k, (meta, _) in self.sets.items():
            if int(meta["config"]["k"]) != k:
                raise ConfigError(f"{paths[k]} holds plugins for k={meta['config']['k']}, listed as k={k}")
        self.thresholds = dict(thresholds or {k: 4 ** i for i, k in enumerate(sorted(self.sets), 1)})
        self.thresholds.setdefault(1, 0)
        self.k: int | None = None  # what the bank last plugged (None: not used yet)

    def use(self, k: int) -> None:
        """Plug the set for ``k`` (1: none)."""
        if k == self.k:
            return
        if k == 1:
            if plugged(self.model):
                detach(self.model, self.override)
        elif k in self.sets:
            load(self.model, self.sets[k], self.override)
        else:
            raise ConfigError(f"no plugins for k={k}; the bank holds k in {sorted(self.sets)}")
        self.k = k

    def use_for(self, workload: int) -> int:
        """Plug the largest k whose threshold ``workload`` reaches; returns that k."""
        reached = [k for k, t in self.thresholds.items() if workload >= t and (k == 1 or k in self.sets)]
        self.use(max(reached, default=1))
        return self.k


def _state(model: nn.Module) -> dict:
    state = getattr(model, "_plmkit_variator", None)
    if state is None:
        raise ConfigError("this model has no Variator plugins; call plmkit.plugins.variator.attach(model, config)")
    return state


def _identity(model: nn.Module) -> dict:
    cfg = getattr(arch.hf_model(model)[0], "config", None)
    return {"model_type": getattr(cfg, "model_type", None), "d_model": getattr(cfg, "hidden_size", None)
            or getattr(cfg, "d_model", None), "blocks": len(arch.layers(model))}


def _chosen(blocks: list[arch.Layer], indices: list[int] | None) -> list[arch.Layer]:
    if indices is None:
        return blocks
    n = max(sum(1 for b in blocks if b.stack == s) for s in {b.stack for b in blocks})
    bad = [i for i in indices if not -n <= i < n]
    if bad:
        raise ConfigError(f"layers {bad} out of range: the model has {n} blocks per stack")
    by_stack: dict[str, list[arch.Layer]] = {}
    for b in blocks:
        by_stack.setdefault(b.stack, []).append(b)
    keep = {id(stack[i]) for stack in by_stack.values() for i in indices if -len(stack) <= i < len(stack)}
    return [b for b in blocks if id(b) in keep]


def _mask_entries(model: nn.Module, contexts: dict[str, MaskContext], override: arch.layers.Override
                  ) -> list[tuple[nn.Module, MaskContext]]:
    """The module that receives each plugged stack's ``attention_mask``: the bare model, or a T5 stack."""
    spec = arch.resolve(model, override)
    base = arch.base_model(model)
    if len(spec.stacks) == 1:
        return [(base, ctx) for ctx in contexts.values()]
    return [(arch.get_module(base, spec.stack(name).blocks.rpartition(".")[0]), ctx) for name, ctx in contexts.items()]


def _mask_hook(module: nn.Module, ctx: MaskContext) -> "_Both":
    params = list(inspect.signature(module.forward).parameters)
    pos = params.index("attention_mask") if "attention_mask" in params else None

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and pos is not None and len(args) > pos:
            mask = args[pos]
        ctx.mask = mask if isinstance(mask, torch.Tensor) else None

    def post(_m: nn.Module, _args: tuple, _kwargs: dict, _out: object) -> None:
        ctx.mask = None

    h_pre = module.register_forward_pre_hook(pre, with_kwargs=True)
    h_post = module.register_forward_hook(post, with_kwargs=True, always_call=True)
    return _Both(h_pre, h_post)


class _Both:
    """Two hook handles removed together."""

    def __init__(self, *handles):
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
