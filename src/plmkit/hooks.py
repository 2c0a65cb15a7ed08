"""Capture and intervene on activations by canonical site name; hooks are always removed.

Site names: ``embeddings``; ``blocks.3`` (block output, also ``blocks.3.resid_post``);
``blocks.3.resid_pre`` (block input: the residual stream entering the block); ``blocks.3.attn.q|k|v|o|qkv``;
``blocks.3.attn.probs`` (attention probabilities, (batch, heads, queries, keys); capture only, needs
eager attention); ``blocks.3.ffn.in|gate|out``; ``blocks.3.ffn.neurons`` (the input of ffn_out, i.e.
the neuron activations, in the original neuron order also when the FFN is wrapped, e.g. MoEfied);
``blocks.3.norm.attn|ffn|...``; ``blocks.3.cross_attn.q|k|v|o`` (T5 decoder). T5 prefixes its stacks:
``encoder.blocks.0.ffn.neurons``, ``decoder.blocks.5.attn.o``. Sites resolve through wrapped modules
(plmkit's and peft's), so they work on MoEfied, ReLU-fied, LoRA and prompt-tuned models alike; pooling
masks are extended over prompt tuning's virtual tokens.

>>> with capture(model, ["blocks.0.ffn.neurons"], pool="mean", attention_mask=mask) as acts:  # doctest: +SKIP
...     model(input_ids=ids, attention_mask=mask)
>>> acts["blocks.0.ffn.neurons"].shape                                                       # doctest: +SKIP
torch.Size([batch, d_ff])
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
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
    index: int = 0  # which element of a tuple output is meant (attention probabilities: 1, T5: 2)


def site_names(model: nn.Module, role: str, stack: str | None = None, override: arch.layers.Override = None) -> list[str]:
    """``role`` (e.g. ``ffn.neurons``) at every layer: ``["blocks.0.ffn.neurons", ...]``."""
    return [f"{layer.name}.{role}" for layer in arch.layers(model, override, stack=stack)]


def all_sites(model: nn.Module, override: arch.layers.Override = None, probs: bool = False) -> list[str]:
    """Every site name of ``model``: embeddings, then each block's residual stream, attention, FFN and norm
    sites (``attn.probs`` too with ``probs=True``; it needs eager attention)."""
    names = ["embeddings"]
    for layer in arch.layers(model, override):
        roles = ["resid_pre", "resid_post"]
        roles += [f"attn.{r}" for r in ("q", "k", "v") if getattr(layer, f"attn_{r}") is not None or layer.attn_qkv]
        roles += ["attn.qkv"] if layer.attn_qkv is not None else []
        roles += ["attn.o"] + (["attn.probs"] if probs and layer.attn is not None else [])
        roles += ["ffn.in"] + (["ffn.gate"] if layer.ffn_gate is not None else []) + ["ffn.out", "ffn.neurons"]
        roles += [f"norm.{k}" for k in layer.norms] + [f"cross_attn.{k}" for k in layer.cross_attn]
        names += [f"{layer.name}.{r}" for r in roles]
    return names


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
    if role is None or role == "resid_post":
        return Site(name, layer.block, "output")
    if role == "resid_pre":
        return Site(name, layer.block, "input")
    if role == "ffn.neurons":
        return Site(name, layer.ffn_out, "input")
    if role == "attn.probs":
        if layer.attn is None:
            raise ConfigError(f"site '{name}': the spec names no self-attention module ('attn') for this family")
        impl = getattr(getattr(model, "config", None), "_attn_implementation", "eager")
        if impl not in (None, "eager"):
            raise ConfigError(
                f"site '{name}': '{impl}' attention does not compute the probabilities; load the model with "
                "attn_implementation='eager' (or call model.set_attn_implementation('eager')) first"
            )
        return Site(name, layer.attn, "output", index=layer.attn_probs_index)
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


class Captured(Mapping):
    """Activations by site name (a read-only mapping: ``acts[name]``, ``acts.items()``, ``dict(acts)``);
    each value concatenates every forward call along dim 0."""

    def __init__(self, pool: str, mask: torch.Tensor | None, dtype: torch.dtype | None, virtual_tokens: int = 0,
                 device: torch.device | str | None = None, order: Sequence[str] = ()):
        self._parts: dict[str, list[torch.Tensor]] = {}
        self._joined: dict[str, torch.Tensor] = {}
        self.pool, self.mask, self.dtype, self.virtual_tokens = pool, mask, dtype, virtual_tokens
        self.device = device
        self._order = {name: i for i, name in enumerate(order)}

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """Set the padding mask of the next forward pass."""
        self.mask = mask

    def _mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        """The padding mask, with ones prepended for prompt tuning's virtual tokens where they are present."""
        m = self.mask
        if m is not None and self.virtual_tokens and x.dim() >= 2 and x.shape[1] == m.shape[1] + self.virtual_tokens:
            m = torch.cat([m.new_ones(m.shape[0], self.virtual_tokens), m], 1)
        return m

    def _add(self, name: str, x: torch.Tensor) -> None:
        x = _pool(x.detach(), self.pool, self._mask_for(x))
        if self.dtype is not None or self.device is not None:
            x = x.to(device=self.device, dtype=self.dtype)
        self._parts.setdefault(name, []).append(x)
        self._joined.pop(name, None)

    def parts(self, name: str) -> list[torch.Tensor]:
        """One tensor per forward call (for pool='none' with varying lengths)."""
        if name not in self._parts:
            raise KeyError(f"nothing captured at '{name}' (was the model run inside the block?)")
        return self._parts[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._joined:
            self._joined[name] = torch.cat(self.parts(name), 0)
        return self._joined[name]

    def __iter__(self) -> Iterator[str]:
        """Captured sites, in the order they were asked for."""
        return iter(sorted(self._parts, key=lambda n: self._order.get(n, len(self._order))))

    def __len__(self) -> int:
        return len(self._parts)

    def __repr__(self) -> str:
        return f"Captured({ {k: tuple(v.shape) for k, v in self.items()} })"


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
    device: torch.device | str | None = None,
    override: arch.layers.Override = None,
) -> Iterator[Captured]:
    """Record activations at ``sites`` during the forward passes run inside the block.

    ``pool`` is one of POOLS; every pool except ``none`` needs the padding mask passed
    explicitly (``attention_mask=None`` states that there is no padding). Activations are stored on
    ``device`` (default: where they are computed) in ``dtype`` (default float32; None keeps the model's).
    Every site is resolved before any hook is registered, and every hook is removed on exit.
    """
    if pool not in POOLS:
        raise ConfigError(f"unknown pool '{pool}'; choose from {POOLS}")
    if pool != "none" and attention_mask is _UNSET:
        raise ConfigError(
            f"pool='{pool}' needs the padding mask: pass attention_mask=batch['attention_mask'] "
            "(or attention_mask=None if no sequence is padded)"
        )
    names = [sites] if isinstance(sites, str) else list(sites)
    resolved = [resolve_site(model, name, override) for name in names]  # every lookup before any hook
    store = Captured(pool, None if attention_mask is _UNSET else attention_mask, dtype, arch.virtual_tokens(model),
                     device, order=[site.name for site in resolved])
    handles: list[Any] = []
    with _hooked(handles):
        for site in resolved:
            def record(x: torch.Tensor, site: Site = site) -> None:
                store._add(site.name, x if site.features is None else x[..., site.features])

            if site.point == "input":
                handles.append(site.module.register_forward_pre_hook(
                    lambda m, args, kwargs, r=record: r(_first_input(args, kwargs)), with_kwargs=True))
            else:
                handles.append(site.module.register_forward_hook(
                    lambda m, args, out, r=record, site=site: r(_output(out, site))))
        yield store


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The first tensor a module is called with (blocks take ``hidden_states`` as a keyword in some families)."""
    if args:
        return _main(args)
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next(v for v in kwargs.values() if isinstance(v, torch.Tensor))


def _output(out: Any, site: Site) -> torch.Tensor:
    if site.index:
        value = out[site.index] if isinstance(out, (tuple, list)) and len(out) > site.index else None
        if value is None:
            raise ConfigError(f"site '{site.name}': the module returned no attention probabilities; "
                              "use attn_implementation='eager'")
        return value
    return _main(out)


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
    resolved = [(resolve_site(model, name, override), fn) for name, fn in edits.items()]
    for site, _ in resolved:
        if site.index:
            raise ConfigError(f"site '{site.name}' can be captured, not intervened on")
    handles: list[Any] = []
    with _hooked(handles):
        for site, fn in resolved:
            apply = _on(site.features, fn)
            if site.point == "input":

                def pre(m: nn.Module, args: tuple, kwargs: dict, apply: Edit = apply) -> tuple:
                    if args:
                        return (apply(args[0]),) + tuple(args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": apply(kwargs["hidden_states"])}

                handles.append(site.module.register_forward_pre_hook(pre, with_kwargs=True))
            else:

                def post(m: nn.Module, args: tuple, out: Any, apply: Edit = apply) -> Any:
                    if isinstance(out, tuple):
                        return (apply(out[0]),) + out[1:]
                    return apply(out)

                handles.append(site.module.register_forward_hook(post))
        yield
