"""Int8 weight-only quantization, stored quantized.

Each linear layer of the transformer blocks becomes an :class:`Int8Linear`: an int8 weight with one float32
scale per output channel (symmetric, ``w ≈ q * scale``). Saved folders are HF layouts: ``config.json``
carries ``plmkit_quantization = {"format": "plmkit-int8", "version": 1, "modules": [...]}`` and
``model.safetensors`` holds each quantized ``weight`` as int8 beside its ``weight_scale``.
:func:`plmkit.load_model` loads such a folder without ever making float copies of the quantized weights, and
:func:`plmkit.infer.offload` streams it (a quarter of the fp32 bytes).

    quantize_int8(model)                   # in place; returns what it did
    save_quantized(model, "smollm2-int8", tokenizer=tok)
    model, tok = plmkit.load_model("smollm2-int8")
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import arch
from ..arch.wrap import innermost
from ..config import JsonConfig
from ..errors import ConfigError

FORMAT = "plmkit-int8"
CONFIG_KEY = "plmkit_quantization"
KERNELS = ("dequant", "int8pack")


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale per output row): symmetric, ``w ≈ q * scale[:, None]``."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """A linear layer with an int8 weight and per-output-channel scales.

    ``kernel``: ``dequant`` (for each call the int8 weight is converted to the input's dtype, multiplied, and
    the product scaled per output channel) or ``int8pack`` (torch's int8 weight-only matmul, ``torch._weight_int8pack_mm``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, *, device: Any = None,
                 dtype: torch.dtype = torch.float32, kernel: str = "dequant"):
        super().__init__()
        if kernel not in KERNELS:
            raise ConfigError(f"Int8Linear kernel '{kernel}': choose one of {KERNELS}")
        self.in_features, self.out_features, self.kernel = in_features, out_features, kernel
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.ones(out_features, dtype=torch.float32, device=device),
                                         requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device),
                                 requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "dequant") -> "Int8Linear":
        w = linear.weight
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, device=w.device,
                  dtype=w.dtype, kernel=kernel)
        q, scale = quantize_weight(w)
        out.weight.data, out.weight_scale.data = q, scale.to(w.device)
        if linear.bias is not None:
            out.bias.data = linear.bias.detach().clone()
        return out

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight ``q * scale`` (a new tensor)."""
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "int8pack" and x.dtype in (torch.float32, torch.bfloat16, torch.float16):
            y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.weight, self.weight_scale.to(x.dtype))
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y + self.bias.to(x.dtype) if self.bias is not None else y
        # (x @ q^T) * scale: the scale applies per output channel, so only the int8 -> float conversion of q
        # is materialised (one temporary per call), not a scaled copy as well
        y = F.linear(x, self.weight.to(x.dtype)) * self.weight_scale.to(x.dtype)
        return y + self.bias.to(x.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, kernel={self.kernel}"


@dataclass
class QuantConfig(JsonConfig):
    """``bits``: 8 (weight-only int8). ``skip``: module-name substrings never quantized. ``blocks_only``: only the
    linear layers inside transformer blocks (attention and FFN projections), not embeddings or heads."""

    bits: int = 8
    skip: tuple[str, ...] = ("lm_head",)
    blocks_only: bool = True
    kernel: str = "dequant"

    def __post_init__(self) -> None:
        if self.bits != 8:
            raise ConfigError(f"QuantConfig bits={self.bits}: only 8-bit weight-only quantization is implemented")
        if self.kernel not in KERNELS:
            raise ConfigError(f"QuantConfig kernel '{self.kernel}': choose one of {KERNELS}")
        self.skip = tuple(self.skip)


def _targets(model: nn.Module, cfg: QuantConfig) -> list[str]:
    prefixes = [layer.prefix for layer in arch.layers(model)] if cfg.blocks_only else [""]
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or any(s in name for s in cfg.skip):
            continue
        if any(name == p or name.startswith(p + ".") or not p for p in prefixes):
            out.append(name)
    return out


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def quantize_int8(model: nn.Module, config: QuantConfig | None = None) -> dict[str, Any]:
    """Replace the model's linear layers (see :class:`QuantConfig`) by :class:`Int8Linear`, in place.

    Layers under a LoRA-like wrapper are quantized below it (the wrapper keeps working). GPT-2's ``Conv1D``
    projections are not ``nn.Linear`` and are left as they are (counted in the report)."""
    cfg = config or QuantConfig()
    names = _targets(model, cfg)
    before = after = 0
    for name in names:
        linear = model.get_submodule(name)
        before += linear.weight.numel() * linear.weight.element_size()
        q = Int8Linear.from_linear(linear, cfg.kernel)
        after += q.weight.numel() + q.weight_scale.numel() * 4
        _set(model, name, q)
    skipped = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    modules = sorted(n for n, m in model.named_modules() if isinstance(m, Int8Linear))
    if hasattr(model, "config"):
        setattr(model.config, CONFIG_KEY, {"format": FORMAT, "version": 1, "modules": modules, "kernel": cfg.kernel})
    return {"modules": len(names), "bytes_before": before, "bytes_after": after, "skipped_conv1d": len(skipped)}


def dequantize_int8(model: nn.Module) -> int:
    """Replace every :class:`Int8Linear` by an ``nn.Linear`` holding ``q * scale`` (lossy: the rounding stays)."""
    n = 0
    for name, mod in list(model.named_modules()):
        if isinstance(mod, Int8Linear):
            lin = nn.Linear(mod.in_features, mod.out_features, mod.bias is not None, device=mod.weight.device)
            lin.weight.data = mod.dequantize()
            if mod.bias is not None:
                lin.bias.data = mod.bias.detach().float().clone()
            _set(model, name, lin)
            n += 1
    if hasattr(model, "config") and hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    return n


def empty_int8_modules(model: nn.Module, names: list[str]) -> None:
    """Put empty :class:`Int8Linear` layers (meta tensors when built under ``init_empty_weights``) at
    ``names``, shaped like the linear layers there: the skeleton a quantized checkpoint loads into."""
    for name in names:
        lin = innermost(model.get_submodule(name))
        if isinstance(lin, Int8Linear):
            continue
        if not isinstance(lin, nn.Linear):
            raise ConfigError(f"quantized module '{name}' is a {type(lin).__name__} in this model, not a Linear")
        dev = lin.weight.device
        q = Int8Linear(lin.in_features, lin.out_features, lin.bias is not None, device=dev, dtype=lin.weight.dtype)
        _set(model, name, q)


def save_quantized(model: nn.Module, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write ``model`` (quantized by :func:`quantize_int8`) as an HF folder with int8 safetensors."""
    from safetensors.torch import save_model

    from .._io import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    modules = sorted(n for n, m in model.named_modules() if isinstance(m, Int8Linear))
    if not modules:
        raise ConfigError("save_quantized: the model has no Int8Linear layers; call quantize_int8(model) first")
    kernel = next(m.kernel for m in model.modules() if isinstance(m, Int8Linear))
    setattr(model.config, CONFIG_KEY, {"format": FORMAT, "version": 1, "modules": modules, "kernel": kernel})
    model.config.architectures = [type(model).__name__]  # as save_pretrained records it: the class to rebuild
    with atomic_path(out / "model.safetensors") as tmp:
        save_model(model, str(tmp), metadata={"format": "pt"})
    with atomic_path(out / "config.json") as tmp:
        Path(tmp).write_text(model.config.to_json_string())
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def load_quantized(folder: str | Path, config: Any, *, task: str = "auto", dtype: Any = torch.float32,
                   trust_remote_code: bool = False, **kwargs: Any) -> nn.Module:
    """The model saved by :func:`save_quantized`: a skeleton with empty weights, int8 layers in place, then the
    safetensors assigned (no float copy of a quantized weight is made)."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    from ..assets.models import build_from_config

    folder = Path(folder)
    info = getattr(config, CONFIG_KEY)
    if info.get("format") != FORMAT:
        raise ConfigError(f"{folder}: unknown quantization format {info.get('format')!r} (plmkit reads {FORMAT})")
    for key, value in kwargs.items():
        if not hasattr(config, key):
            raise ConfigError(f"load_model: '{key}' is not supported when loading a quantized folder ({folder})")
        setattr(config, key, value)
    with init_empty_weights(include_buffers=False):
        model = build_from_config(config, task, trust_remote_code)
        empty_int8_modules(model, info["modules"])
    float_dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    state = load_file(str(folder / "model.safetensors"))
    state = {k: (v.to(float_dtype) if v.is_floating_point() and not k.endswith("weight_scale") else v)
             for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        if head is not None and emb.weight.device.type == "meta" and head.weight.device.type != "meta":
            emb.weight = head.weight  # the shared table was stored under the head's name
        model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left or unexpected:
        raise ConfigError(f"{folder}: the checkpoint does not match the model: missing {left[:3]}, "
                          f"unexpected {list(unexpected)[:3]}")
    for m in model.modules():
        if isinstance(m, Int8Linear):
            m.kernel = info.get("kernel", "dequant")
    return model.eval()


def int8_info(folder: str | Path) -> dict[str, Any] | None:
    """The quantization record of a saved folder, or None for a float one."""
    cfg = Path(folder) / "config.json"
    return json.loads(cfg.read_text()).get(CONFIG_KEY) if cfg.exists() else None
