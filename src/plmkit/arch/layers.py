"""Resolve a model's spec and hand out its layers by canonical role."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError
from .families import FAMILIES, T5, T5_GATED
from .spec import ModelSpec

_REGISTRY: dict[str, ModelSpec] = {}

Override = ModelSpec | Mapping[str, Any] | str | Path | None


def register(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Register ``spec`` for each of its ``model_types``."""
    for mt in spec.model_types:
        if mt in _REGISTRY and not replace:
            raise ValueError(f"model_type '{mt}' is already registered to family {_REGISTRY[mt].family}")
        _REGISTRY[mt] = spec
    return spec


for _spec in FAMILIES:
    register(_spec)


def registered_model_types() -> list[str]:
    return sorted(_REGISTRY) + ["t5"]


def _config_of(model_or_config: Any) -> Any:
    return getattr(model_or_config, "config", model_or_config)


def _load_override(override: Override) -> ModelSpec | None:
    if override is None or isinstance(override, ModelSpec):
        return override
    if isinstance(override, (str, Path)):
        try:
            override = json.loads(Path(override).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UnsupportedArchitectureError(f"cannot read architecture override file {override}: {e}") from e
    return ModelSpec.from_dict(override)


def resolve(model_or_config: Any, override: Override = None) -> ModelSpec:
    """The spec for a model or config: an explicit override, else the registered family.

    ``override`` may be a ModelSpec, a dict in ``ModelSpec.to_dict()`` form, or a JSON file path.
    """
    spec = _load_override(override)
    if spec is not None:
        return spec
    config = _config_of(model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type == "t5":
        return T5_GATED if getattr(config, "is_gated_act", False) else T5
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    raise UnsupportedArchitectureError(
        f"plmkit has no architecture spec for model_type '{model_type}'. Registered: "
        f"{', '.join(registered_model_types())}. Pass one as `override=` (a dict like "
        "`plmkit arch minilm --json` prints, with your model's module paths) to the Python call, "
        "or `--arch-override FILE.json` on the command line, or register it with plmkit.arch.register()."
    )


def get_module(root: nn.Module, path: str) -> nn.Module:
    try:
        return root.get_submodule(path) if path else root
    except AttributeError as e:
        raise UnsupportedArchitectureError(
            f"module path '{path}' not found in {type(root).__name__}: the spec does not match this model. "
            "Pass a corrected spec as `override=` (see `plmkit arch NAME --json`)."
        ) from e


def base_model(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


@dataclass
class Layer:
    """Handles to one block's modules by canonical role."""

    stack: str
    index: int
    block: nn.Module
    attn_o: nn.Module
    ffn_in: nn.Module
    ffn_out: nn.Module
    attn_q: nn.Module | None = None
    attn_k: nn.Module | None = None
    attn_v: nn.Module | None = None
    attn_qkv: nn.Module | None = None
    ffn_gate: nn.Module | None = None
    norms: dict[str, nn.Module] = field(default_factory=dict)
    cross_attn: dict[str, nn.Module] = field(default_factory=dict)
    conv1d: bool = False
    prefix: str = ""  # full module path of the block inside the user's model
    ffn_in_path: str = ""  # paths of the FFN projections relative to the block
    ffn_out_path: str = ""

    @property
    def name(self) -> str:
        """Canonical name: ``blocks.3`` or ``encoder.blocks.3``."""
        return f"blocks.{self.index}" if self.stack == "blocks" else f"{self.stack}.blocks.{self.index}"

    @property
    def d_ff(self) -> int:
        return self.ffn_out_weight().shape[1]

    @property
    def d_model(self) -> int:
        return self.ffn_out_weight().shape[0]

    # FFN weights in one fixed orientation, torch's Linear (out, in); views, so writes go through.
    def _w(self, module: nn.Module | None) -> torch.Tensor | None:
        if module is None:
            return None
        return module.weight.t() if self.conv1d else module.weight

    def ffn_in_weight(self) -> torch.Tensor:
        """(d_ff, d_model)."""
        return self._w(self.ffn_in)

    def ffn_gate_weight(self) -> torch.Tensor | None:
        """(d_ff, d_model), or None for a plain FFN."""
        return self._w(self.ffn_gate)

    def ffn_out_weight(self) -> torch.Tensor:
        """(d_model, d_ff)."""
        return self._w(self.ffn_out)


def layers(model: nn.Module, override: Override = None, stack: str | None = None) -> list[Layer]:
    """Every block of ``model`` (all stacks, or only ``stack``), with handles by role."""
    spec = resolve(model, override)
    base = base_model(model)
    base_prefix = "" if base is model else model.base_model_prefix
    out: list[Layer] = []
    for st in spec.stacks:
        if stack is not None and st.name != stack:
            continue
        blocks = get_module(base, st.blocks)
        b = st.block
        for i, block in enumerate(blocks):
            opt = lambda p: get_module(block, p) if p else None  # noqa: E731
            out.append(
                Layer(
                    stack=st.name,
                    index=i,
                    block=block,
                    attn_o=get_module(block, b.attn_o),
                    ffn_in=get_module(block, b.ffn_in),
                    ffn_out=get_module(block, b.ffn_out),
                    attn_q=opt(b.attn_q),
                    attn_k=opt(b.attn_k),
                    attn_v=opt(b.attn_v),
                    attn_qkv=opt(b.attn_qkv),
                    ffn_gate=opt(b.ffn_gate),
                    norms={k: get_module(block, p) for k, p in b.norms.items()},
                    cross_attn={k: get_module(block, p) for k, p in b.cross_attn.items()},
                    conv1d=spec.conv1d,
                    prefix=".".join(x for x in (base_prefix, st.blocks, str(i)) if x),
                    ffn_in_path=b.ffn_in,
                    ffn_out_path=b.ffn_out,
                )
            )
    return out


def embeddings(model: nn.Module, override: Override = None) -> nn.Module:
    return get_module(base_model(model), resolve(model, override).embeddings)


def head(model: nn.Module, override: Override = None) -> nn.Module | None:
    """The LM/MLM head, or None for a bare encoder such as MiniLM's BertModel."""
    for path in resolve(model, override).heads:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    return None


def final_norm(model: nn.Module, stack: str = "blocks", override: Override = None) -> nn.Module | None:
    st = resolve(model, override).stack(stack)
    return get_module(base_model(model), st.final_norm) if st.final_norm else None


def ffn_activation(model_or_config: Any, override: Override = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The FFN's activation function as a callable (from transformers' ACT2FN)."""
    from transformers.activations import ACT2FN

    spec = resolve(model_or_config, override)
    name = spec.activation_name(_config_of(model_or_config))
    return ACT2FN[name.removeprefix("gated-")]


def ffn_kind(model_or_config: Any, override: Override = None) -> str:
    return resolve(model_or_config, override).ffn_kind(_config_of(model_or_config))


_ACT_ATTRS = ("act_fn", "act", "intermediate_act_fn", "activation_fn")


def _ffn_container_path(layer: Layer) -> str:
    parent = layer.ffn_in_path.rpartition(".")[0]
    if not parent:
        raise UnsupportedArchitectureError(
            f"{layer.name}: the FFN input projection '{layer.ffn_in_path}' has no parent module inside the block, "
            "so the FFN cannot be swapped as a unit. Pass a spec whose ffn_in lives in an FFN submodule as `override=`."
        )
    return parent


def ffn_module(layer: Layer) -> nn.Module:
    """The module that holds the FFN's input projection and applies its activation (``mlp``, ``intermediate``)."""
    return get_module(layer.block, _ffn_container_path(layer))


def _act_attr(layer: Layer) -> tuple[nn.Module, str]:
    """The FFN module and the name of its activation attribute."""
    container = ffn_module(layer)
    for attr in _ACT_ATTRS:
        fn = getattr(container, attr, None)
        if callable(fn) and not isinstance(fn, nn.Linear):
            return container, attr
    raise UnsupportedArchitectureError(
        f"{layer.name}: no activation attribute ({', '.join(_ACT_ATTRS)}) on {type(container).__name__}"
    )


def ffn_act(layer: Layer) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation the FFN module actually applies (so a swapped activation is seen)."""
    container, attr = _act_attr(layer)
    return getattr(container, attr)


def set_ffn_act(layer: Layer, fn: nn.Module) -> None:
    """Swap the activation the FFN module applies (e.g. to ``nn.ReLU()`` for ReLU-fication)."""
    container, attr = _act_attr(layer)
    setattr(container, attr, fn)


def _ffn_out_outside(layer: Layer) -> bool:
    """True when ffn_out is applied outside the FFN module (BERT's ``output.dense``)."""
    return not layer.ffn_out_path.startswith(_ffn_container_path(layer) + ".")


def replace_ffn(layer: Layer, module: nn.Module) -> None:
    """Put ``module`` (FFN input -> FFN output, both d_model) in place of the layer's whole FFN.

    The FFN module (parent of ffn_in) is replaced; when ffn_out lives outside it (BERT's
    ``output.dense``, followed by the residual LayerNorm), ffn_out becomes an identity.
    """
    outside = _ffn_out_outside(layer)
    layer.block.set_submodule(_ffn_container_path(layer), module)
    if outside:
        layer.block.set_submodule(layer.ffn_out_path, nn.Identity())


def ffn_apply(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """The whole FFN, input -> output (d_model), through the model's own modules, in every family.

    BERT-like blocks apply ``output.dense`` outside the FFN module; it is applied here too (without
    the residual LayerNorm that follows it).
    """
    out = ffn_module(layer)(x)
    return layer.ffn_out(out) if _ffn_out_outside(layer) else out


def ffn_forward(layer: Layer, x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Recompute a layer's FFN neuron activations (the input of ffn_out) from its input ``x``."""
    h = layer.ffn_in(x)
    if layer.ffn_gate is not None:
        return act(layer.ffn_gate(x)) * h
    return act(h)
