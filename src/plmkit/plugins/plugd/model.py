"""Document plugins: encode a document once with the frozen backbone, map its states, plug them into attention.

The map network (x + W2·GELU(W1·x), W2 starting at zero so a fresh one passes the states through) sits on the
transformers model as ``plmkit_plugd``: its parameters are the model's, adapters (peft) and ``plmkit.arch`` see
the model unchanged, and :func:`detach` takes it off again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ... import arch
from ..._io import atomic_dir
from ...device import model_device
from ...errors import ConfigError, PlmkitError
from .config import PlugDConfig

WEIGHTS, CONFIG = "plugd.safetensors", "plugd.json"


class MapNet(nn.Module):
    """x + W2·GELU(W1·x): turns a document's last hidden states into its plugin."""

    def __init__(self, d_model: int, mult: int = 2):
        super().__init__()
        self.up = nn.Linear(d_model, mult * d_model)
        self.down = nn.Linear(mult * d_model, d_model)

    def reset_parameters(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            bound = self.up.in_features ** -0.5
            self.up.weight.copy_(torch.empty(self.up.weight.shape).uniform_(-bound, bound, generator=generator))
            self.up.bias.zero_()
            self.down.weight.zero_()
            self.down.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(x)))


class _PlugD(nn.Module):
    """What :func:`attach` registers on the model: the map network and its config."""

    def __init__(self, map_net: MapNet, config: PlugDConfig):
        super().__init__()
        self.map_net, self.config = map_net, config


def _state(model: nn.Module) -> _PlugD | None:
    inner, _ = arch.hf_model(model)
    return getattr(inner, "plmkit_plugd", None)


def _require(model: nn.Module) -> _PlugD:
    state = _state(model)
    if state is None:
        raise ConfigError("this model has no PlugD map network: call plmkit.plugins.plugd.attach(model, PlugDConfig()) "
                          "or plmkit.plugins.plugd.load(model, path) first")
    return state


def attach(model: nn.Module, config: PlugDConfig | None = None, *, seed: int = 0) -> MapNet:
    """Register a fresh map network (drawn from ``seed``; it starts as the identity) on ``model``."""
    config = config or PlugDConfig()
    if _state(model) is not None:
        raise ConfigError("this model already has a PlugD map network; call plmkit.plugins.plugd.detach(model) first")
    chosen_layers(model, config)  # fails early on a bad layer list or stack
    inner, _ = arch.hf_model(model)
    d = arch.layers(model, stack=_stack(model, config))[0].d_model
    net = MapNet(d, config.map_mult)
    net.reset_parameters(torch.Generator().manual_seed(seed))
    p = next(inner.parameters())
    net.to(device=p.device, dtype=p.dtype)
    inner.plmkit_plugd = _PlugD(net, config)
    return net


def detach(model: nn.Module) -> MapNet:
    """Take the map network off the model (returned)."""
    state = _require(model)
    inner, _ = arch.hf_model(model)
    del inner.plmkit_plugd
    return state.map_net


def map_net(model: nn.Module) -> MapNet:
    return _require(model).map_net


def config_of(model: nn.Module) -> PlugDConfig:
    return _require(model).config


def _stack(model: nn.Module, config: PlugDConfig) -> str | None:
    if config.stack is not None:
        return config.stack
    inner, _ = arch.hf_model(model)
    return "encoder" if getattr(inner.config, "is_encoder_decoder", False) else None


def chosen_layers(model: nn.Module, config: PlugDConfig) -> list[int]:
    """The block indices that attend to plugins: ``config.layers``, or the top half of the stack."""
    n = len(arch.layers(model, stack=_stack(model, config)))
    if n == 0:
        raise ConfigError(f"stack '{config.stack}' has no blocks in this model")
    chosen = list(range(n // 2, n)) if config.layers is None else config.layers
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ConfigError(f"layers {bad} do not exist: the stack has {n} blocks")
    return chosen


@contextlib.contextmanager
def _adapters_off(model: nn.Module) -> Iterator[None]:
    if hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        with model.disable_adapter():
            yield
    else:
        yield


def _encoder(model: nn.Module) -> nn.Module:
    inner, _ = arch.hf_model(model)
    if getattr(inner.config, "is_encoder_decoder", False):
        return inner.get_encoder()
    return arch.base_model(model)


@torch.no_grad()
def document_states(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, max_tokens: int | None = None,
                    batch_size: int = 8) -> list[torch.Tensor]:
    """Each document's hidden states (n_i, d) from the frozen backbone at the config's ``doc_layer``, adapters
    switched off (so one plugin serves every task's adapter)."""
    cfg = config_of(model)
    max_tokens = max_tokens or cfg.max_doc_tokens
    layer = cfg.doc_layer if cfg.doc_layer is not None else chosen_layers(model, cfg)[0]
    enc = _encoder(model)
    device = model_device(model)
    out: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with _adapters_off(model):
            for i in range(0, len(texts), batch_size):
                chunk = list(texts[i:i + batch_size])
                batch = tokenizer(chunk, truncation=True, max_length=max_tokens, padding=True, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
                hidden = enc(**batch).last_hidden_state if layer == -1 else _input_of_block(model, enc, batch, layer)
                for row, m in zip(hidden, batch["attention_mask"].bool()):
                    out.append(row[m].clone())
    finally:
        model.train(was_training)
    return out


class _Reached(Exception):
    pass


def _input_of_block(model: nn.Module, enc: nn.Module, batch: dict, index: int) -> torch.Tensor:
    """The hidden states entering block ``index`` of the stack; the blocks above it are never run."""
    block = arch.layers(model, stack=_stack(model, config_of(model)))[index].block
    seen: list[torch.Tensor] = []

    def stop(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])
        raise _Reached

    handle = block.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        enc(**batch)
    except _Reached:
        pass
    finally:
        handle.remove()
    return seen[0]


def pool(states: torch.Tensor, m: int | None) -> torch.Tensor:
    """Mean over ``m`` contiguous, near-equal chunks of the rows (all rows kept when ``m`` is None or >= n)."""
    if m is None or m >= states.shape[0]:
        return states
    return torch.stack([c.mean(0) for c in torch.tensor_split(states, m)])


def make_plugins(model: nn.Module, states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Plugins of documents from their :func:`document_states` (differentiable in the map network)."""
    state = _require(model)
    return [pool(state.map_net(s), state.config.compress) for s in states]


def encode(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8) -> list[torch.Tensor]:
    """One plugin (n_i, d) per document: frozen backbone, then the map network; no gradients."""
    states = document_states(model, tokenizer, texts, batch_size=batch_size)
    with torch.no_grad():
        return [p.detach() for p in make_plugins(model, states)]


def pad(plugins: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n_max, d) vectors and the (B, n_max) mask of real ones; an empty plugin gives an all-false row."""
    if not plugins:
        raise ConfigError("no plugins given")
    d = plugins[0].shape[-1]
    n = max(p.shape[0] for p in plugins)
    ref = plugins[0]
    hidden = ref.new_zeros(len(plugins), n, d)
    mask = torch.zeros(len(plugins), n, dtype=torch.bool, device=ref.device)
    for i, p in enumerate(plugins):
        hidden[i, :p.shape[0]] = p
        mask[i, :p.shape[0]] = True
    return hidden, mask


@contextlib.contextmanager
def plugged(model: nn.Module, plugins: Sequence[torch.Tensor]) -> Iterator[None]:
    """Inside the block, the chosen layers' self-attention also attends to one plugin per sequence of the batch
    (``plugins[i]`` for row i), projected by each layer's own key/value weights."""
    cfg = config_of(model)
    hidden, mask = pad(plugins)
    p = next(model.parameters())
    with arch.attend_also(model, hidden.to(device=p.device), mask.to(p.device), indices=chosen_layers(model, cfg),
                          stack=_stack(model, cfg), normalize=True):
        yield


def identity(model: nn.Module) -> str:
    """What a stored plugin depends on: the backbone's weights (adapters left out), the map network and the
    config. A plugin from another backbone or map network never matches."""
    from ...cache import weights_identity

    state = _require(model)
    inner, _ = arch.hf_model(model)
    h = hashlib.sha256(weights_identity(inner, exclude=("lora_", "plmkit_plugd", "modules_to_save")).encode())
    h.update(json.dumps(state.config.to_dict(), sort_keys=True).encode())
    for name, t in sorted(state.map_net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def save(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """The map network (safetensors) and config (JSON) into folder ``path``, atomically."""
    from safetensors.torch import save_file

    state = _require(model)
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.map_net.state_dict().items()}, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps({"config": state.config.to_dict(), **(extra or {})}, indent=2) + "\n")
    return path


def load(model: nn.Module, path: str | Path) -> MapNet:
    """Attach the map network saved by :func:`save` (replacing one already attached)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise PlmkitError(f"{path} holds no PlugD map network ({WEIGHTS} and {CONFIG}); write one with "
                          "plmkit.plugins.plugd.save(model, path)")
    meta = json.loads((path / CONFIG).read_text())
    if _state(model) is not None:
        detach(model)
    net = attach(model, PlugDConfig.from_dict(meta["config"]))
    weights = load_file(str(path / WEIGHTS))
    try:
        net.load_state_dict({k: v.to(net.up.weight.dtype) for k, v in weights.items()})
    except RuntimeError as e:
        detach(model)
        raise PlmkitError(f"the map network in {path} does not fit this model: {str(e).splitlines()[0]}") from None
    return net
