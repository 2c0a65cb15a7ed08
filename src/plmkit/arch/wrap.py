"""Wrapping as peft does it: a module put in place of another keeps the original as ``base_layer``.

Every plmkit method that replaces a module (MoE FFNs, swapped activations, inserted modules, and
the pruned, quantized, plugged or adapter layers still to come) subclasses :class:`Wrapper`. The
architecture layer resolves module paths through ``base_layer`` (plmkit's wrappers and peft's
tuner layers alike), so ``arch.layers``, every hook site and ``describe`` keep working on the
wrapped model, and :func:`unwrap` gives back the original modules, bit for bit.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterable

import torch
from torch import nn
from torch.nn.modules import module as _m  # the global hook registries


class Wrapper(nn.Module):
    """A module in place of ``base_layer``.

    ``runs_base``: True when ``forward`` calls ``base_layer`` (a LoRA-like wrapper: hooks on the wrapper
    see what runs); False when the wrapper computes without it (then path resolution hands out the
    original, which the wrapper calls itself when it is observed).
    """

    runs_base: ClassVar[bool] = True

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer

    def unwrap(self) -> nn.Module:
        """The module this wrapper replaced."""
        return self.base_layer


class Bypass(Wrapper):
    """Identity in place of a module whose work another wrapper took over (BERT's ``output.dense`` once
    its FFN is a mixture of experts). The original stays as ``base_layer``."""

    runs_base = False

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


class ActivationWrapper(Wrapper):
    """An activation function in place of an FFN's own (``relufy``, magnitude masks)."""

    def __init__(self, base_layer: Any, fn: nn.Module | None = None):
        super().__init__(base_layer if isinstance(base_layer, nn.Module) else _Fn(base_layer))
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class _Fn(nn.Module):
    """A plain function held as a module, so that any activation can be a ``base_layer``."""

    def __init__(self, fn: Any):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def is_wrapper(module: Any) -> bool:
    """plmkit's wrappers and peft's tuner layers (anything holding the original as ``base_layer``)."""
    return isinstance(module, nn.Module) and isinstance(getattr(module, "base_layer", None), nn.Module)


def innermost(module: nn.Module) -> nn.Module:
    """The original module under any number of wrappers."""
    while is_wrapper(module):
        module = module.base_layer
    return module


def _hidden(module: nn.Module) -> nn.Module:
    """Through wrappers that do not run their base: the module a path names is the original."""
    while is_wrapper(module) and not getattr(module, "runs_base", True):
        module = module.base_layer
    return module


def resolve_path(root: nn.Module, path: str, originals: bool = True) -> nn.Module:
    """``root.get_submodule(path)``, descending into ``base_layer`` where a name is missing on a wrapper.

    With ``originals`` (the default: what a role names) a wrapper that does not run its base hands out the
    original; without, the module that actually runs at ``path``. Raises AttributeError (like
    ``get_submodule``) when the path does not exist.
    """
    module = root
    for part in path.split(".") if path else ():
        current = module
        while True:
            child = current._modules.get(part) if isinstance(current, nn.Module) else None
            if child is not None:
                break
            if is_wrapper(current):
                current = current.base_layer
                continue
            raise AttributeError(f"{type(current).__name__} has no submodule '{part}'")
        module = child
    return _hidden(module) if path and originals else module


def wrap(root: nn.Module, path: str, wrapper: Wrapper) -> Wrapper:
    """Put ``wrapper`` (holding the module at ``path`` as its ``base_layer``) in its place."""
    root.set_submodule(path, wrapper)
    return wrapper


def wrappers(model: nn.Module, kinds: type | tuple[type, ...] = Wrapper) -> list[tuple[str, Wrapper]]:
    """(path, wrapper) of every plmkit wrapper of ``kinds`` in ``model``, outermost first."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]


def unwrap(model: nn.Module, kinds: type | tuple[type, ...] = Wrapper) -> int:
    """Put back the original of every plmkit wrapper of ``kinds`` (in place); returns how many were removed.

    Wrappers inside a removed wrapper's own modules (its ``base_layer``) are unwrapped too.
    """
    removed = 0
    while True:
        found = [(n, m) for n, m in wrappers(model, kinds) if n]
        if not found:
            return removed
        name, module = found[0]
        model.set_submodule(name, module.unwrap())
        removed += 1


def observed(modules: Iterable[nn.Module | None]) -> bool:
    """True when any of ``modules`` carries a forward hook or pre-hook (someone is watching it)."""
    if _m._global_forward_hooks or _m._global_forward_pre_hooks:
        return True
    return any(m is not None and (m._forward_hooks or m._forward_pre_hooks) for m in modules)
