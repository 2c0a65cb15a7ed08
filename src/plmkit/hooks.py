"""Capture and intervene on activations by canonical site name; hooks are always removed.

Site names: ``embeddings``; ``blocks.3`` (block output); ``blocks.3.attn.q|k|v|o|qkv``;
``blocks.3.ffn.in|gate|out``; ``blocks.3.ffn.neurons`` (the input of ffn_out, i.e. the neuron
activations); ``blocks.3.norm.attn|ffn|...``; ``blocks.3.cross_attn.q|k|v|o`` (T5 decoder).
T5 prefixes its stacks: ``encoder.blocks.0.ffn.neurons``, ``decoder.blocks.5.attn.o``.

>>> with capture(model, ["blocks.0.ffn.neurons"], pool="mean", attention_mask=mask) as acts:  # doctest: +SKIP
...     model(input_ids=ids, attention_mask=mask)
>>> acts["blocks.0.ffn.neurons"].shape                                                       # doctest: +SKIP
torch.Size([batch, d_ff])
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from . import arch
from .errors import ConfigError

POOLS = ("none", "tokens", "mean", "max", "first", "last")
_UNSET: Any = object()
_SITE = re.compile(r"^(?:(encoder|decoder)\.)?blocks\.(\d+)(?:\.(.+))?$")


@dataclass(frozen=True)
class Site:
    """A resolved site: a module, whether its input or output is meant, and an optional feature slice."""

    name: str
    module: nn.Module
    point: str  # "input" or "output"
    features: slice | None = None


def site_names(model: nn.Module, role: str, stack: str | None = None, override: arch.layers.Override = None) -> list[str]:
    """``role`` (e.g. ``ffn.neurons``) at every layer: ``["blocks.0.ffn.neurons", ...]``."""
    return [f"{layer.name}.{role}" for layer in arch.layers(model, override, stack=stack)]


def resolve_site(model: nn.Module, name: str, override: arch.layers.Override = None) -> Site:
    if name == "embeddings":
        return Site(name, arch.embeddings(model, override), "output")
    m = _SITE.match(name)
    if not m:
        raise ConfigError(f"unknown site '{name}'; expected e.g. 'blocks.3.ffn.neurons' or 'embeddings'")
    stack, index, role = m.group(1) or "blocks", int(m.group(2)), m.group(3)
    stack_layers = arch.layers(model, override, stack=stack)
    if index >= len(stack_layers):
        raise ConfigError(f"site '{name}': stack '{stack}' has {len(stack_layers)} layers")
    layer = stack_layers[index]
    if role is None:
        return Site(name, layer.block, "output")
    if role == "ffn.neurons":
        return Site(name, layer.ffn_out, "input")
    group, _, sub = role.partition(".")
    module: nn.Module | None = None
    features = None
    if group == "attn" and sub in ("q", "k", "v", "o", "qkv"):
        module = getattr(layer, f"attn_{sub}")
        if module is None and sub in "qkv" and layer.attn_qkv is not None:  # fused projection
            d = layer.d_model
            module, features = layer.attn_qkv, slice("qkv".index(sub) * d, ("qkv".index(sub) + 1) * d)
    elif group == "ffn" and sub in ("in", "gate", "out"):
        module = getattr(layer, f"ffn_{sub}")
    elif group == "norm":
        module = layer.norms.get(sub)
    elif group == "cross_attn":
        module = layer.cross_attn.get(sub)
    if module is None:
        raise ConfigError(f"site '{name}': role '{role}' does not exist in this model")
    return Site(name, module, "output", features)


def _main(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _pool(x: torch.Tensor, pool: str, mask: torch.Tensor | None) -> torch.Tensor:
    """Pool (B, T, D) over tokens, ignoring padded positions where ``mask`` is 0."""
    if pool == "none":
        return x
    if x.dim() != 3:
        raise ConfigError(f"pool='{pool}' needs (batch, tokens, features) activations, got shape {tuple(x.shape)}")
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    mask = mask.to(x.device).bool()
    if mask.shape != x.shape[:2]:
        raise ConfigError(
            f"attention_mask shape {tuple(mask.shape)} does not match activations {tuple(x.shape[:2])}; "
            "update it with acts.set_mask(mask) before each forward pass"
        )
    if pool == "tokens":
        return x[mask]
    if pool == "mean":
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1)
    if pool == "max":
        return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    if pool == "first":
        return x[:, 0]
    if pool == "last":
        last = mask.long().cumsum(1).argmax(1)  # index of the last non-pad token
        return x[torch.arange(x.shape[0], device=x.device), last]
    raise ConfigError(f"unknown pool '{pool}'; choose from {POOLS}")


class Captured(dict):
    """Activations by site name; each value concatenates every forward call along dim 0."""

    def __init__(self, pool: str, mask: torch.Tensor | None, dtype: torch.dtype | None):
        super().__init__()
        self._parts: dict[str, list[torch.Tensor]] = {}
        self.pool, self.mask, self.dtype = pool, mask, dtype

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """Set the padding mask of the next forward pass."""
        self.mask = mask

    def _add(self, name: str, x: torch.Tensor) -> None:
        x = _pool(x.detach(), self.pool, self.mask).cpu()
        if self.dtype is not None:
            x = x.to(self.dtype)
        self._parts.setdefault(name, []).append(x)
        self.pop(name, None)

    def parts(self, name: str) -> list[torch.Tensor]:
        """One tensor per forward call (for pool='none' with varying lengths)."""
        return self._parts[name]

    def __missing__(self, name: str) -> torch.Tensor:
        if name not in self._parts:
            raise KeyError(f"nothing captured at '{name}' (was the model run inside the block?)")
        value = torch.cat(self._parts[name], 0)
        self[name] = value
        return value


@contextlib.contextmanager
def _hooked(handles: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture(
    model: nn.Module,
    sites: str | Iterable[str],
    *,
    pool: str = "none",
    attention_mask: torch.Tensor | None = _UNSET,
    dtype: torch.dtype | None = torch.float32,
    override: arch.layers.Override = None,
) -> Iterator[Captured]:
    """Record activations at ``sites`` during the forward passes run inside the block.

    ``pool`` is one of POOLS; every pool except ``none`` needs the padding mask passed
    explicitly (``attention_mask=None`` states that there is no padding).
    """
    if pool not in POOLS:
        raise ConfigError(f"unknown pool '{pool}'; choose from {POOLS}")
    if pool != "none" and attention_mask is _UNSET:
        raise ConfigError(
            f"pool='{pool}' needs the padding mask: pass attention_mask=batch['attention_mask'] "
            "(or attention_mask=None if no sequence is padded)"
        )
    names = [sites] if isinstance(sites, str) else list(sites)
    store = Captured(pool, None if attention_mask is _UNSET else attention_mask, dtype)
    handles = []
    for name in names:
        site = resolve_site(model, name, override)

        def record(x: torch.Tensor, site: Site = site) -> None:
            store._add(site.name, x if site.features is None else x[..., site.features])

        if site.point == "input":
            handles.append(site.module.register_forward_pre_hook(lambda m, args, r=record: r(_main(args))))
        else:
            handles.append(site.module.register_forward_hook(lambda m, args, out, r=record: r(_main(out))))
    with _hooked(handles):
        yield store


# --- interventions ---------------------------------------------------------------------

Edit = Callable[[torch.Tensor], torch.Tensor]


def _on(neurons: Sequence[int] | torch.Tensor | slice | None, fn: Edit) -> Edit:
    """Apply ``fn`` to the selected features (last dim) only; all features when ``neurons`` is None."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        if neurons is None:
            return fn(x)
        idx = neurons if isinstance(neurons, slice) else torch.as_tensor(neurons, device=x.device, dtype=torch.long)
        x = x.clone()
        x[..., idx] = fn(x[..., idx])
        return x

    return edit


def zero(neurons: Sequence[int] | torch.Tensor | None = None) -> Edit:
    return _on(neurons, torch.zeros_like)


def scale(neurons: Sequence[int] | torch.Tensor | None, factor: float) -> Edit:
    return _on(neurons, lambda v: v * factor)


def replace(neurons: Sequence[int] | torch.Tensor | None, values: torch.Tensor | float) -> Edit:
    """Set the selected features to ``values`` (a scalar or one value per selected feature)."""
    return _on(neurons, lambda v: torch.as_tensor(values, dtype=v.dtype, device=v.device).expand_as(v).clone())


def mean_ablate(neurons: Sequence[int] | torch.Tensor | None, means: torch.Tensor) -> Edit:
    """Replace the selected features by their mean over some reference data (one value per feature)."""
    return replace(neurons, means)


def add_noise(
    neurons: Sequence[int] | torch.Tensor | None, std: float, generator: torch.Generator | None = None
) -> Edit:
    def noisy(v: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(v.shape, generator=generator, dtype=v.dtype, device="cpu").to(v.device)
        return v + std * noise

    return _on(neurons, noisy)


@contextlib.contextmanager
def intervene(
    model: nn.Module,
    edits: dict[str, Edit] | str,
    edit: Edit | None = None,
    *,
    override: arch.layers.Override = None,
) -> Iterator[None]:
    """Change activations during the forward passes inside the block.

    ``intervene(model, "blocks.2.ffn.neurons", zero([1, 5]))`` or
    ``intervene(model, {"blocks.2.ffn.neurons": zero([1, 5]), "blocks.3.attn.o": scale(None, 0.5)})``.
    """
    if isinstance(edits, str):
        if edit is None:
            raise ConfigError("intervene(model, site, edit): pass the edit, e.g. plmkit.hooks.zero([0, 3])")
        edits = {edits: edit}
    handles = []
    for name, fn in edits.items():
        site = resolve_site(model, name, override)
        apply = _on(site.features, fn)
        if site.point == "input":

            def pre(m: nn.Module, args: tuple, apply: Edit = apply) -> tuple:
                return (apply(args[0]),) + tuple(args[1:])

            handles.append(site.module.register_forward_pre_hook(pre))
        else:

            def post(m: nn.Module, args: tuple, out: Any, apply: Edit = apply) -> Any:
                if isinstance(out, tuple):
                    return (apply(out[0]),) + out[1:]
                return apply(out)

            handles.append(site.module.register_forward_hook(post))
    with _hooked(handles):
        yield

