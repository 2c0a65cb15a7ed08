"""Weight-only quantization (int8 per output channel, group-wise int4), stored quantized.

Each linear layer of the transformer blocks becomes an :class:`Int8Linear` (an int8 weight with one float32
scale per output channel, symmetric: ``w ≈ q * scale``) or an :class:`Int4Linear` (4-bit codes in groups of
``group_size`` input columns, each group with a scale and a zero: ``w ≈ (q - 8) * scale + zero``). Saved
folders are HF layouts: ``config.json`` carries ``plmkit_quantization = {"format": "plmkit-int8" |
"plmkit-int4", "version": 1, "modules": [...], "kernel": ..., "prefill_kernel": ...}`` and
``model.safetensors`` holds the codes (int8, or two 4-bit codes per uint8 byte, low nibble first) beside
their scales. :func:`plmkit.load_model` loads such a folder without ever making float copies of the
quantized weights, and :func:`plmkit.infer.offload` streams an int8 one (a quarter of the fp32 bytes).

Kernels: which matmul runs is a per-layer choice, one for decode-sized inputs (at most ``DECODE_ROWS`` rows)
and one for prefill-sized ones. The fastest depends on the CPU (a Xeon with AMX runs bf16 matmuls several
times faster than fp32; on AVX2 bf16 is emulated and slow), so :func:`choose_kernels` times every candidate
on the model's own layer shapes and keeps the fastest. The ``-bf16`` kernels compute in bfloat16 and return
the input's dtype.

    quantize(model, QuantConfig(bits=4))   # in place; returns what it did
    choose_kernels(model)                  # measured on this CPU
    save_quantized(model, "smollm2-int4", tokenizer=tok)
    model, tok = plmkit.load_model("smollm2-int4")
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import arch
from ..arch.wrap import innermost
from ..config import JsonConfig
from ..assets.models import QUANT_KEY as CONFIG_KEY  # load_model reads the same key
from ..errors import ConfigError

FORMAT = "plmkit-int8"
FORMAT_INT4 = "plmkit-int4"
DECODE_ROWS = 8  # inputs with at most this many rows (tokens) use a layer's decode kernel


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _finish(layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    y = y.reshape(*x.shape[:-1], layer.out_features).to(x.dtype)
    return y + layer.bias.to(x.dtype) if layer.bias is not None else y


def bf16_native() -> bool:
    """Whether bf16 matmuls are fast here (:func:`plmkit.device.bf16_is_fast`); bf16 kernels are only timed there."""
    from ..device import bf16_is_fast

    return bf16_is_fast("cpu")


# ----------------------------------------------------------------------------------------------- int8

def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale per output row): symmetric, ``w ≈ q * scale[:, None]``."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def _int8_dequant(m: "Int8Linear", x: torch.Tensor) -> torch.Tensor:
    # (x @ q^T) * scale: the scale applies per output channel, so only the int8 -> float conversion of q is
    # materialised (one temporary per call), not a scaled copy as well
    return F.linear(x, m.weight.to(x.dtype)) * m.weight_scale.to(x.dtype)


def _int8_dequant_bf16(m: "Int8Linear", x: torch.Tensor) -> torch.Tensor:
    return F.linear(x.to(torch.bfloat16), m.weight.to(torch.bfloat16)) * m.weight_scale.to(torch.bfloat16)


def _int8_pack(m: "Int8Linear", x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return _int8_dequant(m, x)
    return torch._weight_int8pack_mm(_rows(x), m.weight, m.weight_scale.to(x.dtype))


def _int8_pack_bf16(m: "Int8Linear", x: torch.Tensor) -> torch.Tensor:
    return torch._weight_int8pack_mm(_rows(x).to(torch.bfloat16), m.weight, m._scale_as(torch.bfloat16))


def _int8_dynamic(m: "Int8Linear", x: torch.Tensor) -> torch.Tensor:
    # W8A8: the input is quantized to int8 at every call (one scale per call, reduced range as fbgemm/oneDNN
    # need) and multiplied in int8 by torch.ao's dynamic linear kernel, with the layer's own int8 weight
    return torch.ops.quantized.linear_dynamic(_rows(x).float().contiguous(), m._dynamic_packed(), True)


INT8_KERNELS: dict[str, Callable[["Int8Linear", torch.Tensor], torch.Tensor]] = {
    "dequant": _int8_dequant, "dequant-bf16": _int8_dequant_bf16,
    "int8pack": _int8_pack, "int8pack-bf16": _int8_pack_bf16, "dynamic": _int8_dynamic}
KERNELS = tuple(INT8_KERNELS)
ACTIVATION_KERNELS = ("dynamic",)  # kernels that also quantize the input: never chosen for speed alone


class _QuantLinear(nn.Module):
    """What int8 and int4 layers share: features, bias, the two kernel choices and the dispatch."""

    KERNELS: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {}

    def _init_common(self, in_features: int, out_features: int, bias: bool, device: Any, dtype: torch.dtype,
                     kernel: str, prefill_kernel: str | None) -> None:
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device),
                                 requires_grad=False) if bias else None
        self.set_kernels(kernel, prefill_kernel)

    def usable(self, kernel: str) -> str | None:
        """None when ``kernel`` can run this layer, else why not."""
        return None if kernel in self.KERNELS else f"choose one of {tuple(self.KERNELS)}"

    def set_kernels(self, kernel: str, prefill_kernel: str | None = None) -> None:
        """Use ``kernel`` for decode-sized inputs and ``prefill_kernel`` (default: the same) for larger ones."""
        for k in (kernel, prefill_kernel or kernel):
            if (why := self.usable(k)) is not None:
                raise ConfigError(f"{type(self).__name__} kernel '{k}': {why}")
        self.kernel, self.prefill_kernel = kernel, prefill_kernel or kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel if x.numel() <= DECODE_ROWS * self.in_features else self.prefill_kernel
        return _finish(self, x, self.KERNELS[k](self, x))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.BITS}-bit, "
                f"kernel={self.kernel}, prefill_kernel={self.prefill_kernel}")


class Int8Linear(_QuantLinear):
    """A linear layer with an int8 weight and per-output-channel scales (kernels: :data:`INT8_KERNELS`)."""

    KERNELS = INT8_KERNELS
    BITS = 8

    def __init__(self, in_features: int, out_features: int, bias: bool, *, device: Any = None,
                 dtype: torch.dtype = torch.float32, kernel: str = "dequant", prefill_kernel: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.ones(out_features, dtype=torch.float32, device=device),
                                         requires_grad=False)
        self._init_common(in_features, out_features, bias, device, dtype, kernel, prefill_kernel)
        self._scales: dict[torch.dtype, torch.Tensor] = {}
        self._packed: Any = None

    def usable(self, kernel: str) -> str | None:
        if kernel == "dynamic" and self.weight.device.type != "cpu":
            return "the dynamic (int8 activations) kernel runs on the CPU only"
        return super().usable(kernel)

    def _dynamic_packed(self) -> Any:
        if self._packed is None:  # the int8 weight as torch's per-channel qint8 (zero points 0), prepacked once
            import warnings

            zeros = torch.zeros(self.out_features, dtype=torch.long)
            with warnings.catch_warnings():  # torch marks quantized tensors deprecated; its kernels still take them
                warnings.simplefilter("ignore")
                q = torch._make_per_channel_quantized_tensor(self.weight.detach(),
                                                             self.weight_scale.detach().double(), zeros, 0)
            self._packed = torch.ops.quantized.linear_prepack(q, None)
        return self._packed

    def _apply(self, fn: Any, recurse: bool = True) -> "Int8Linear":  # .to() replaces the tensors
        self._packed = None
        return super()._apply(fn, recurse)

    def _scale_as(self, dtype: torch.dtype) -> torch.Tensor:
        s = self._scales.get(dtype)
        if s is None or s.device != self.weight_scale.device:
            s = self._scales[dtype] = self.weight_scale.detach().to(dtype)
        return s

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "dequant", **_: Any) -> "Int8Linear":
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

    def nbytes(self) -> int:
        return self.weight.numel() + 4 * self.weight_scale.numel()


# ----------------------------------------------------------------------------------------------- int4

CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def quantize_weight_int4(w: torch.Tensor, group_size: int,
                         clip_grid: tuple[float, ...] = CLIP_GRID) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes in 0..15 as uint8, scale, zero), both (out, in // group_size) float32, ``w ≈ (q - 8) * scale +
    zero``. Asymmetric per group: the range [min, max] is shrunk towards its centre by each factor of
    ``clip_grid`` and, per group, the factor with the least squared rounding error is kept (clipping a few
    outliers buys finer steps for the rest)."""
    out_f, in_f = w.shape
    if in_f % group_size:
        raise ConfigError(f"int4: {in_f} input features are not a multiple of group_size={group_size}")
    g = w.detach().float().reshape(out_f, in_f // group_size, group_size)
    lo0, hi0 = g.amin(-1), g.amax(-1)
    mid, half = (lo0 + hi0) / 2, (hi0 - lo0) / 2
    best = None
    for c in clip_grid:
        lo = mid - c * half
        scale = (2 * c * half / 15).clamp(min=1e-12)
        q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15)
        err = ((q * scale[..., None] + lo[..., None] - g) ** 2).sum(-1)
        if best is None:
            best = [err, q, scale, lo]
        else:
            better = err < best[0]
            best[0] = torch.where(better, err, best[0])
            best[1] = torch.where(better[..., None], q, best[1])
            best[2] = torch.where(better, scale, best[2])
            best[3] = torch.where(better, lo, best[3])
    _, q, scale, lo = best
    return q.to(torch.uint8).reshape(out_f, in_f), scale, lo + 8 * scale


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(out, in) codes in 0..15 -> (out, in // 2) uint8, the even column in the low nibble."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)


def unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: (out, in // 2) uint8 -> (out, in) uint8 codes."""
    return torch.stack([p & 15, p >> 4], dim=-1).reshape(p.shape[0], -1)


def _int4_dequant(m: "Int4Linear", x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, m.dequantize(x.dtype))


def _int4_dequant_bf16(m: "Int4Linear", x: torch.Tensor) -> torch.Tensor:
    return F.linear(x.to(torch.bfloat16), m.dequantize(torch.bfloat16))


def _int4_pack(m: "Int4Linear", x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    dtype = dtype or (x.dtype if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32)
    packed, sz = m._cpu_pack(dtype)
    return torch._weight_int4pack_mm_for_cpu(_rows(x).to(dtype), packed, m.group_size, sz)


PACK_GROUPS = (32, 64, 128, 256)  # group sizes torch's CPU int4 matmul takes
INT4_KERNELS: dict[str, Callable[["Int4Linear", torch.Tensor], torch.Tensor]] = {
    "dequant": _int4_dequant, "dequant-bf16": _int4_dequant_bf16,
    "int4pack": _int4_pack, "int4pack-bf16": lambda m, x: _int4_pack(m, x, torch.bfloat16)}


class Int4Linear(_QuantLinear):
    """A linear layer with group-wise 4-bit weights (kernels: :data:`INT4_KERNELS`).

    ``weight`` holds the codes two per byte (the portable layout that is saved); the ``int4pack`` kernels
    repack them once, on first use, into the layout of torch's CPU int4 matmul (kept beside, not saved)."""

    KERNELS = INT4_KERNELS
    BITS = 4

    def __init__(self, in_features: int, out_features: int, bias: bool, *, group_size: int = 32,
                 device: Any = None, dtype: torch.dtype = torch.float32, kernel: str = "dequant",
                 prefill_kernel: str | None = None):
        super().__init__()
        if in_features % group_size or in_features % 2:
            raise ConfigError(f"Int4Linear: in_features={in_features} is not a multiple of group_size={group_size}")
        self.group_size = group_size
        n_groups = in_features // group_size
        self.weight = nn.Parameter(torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.ones(out_features, n_groups, device=device), requires_grad=False)
        self.weight_zero = nn.Parameter(torch.zeros(out_features, n_groups, device=device), requires_grad=False)
        self._init_common(in_features, out_features, bias, device, dtype, kernel, prefill_kernel)
        self._packed: torch.Tensor | None = None
        self._sz: dict[torch.dtype, torch.Tensor] = {}

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "dequant", group_size: int = 32,
                    **_: Any) -> "Int4Linear":
        w = linear.weight
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size=group_size,
                  device=w.device, dtype=w.dtype, kernel=kernel)
        q, scale, zero = quantize_weight_int4(w, group_size)
        out.weight.data, out.weight_scale.data, out.weight_zero.data = pack_nibbles(q), scale, zero
        if linear.bias is not None:
            out.bias.data = linear.bias.detach().clone()
        return out

    def usable(self, kernel: str) -> str | None:
        if kernel.startswith("int4pack") and (self.group_size not in PACK_GROUPS or self.out_features % 16):
            return (f"torch's CPU int4 matmul needs group_size in {PACK_GROUPS} and out_features divisible by "
                    f"16 (this layer: {self.group_size}, {self.out_features}); use 'dequant'")
        return super().usable(kernel)

    def codes(self) -> torch.Tensor:
        """The (out, in) 4-bit codes as uint8."""
        return unpack_nibbles(self.weight)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight ``(q - 8) * scale + zero`` per group (a new tensor)."""
        q = self.codes().to(dtype).reshape(self.out_features, -1, self.group_size)
        w = (q - 8) * self.weight_scale.to(dtype)[..., None] + self.weight_zero.to(dtype)[..., None]
        return w.reshape(self.out_features, self.in_features)

    def _cpu_pack(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self._packed is None or self._packed.device != self.weight.device:
            self._packed = torch._convert_weight_to_int4pack_for_cpu(self.codes().to(torch.int32), 1)
            self._sz = {}
        if dtype not in self._sz:  # (groups, out, 2): scale and zero, in the kernel's layout
            self._sz[dtype] = torch.stack([self.weight_scale, self.weight_zero], -1).transpose(0, 1).contiguous().to(dtype)
        return self._packed, self._sz[dtype]

    def nbytes(self) -> int:
        return self.weight.numel() + 4 * (self.weight_scale.numel() + self.weight_zero.numel())

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


QUANT_LAYERS: dict[int, type[_QuantLinear]] = {8: Int8Linear, 4: Int4Linear}
FORMATS = {8: FORMAT, 4: FORMAT_INT4}
QUANTIZED = (Int8Linear, Int4Linear)


# ----------------------------------------------------------------------------------------- model level

@dataclass
class QuantConfig(JsonConfig):
    """``bits``: 8 (int8 per output channel) or 4 (int4 in groups of ``group_size`` input columns); both
    weight-only. ``skip``: module-name substrings never quantized. ``blocks_only``: only the linear layers
    inside transformer blocks (attention and FFN projections), not embeddings or heads. ``ffn``: quantize
    the FFN projections too (off: they stay float, e.g. for MoEfication after quantization). ``kernel`` /
    ``prefill_kernel``: a kernel name, or ``auto`` to choose by timing on this CPU (:func:`choose_kernels`).
    ``activations``: ``none`` (weight-only) or ``dynamic`` (int8: inputs quantized at every call too, the
    ``dynamic`` kernel), except for the layers of the roles in ``float_inputs`` (arch roles such as
    ``ffn_out``, whose inputs carry outliers: :func:`activation_sensitivity` measures it), which keep a
    weight-only kernel."""

    bits: int = 8
    group_size: int = 32
    skip: tuple[str, ...] = ("lm_head",)
    blocks_only: bool = True
    ffn: bool = True
    kernel: str = "dequant"
    prefill_kernel: str | None = None
    activations: str = "none"
    float_inputs: tuple[str, ...] = ("ffn_out",)

    def __post_init__(self) -> None:
        if self.bits not in QUANT_LAYERS:
            raise ConfigError(f"QuantConfig bits={self.bits}: choose 8 or 4 (weight-only)")
        if self.group_size < 2 or self.group_size % 2:
            raise ConfigError(f"QuantConfig group_size={self.group_size}: use an even size such as 32, 64 or 128")
        known = tuple(QUANT_LAYERS[self.bits].KERNELS) + ("auto",)
        for k in (self.kernel, self.prefill_kernel or self.kernel):
            if k not in known:
                raise ConfigError(f"QuantConfig kernel '{k}' for {self.bits}-bit: choose one of {known}")
        self.skip = tuple(self.skip)
        self.float_inputs = tuple(self.float_inputs)
        if self.activations not in ("none", "dynamic"):
            raise ConfigError(f"QuantConfig activations '{self.activations}': choose 'none' (weight-only) or 'dynamic'")
        if self.activations == "dynamic" and self.bits != 8:
            raise ConfigError("QuantConfig activations='dynamic' needs bits=8 (int8 weights and inputs)")
        bad = [r for r in self.float_inputs if r not in ROLES]
        if bad:
            raise ConfigError(f"QuantConfig float_inputs {bad}: name roles among {ROLES}")


ROLES = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "ffn_in", "ffn_gate", "ffn_out")


def layers_by_role(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The modules of every block, by arch role (``attn_q`` ... ``ffn_out``; quantized layers included)."""
    out: dict[str, list[nn.Module]] = {r: [] for r in ROLES}
    for layer in arch.layers(model):
        for role in ROLES:
            m = getattr(layer, role)
            if m is not None:
                out[role].append(innermost(m))
    return out


def set_activation_kernels(model: nn.Module, float_inputs: tuple[str, ...] = ("ffn_out",)) -> int:
    """Give every int8 layer the ``dynamic`` kernel (int8 inputs) except those of the ``float_inputs`` roles;
    returns how many layers quantize their inputs now."""
    n = 0
    for role, mods in layers_by_role(model).items():
        for m in mods:
            if isinstance(m, Int8Linear) and role not in float_inputs:
                m.set_kernels("dynamic")
                n += 1
    _record(model)
    return n


@torch.no_grad()
def activation_sensitivity(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Perplexity of ``model`` (a causal LM) quantized to int8 weight-only (``none``), with the inputs of one
    role's layers quantized too (one entry per role), and with every input quantized (``all``): which
    layers lose by int8 activations. The model is left as it was."""
    from ..eval import perplexity

    m = copy.deepcopy(model)
    quantize(m, QuantConfig(bits=8))
    roles = {r: mods for r, mods in layers_by_role(m).items() if mods}
    out = {"none": perplexity(m, batches)}
    for role, mods in roles.items():
        for x in mods:
            x.set_kernels("dynamic")
        out[role] = perplexity(m, batches)
        for x in mods:
            x.set_kernels("dequant")
    set_activation_kernels(m, ())
    out["all"] = perplexity(m, batches)
    return out


def sensitive_roles(sensitivity: dict[str, float], tolerance: float = 0.02) -> tuple[str, ...]:
    """The roles of an :func:`activation_sensitivity` result whose int8 inputs raise perplexity by more than
    ``tolerance`` (relative) over weight-only: the ones to keep in ``float_inputs``."""
    base = sensitivity["none"]
    return tuple(r for r in ROLES if r in sensitivity and sensitivity[r] > base * (1 + tolerance))


def linear_targets(model: nn.Module, skip: tuple[str, ...], blocks_only: bool, ffn: bool = True) -> list[str]:
    """Names of the ``nn.Linear`` modules inside the transformer blocks (or anywhere, without
    ``blocks_only``) whose names contain none of ``skip`` (and, without ``ffn``, that are no FFN projection)."""
    layers = arch.layers(model)
    prefixes = [layer.prefix for layer in layers] if blocks_only else [""]
    no = set() if ffn else {id(m) for layer in layers for m in (layer.ffn_in, layer.ffn_gate, layer.ffn_out) if m}
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or any(s in name for s in skip) or id(mod) in no:
            continue
        if any(name == p or name.startswith(p + ".") or not p for p in prefixes):
            out.append(name)
    return out


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def quantized_modules(model: nn.Module) -> list[str]:
    return sorted(n for n, m in model.named_modules() if isinstance(m, QUANTIZED))


def _shape(m: nn.Module) -> str:
    return f"{m.in_features}x{m.out_features}"


def _record(model: nn.Module) -> dict[str, Any] | None:
    """Write the quantization record (format, modules, kernels) into ``model.config``; returns it."""
    mods = [m for m in model.modules() if isinstance(m, QUANTIZED)]
    if not mods:
        return None
    bits = {m.BITS for m in mods}
    if len(bits) > 1:
        raise ConfigError("the model mixes int8 and int4 layers; plmkit saves one format per model")
    first = mods[0]
    by_shape: dict[str, list[str]] = {}
    for m in mods:
        by_shape.setdefault(_shape(m), [m.kernel, m.prefill_kernel])
    by_module = {n: [m.kernel, m.prefill_kernel] for n, m in model.named_modules()
                 if isinstance(m, QUANTIZED) and [m.kernel, m.prefill_kernel] != by_shape[_shape(m)]}
    info = {"format": FORMATS[first.BITS], "version": 1, "modules": quantized_modules(model),
            "kernel": first.kernel, "prefill_kernel": first.prefill_kernel, "kernels_by_shape": by_shape}
    if by_module:
        info["kernels_by_module"] = by_module
    if first.BITS == 4:
        info["group_size"] = first.group_size
    if hasattr(model, "config"):
        setattr(model.config, CONFIG_KEY, info)
    return info


def quantize(model: nn.Module, config: QuantConfig | None = None) -> dict[str, Any]:
    """Replace the model's linear layers (see :class:`QuantConfig`) by int8 or int4 layers, in place.

    Layers under a LoRA-like wrapper are quantized below it (the wrapper keeps working). GPT-2's ``Conv1D``
    projections are not ``nn.Linear`` and are left as they are (counted in the report), as are int4 targets
    whose input width is not a multiple of ``group_size``. With ``kernel="auto"`` the kernels are then
    chosen by :func:`choose_kernels` and the timings are in the report."""
    cfg = config or QuantConfig()
    layer_cls = QUANT_LAYERS[cfg.bits]
    names = linear_targets(model, cfg.skip, cfg.blocks_only, cfg.ffn)
    before = after = 0
    not_divisible = []
    for name in names:
        linear = model.get_submodule(name)
        if cfg.bits == 4 and linear.in_features % cfg.group_size:
            not_divisible.append(name)
            continue
        before += linear.weight.numel() * linear.weight.element_size()
        q = layer_cls.from_linear(linear, group_size=cfg.group_size)
        after += q.nbytes()
        _set(model, name, q)
    report: dict[str, Any] = {
        "bits": cfg.bits, "ffn": cfg.ffn, "modules": len(names) - len(not_divisible), "bytes_before": before, "bytes_after": after,
        "skipped_conv1d": sum(type(m).__name__ == "Conv1D" for m in model.modules()),
        "skipped_group_size": not_divisible}
    if cfg.kernel == "auto" or cfg.prefill_kernel == "auto":
        report["kernels"] = choose_kernels(model).to_dict()
    else:
        set_kernels(model, cfg.kernel, cfg.prefill_kernel)  # both record the kernels in model.config
    if cfg.activations == "dynamic":
        report["dynamic_layers"] = set_activation_kernels(model, cfg.float_inputs)
        report["float_inputs"] = list(cfg.float_inputs)
    return report


def quantize_int8(model: nn.Module, config: QuantConfig | None = None) -> dict[str, Any]:
    """:func:`quantize` with 8 bits (the default config)."""
    cfg = config or QuantConfig()
    if cfg.bits != 8:
        raise ConfigError(f"quantize_int8 got bits={cfg.bits}; call quantize(model, config) instead")
    return quantize(model, cfg)


def set_kernels(model: nn.Module, kernel: str, prefill_kernel: str | None = None) -> int:
    """Set the decode and prefill kernels of every quantized layer; returns how many."""
    mods = [m for m in model.modules() if isinstance(m, QUANTIZED)]
    for m in mods:
        m.set_kernels(kernel, prefill_kernel)
    _record(model)
    return len(mods)


@dataclass
class KernelChoice:
    """What :func:`choose_kernels` measured: microseconds per call for each kernel, layer shape and input
    size (``decode``: 1 row, ``prefill``: ``prefill_rows`` rows), and the kernels chosen per shape."""

    cpu: str
    bits: int
    chosen: dict[str, dict[str, str]] = field(default_factory=dict)
    timings_us: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "bits": self.bits, "chosen": self.chosen, "timings_us": self.timings_us}

    def summary(self) -> str:
        picks = sorted({f"{c['decode']}/{c['prefill']}" for c in self.chosen.values()})
        return f"{self.bits}-bit kernels on {self.cpu} (decode/prefill): {', '.join(picks)}"


def cpu_description() -> str:
    """The CPU model, its torch capability level, bf16 and threads: recorded with every timing."""
    from ..device import cpu_info

    c = cpu_info()
    return (f"{c['cpu']} ({c['capability']}, bf16 {'fast' if c['bf16_fast'] else 'slow'}, "
            f"{c['torch_threads']} threads)")


def _time_us(fn: Callable[[], Any], budget_s: float) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed > budget_s and n >= 3:
            return elapsed / n * 1e6


@torch.no_grad()
def choose_kernels(model: nn.Module, *, prefill_rows: int = 64, candidates: tuple[str, ...] | None = None,
                   budget_s: float = 0.01, rounds: int = 3) -> KernelChoice:
    """Time every candidate kernel on each distinct quantized layer shape of ``model``, for one row (decode)
    and ``prefill_rows`` rows (prefill), interleaved over ``rounds`` rounds (median; a kernel over 3x slower
    than the best in both regimes after the first round is not timed again), and set the fastest on every
    layer of that shape. bf16 kernels are timed only where bf16 is native. Returns the timings."""
    mods = [m for m in model.modules() if isinstance(m, QUANTIZED)]
    if not mods:
        raise ConfigError("choose_kernels: the model has no quantized layers; call quantize(model) first")
    bits = {m.BITS for m in mods}.pop()
    names = [k for k in (candidates or tuple(k for k in mods[0].KERNELS if k not in ACTIVATION_KERNELS))
             if k in mods[0].KERNELS and (bf16_native() or not k.endswith("bf16"))]
    if not names:
        raise ConfigError(f"choose_kernels: no usable candidate among {candidates}; "
                          f"choose from {tuple(mods[0].KERNELS)}")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    choice = KernelChoice(cpu=cpu_description(), bits=bits)
    by_shape: dict[str, list[_QuantLinear]] = {}
    for m in mods:
        by_shape.setdefault(_shape(m), []).append(m)
    for shape, group in by_shape.items():
        probe = group[0]
        dev = probe.weight.device
        inputs = {"decode": torch.randn(1, probe.in_features, device=dev, dtype=dtype),
                  "prefill": torch.randn(prefill_rows, probe.in_features, device=dev, dtype=dtype)}
        usable = [k for k in names if probe.usable(k) is None]
        if not usable:
            raise ConfigError(f"choose_kernels: no candidate among {names} runs the {shape} layers")
        samples: dict[str, dict[str, list[float]]] = {k: {r: [] for r in inputs} for k in usable}
        timed = list(usable)
        for round_ in range(rounds):
            for k in timed:
                for regime, x in inputs.items():
                    fn = probe.KERNELS[k]
                    samples[k][regime].append(_time_us(lambda: fn(probe, x), budget_s))
            if round_ == 0:  # a kernel 3x slower than the best in both regimes is not timed again
                best = {r: min(samples[k][r][0] for k in timed) for r in inputs}
                timed = [k for k in timed if any(samples[k][r][0] <= 3 * best[r] for r in inputs)]
        med = {k: {r: sorted(v)[len(v) // 2] for r, v in s.items()} for k, s in samples.items()}
        pick = {r: min(usable, key=lambda k: med[k][r]) for r in inputs}
        for m in group:
            m.set_kernels(pick["decode"], pick["prefill"])
        choice.chosen[shape] = pick
        choice.timings_us[shape] = {k: {r: round(v, 2) for r, v in t.items()} for k, t in med.items()}
    _record(model)
    return choice


def dequantize_int8(model: nn.Module) -> int:
    """Replace every quantized layer by an ``nn.Linear`` holding its dequantized weight (lossy: the rounding
    stays). Returns how many."""
    n = 0
    for name, mod in list(model.named_modules()):
        if isinstance(mod, QUANTIZED):
            lin = nn.Linear(mod.in_features, mod.out_features, mod.bias is not None, device=mod.weight.device)
            lin.weight.data = mod.dequantize()
            if mod.bias is not None:
                lin.bias.data = mod.bias.detach().float().clone()
            _set(model, name, lin)
            n += 1
    if hasattr(model, "config") and hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    return n



def empty_int8_modules(model: nn.Module, names: list[str], info: dict[str, Any] | None = None) -> None:
    """Put empty quantized layers (meta tensors when built under ``init_empty_weights``) at ``names``, shaped
    like the linear layers there: the skeleton a quantized checkpoint loads into. ``info``: the folder's
    quantization record (int8 when omitted)."""
    info = info or {"format": FORMAT}
    bits = next((b for b, f in FORMATS.items() if f == info.get("format")), None)
    if bits is None:
        raise ConfigError(f"unknown quantization format {info.get('format')!r} (plmkit reads {sorted(FORMATS.values())})")
    extra = {"group_size": int(info.get("group_size", 32))} if bits == 4 else {}
    layer_cls = QUANT_LAYERS[bits]
    for name in names:
        lin = innermost(model.get_submodule(name))
        if isinstance(lin, QUANTIZED):
            continue
        if not isinstance(lin, nn.Linear):
            raise ConfigError(f"quantized module '{name}' is a {type(lin).__name__} in this model, not a Linear")
        dev = lin.weight.device
        _set(model, name, layer_cls(lin.in_features, lin.out_features, lin.bias is not None, device=dev,
                                    dtype=lin.weight.dtype, **extra))


def save_quantized(model: nn.Module, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write ``model`` (quantized by :func:`quantize`) as an HF folder with int8 / packed int4 safetensors."""
    from safetensors.torch import save_model

    from .._io import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if _record(model) is None:
        raise ConfigError("save_quantized: the model has no quantized layers; call quantize(model) first")
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
    """The model saved by :func:`save_quantized`: a skeleton with empty weights, quantized layers in place,
    then the safetensors assigned (no float copy of a quantized weight is made)."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    from ..assets.models import build_from_config

    folder = Path(folder)
    info = getattr(config, CONFIG_KEY)
    if info.get("format") not in FORMATS.values():
        raise ConfigError(f"{folder}: unknown quantization format {info.get('format')!r} "
                          f"(plmkit reads {sorted(FORMATS.values())})")
    for key, value in kwargs.items():
        if not hasattr(config, key):
            raise ConfigError(f"load_model: '{key}' is not supported when loading a quantized folder ({folder})")
        setattr(config, key, value)
    with init_empty_weights(include_buffers=False):
        model = build_from_config(config, task, trust_remote_code)
        empty_int8_modules(model, info["modules"], info)
    float_dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    keep_f32 = ("weight_scale", "weight_zero")
    state = load_file(str(folder / "model.safetensors"))
    state = {k: (v.to(float_dtype) if v.is_floating_point() and not k.endswith(keep_f32) else v)
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
    ok = lambda m, k: k if k is not None and m.usable(k) is None else None  # noqa: E731
    shapes, modules = info.get("kernels_by_shape", {}), info.get("kernels_by_module", {})
    for name, m in model.named_modules():
        if isinstance(m, QUANTIZED):
            kernel, prefill = modules.get(name) or shapes.get(_shape(m), (info.get("kernel"), info.get("prefill_kernel")))
            m.set_kernels(ok(m, kernel) or "dequant", ok(m, prefill))
    return model.eval()


def int8_info(folder: str | Path) -> dict[str, Any] | None:
    """The quantization record of a saved folder (int8 or int4), or None for a float one."""
    cfg = Path(folder) / "config.json"
    return json.loads(cfg.read_text()).get(CONFIG_KEY) if cfg.exists() else None
