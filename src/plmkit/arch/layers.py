"""Resolve a model's spec and hand out its layers by canonical role."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedArchitectureError
from .families import FAMILIES, T5, T5_GATED
from .spec import AttentionGeometry, ModelSpec
from .wrap import Bypass, Wrapper, innermost, is_wrapper, resolve_path, wrap

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


def _is_peft(model: Any) -> bool:
    return any(c.__module__.startswith("peft.") and c.__name__ == "PeftModel" for c in type(model).__mro__)


def hf_model(model: nn.Module) -> tuple[nn.Module, str]:
    """The transformers model inside ``model`` and its path prefix there: a ``peft.PeftModel`` (LoRA, prefix
    or prompt tuning) holds it at ``base_model.model``; DDP and similar wrappers at ``module``."""
    prefix = ""
    while True:
        if _is_peft(model):
            model, prefix = model.get_base_model(), prefix + "base_model.model."
        elif isinstance(getattr(model, "module", None), nn.Module) and not hasattr(model, "config"):
            model, prefix = model.module, prefix + "module."
        else:
            return model, prefix


def virtual_tokens(model: nn.Module) -> int:
    """How many trainable vectors a prompt-tuning wrapper (peft prompt/p-tuning, plmkit's
    :func:`plmkit.arch.prepend_prompt`) puts before the input tokens; 0 for prefix tuning and plain models."""
    n = int(getattr(model, "_plmkit_virtual_tokens", 0) or 0)
    if _is_peft(model):
        cfg = model.active_peft_config
        if getattr(cfg, "is_prompt_learning", False) and type(cfg).__name__ != "PrefixTuningConfig":
            n += int(cfg.num_virtual_tokens)
    inner, _ = hf_model(model)
    if inner is not model:
        n += int(getattr(inner, "_plmkit_virtual_tokens", 0) or 0)
    return n


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
        "`plmkit arch minilm --spec` prints, with your model's module paths) to the Python call, "
        "or `--arch-override FILE.json` on the command line, or register it with plmkit.arch.register()."
    )


def _replaced_on(root: nn.Module, path: str) -> nn.Module | None:
    """The first module on ``path`` that is a foreign replacement (holds no ``base_layer``), if any."""
    module = root
    for part in path.split("."):
        child = getattr(module, part, None)
        if not isinstance(child, nn.Module):
            return module if module is not root and not is_wrapper(module) else None
        module = child
    return None


def get_module(root: nn.Module, path: str, originals: bool = True) -> nn.Module:
    """The module at ``path`` below ``root``, resolved through wrappers (see :mod:`plmkit.arch.wrap`)."""
    try:
        return resolve_path(root, path, originals)
    except AttributeError as e:
        foreign = _replaced_on(root, path)
        if foreign is not None:
            raise UnsupportedArchitectureError(
                f"module path '{path}' not found in {type(root).__name__}: a {type(foreign).__name__} stands on it "
                "and does not keep the module it replaced. Replace modules with a plmkit.arch.Wrapper (holding "
                "the original as base_layer), or undo the replacement."
            ) from e
        raise UnsupportedArchitectureError(
            f"module path '{path}' not found in {type(root).__name__}: the spec does not match this model. "
            "Pass a corrected spec as `override=` (`plmkit arch NAME --spec` prints the current one)."
        ) from e


def base_model(model: nn.Module) -> nn.Module:
    """The bare transformer (``BertModel`` inside ``BertForMaskedLM``), also through peft and DDP wrappers."""
    inner, _ = hf_model(model)
    return getattr(inner, "base_model", inner)


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
    attn: nn.Module | None = None  # the self-attention module
    attn_probs_index: int = 1
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
    def _w(self, module: nn.Module | None, dequantize: bool = False) -> torch.Tensor | None:
        if module is None:
            return None
        w = dense_weight(module, dequantize, f"{self.name}")
        return w.t() if self.conv1d else w

    def ffn_in_weight(self, dequantize: bool = False) -> torch.Tensor:
        """(d_ff, d_model). ``dequantize``: a float copy of a quantized weight (not write-through)."""
        return self._w(self.ffn_in, dequantize)

    def ffn_gate_weight(self, dequantize: bool = False) -> torch.Tensor | None:
        """(d_ff, d_model), or None for a plain FFN."""
        return self._w(self.ffn_gate, dequantize)

    def ffn_out_weight(self, dequantize: bool = False) -> torch.Tensor:
        """(d_model, d_ff)."""
        return self._w(self.ffn_out, dequantize)


def dense_weight(module: nn.Module, dequantize: bool = False, where: str = "") -> torch.Tensor:
    """The dense float ``weight`` of ``module`` (through wrappers such as LoRA: the base weight).

    A quantized or otherwise non-dense weight (int8/4-bit tensors, tensor subclasses such as torchao's,
    ``torch.ao`` packed params) is refused with a clear error, or dequantized to a float copy when
    ``dequantize`` is set.
    """
    base = innermost(module)
    w = getattr(base, "weight", None)
    if callable(w) and not isinstance(w, torch.Tensor):  # torch.ao quantized Linear: weight() unpacks
        w = w()
    dense = (isinstance(w, torch.Tensor) and type(w) in (torch.Tensor, nn.Parameter) and w.is_floating_point()
             and w.layout == torch.strided and not w.is_quantized)
    if dense:
        return w
    kind = "no weight" if w is None else f"a {type(w).__name__} of dtype {getattr(w, 'dtype', '?')}"
    if dequantize and w is not None:
        for fn in (getattr(w, "dequantize", None), getattr(base, "dequantize", None)):
            if callable(fn):
                out = fn()
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    return torch.Tensor(out.detach()) if type(out) not in (torch.Tensor, nn.Parameter) else out
    raise ConfigError(
        f"{where or type(base).__name__}: {type(base).__name__} holds {kind}, not a dense float weight; plmkit "
        "reads and writes FFN weights only on dense layers. Pass dequantize=True for a float copy, or apply "
        "this method before quantizing."
    )


def layers(model: nn.Module, override: Override = None, stack: str | None = None) -> list[Layer]:
    """Every block of ``model`` (all stacks, or only ``stack``), with handles by role."""
    spec = resolve(model, override)
    inner, outer_prefix = hf_model(model)
    base = base_model(model)
    base_prefix = outer_prefix + ("" if base is inner else inner.base_model_prefix)
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
                    attn=opt(b.attn),
                    attn_probs_index=b.attn_probs_index,
                    norms={k: get_module(block, p) for k, p in b.norms.items()},
                    cross_attn={k: get_module(block, p) for k, p in b.cross_attn.items()},
                    conv1d=spec.conv1d,
                    prefix=".".join(x for x in (base_prefix.rstrip("."), st.blocks, str(i)) if x),
                    ffn_in_path=b.ffn_in,
                    ffn_out_path=b.ffn_out,
                )
            )
    return out


_ENCODER_FAMILIES = ("bert", "roberta", "electra")
_DECODER_FAMILIES = ("llama", "gemma3", "gpt2")


def is_causal(model_or_config: Any, stack: str = "blocks", override: Override = None) -> bool:
    """True when the self-attention of ``stack`` is causal (a decoder): T5's decoder stack, decoder-only
    families; False for encoders. A family plmkit does not know is judged by its config
    (``is_decoder``, or an architecture named ``*ForCausalLM``)."""
    if stack in ("encoder", "decoder"):
        return stack == "decoder"
    family = resolve(model_or_config, override).family
    if family in _ENCODER_FAMILIES or family in _DECODER_FAMILIES:
        return family in _DECODER_FAMILIES
    config = _config_of(model_or_config)
    names = getattr(config, "architectures", None) or []
    return bool(getattr(config, "is_decoder", False) or any(str(a).endswith("ForCausalLM") for a in names))


def attention(model_or_config: Any, override: Override = None) -> "AttentionGeometry":
    """Heads, key/value heads (GQA), head width and position scheme of the model's self-attention."""
    return resolve(model_or_config, override).attention(_config_of(model_or_config))


def embeddings(model: nn.Module, override: Override = None) -> nn.Module:
    return get_module(base_model(model), resolve(model, override).embeddings)


def head(model: nn.Module, override: Override = None) -> nn.Module | None:
    """The LM/MLM head, or None for a bare encoder such as MiniLM's BertModel."""
    inner, _ = hf_model(model)
    for path in resolve(model, override).heads:
        try:
            return resolve_path(inner, path, originals=False)
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
    """The module that runs as the FFN (``mlp``, ``intermediate``, or a wrapper in their place)."""
    return get_module(layer.block, _ffn_container_path(layer), originals=False)


def _act_attr(layer: Layer) -> tuple[nn.Module, str]:
    """The FFN module (the original, under any wrapper) and the name of its activation attribute."""
    container = get_module(layer.block, _ffn_container_path(layer))
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
    """Swap the activation the FFN module applies (e.g. to ``nn.ReLU()`` for ReLU-fication).

    The original stays reachable: ``fn`` goes in wrapped as an :class:`~plmkit.arch.wrap.ActivationWrapper`
    whose ``base_layer`` is the activation it replaces (``plmkit.arch.unwrap`` restores it)."""
    from .wrap import ActivationWrapper

    container, attr = _act_attr(layer)
    current = getattr(container, attr)
    setattr(container, attr, fn if isinstance(fn, ActivationWrapper) else ActivationWrapper(current, fn))


def _ffn_out_outside(layer: Layer) -> bool:
    """True when ffn_out is applied outside the FFN module (BERT's ``output.dense``)."""
    return not layer.ffn_out_path.startswith(_ffn_container_path(layer) + ".")


class ReplacedFFN(Wrapper):
    """A whole-FFN replacement (``module``: FFN input -> FFN output) holding the original FFN as ``base_layer``."""

    runs_base = False

    def __init__(self, base_layer: nn.Module, module: nn.Module):
        super().__init__(base_layer)
        self.module = module

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.module(x)


def replace_ffn(layer: Layer, module: nn.Module) -> Wrapper:
    """Put ``module`` (FFN input -> FFN output, both d_model) in place of the layer's whole FFN.

    The FFN module (parent of ffn_in) is wrapped: ``module`` is used as the wrapper when it is a
    :class:`~plmkit.arch.wrap.Wrapper` holding the original FFN as ``base_layer``, else it goes in a
    :class:`ReplacedFFN`. When ffn_out lives outside the FFN module (BERT's ``output.dense``, followed
    by the residual LayerNorm), it is bypassed (an identity keeping the original as ``base_layer``).
    ``plmkit.arch.unwrap(model)`` undoes both.
    """
    path = _ffn_container_path(layer)
    outside = _ffn_out_outside(layer)
    original = get_module(layer.block, path, originals=False)
    if not (isinstance(module, Wrapper) and module.base_layer is original):
        if isinstance(module, Wrapper) and getattr(module, "base_layer", None) is not None:
            raise ConfigError(f"{layer.name}: the replacement wraps another module than this layer's FFN")
        module = ReplacedFFN(original, module)
    wrap(layer.block, path, module)
    if outside:
        wrap(layer.block, layer.ffn_out_path, Bypass(get_module(layer.block, layer.ffn_out_path, originals=False)))
    return module


def restore_ffn(layer: Layer, kind: type | tuple[type, ...] = Wrapper) -> bool:
    """Undo :func:`replace_ffn` on ``layer`` when its outermost FFN wrapper is of ``kind``: the module it
    wrapped goes back, and the ``Bypass`` put on an outside ``ffn_out`` is lifted. Returns whether it did."""
    path = _ffn_container_path(layer)
    current = get_module(layer.block, path, originals=False)
    if not isinstance(current, kind) or not is_wrapper(current):
        return False
    layer.block.set_submodule(path, current.unwrap())
    if _ffn_out_outside(layer):
        out = get_module(layer.block, layer.ffn_out_path, originals=False)
        if isinstance(out, Bypass):
            layer.block.set_submodule(layer.ffn_out_path, out.unwrap())
    return True


def outside_ffn_out(layer: Layer) -> nn.Module | None:
    """The module that runs at ``ffn_out`` when the block applies it outside the FFN module (BERT's
    ``output.dense``, or a wrapper standing there); None when the FFN module applies it itself."""
    return get_module(layer.block, layer.ffn_out_path, originals=False) if _ffn_out_outside(layer) else None


def ffn_apply(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """The whole FFN, input -> output (d_model), through the model's own modules, in every family.

    BERT-like blocks apply ``output.dense`` outside the FFN module; it is applied here too (without
    the residual LayerNorm that follows it).
    """
    out = ffn_module(layer)(x)
    proj = outside_ffn_out(layer)
    return proj(out) if proj is not None else out


def ffn_forward(layer: Layer, x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Recompute a layer's FFN neuron activations (the input of ffn_out) from its input ``x``."""
    h = layer.ffn_in(x)
    if layer.ffn_gate is not None:
        return act(layer.ffn_gate(x)) * h
    return act(h)
