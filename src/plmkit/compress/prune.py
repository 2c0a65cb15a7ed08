"""Pruning for compression: magnitude masks (unstructured or 2:4) held through training, and structured
pruning of FFN neurons, attention heads (whole KV groups) or whole layers with L0 hard-concrete gates trained
towards a target sparsity, then removed for real.

Masks: :func:`magnitude_masks` picks the weights to keep, :func:`enforce_masks` zeroes the rest after every
optimizer step (so distillation can recover quality while the pattern holds). torch has no CPU kernel for
sparse or 2:4 matmuls, so the result stays a dense layout with zeros: it shrinks nothing on disk and runs
no faster here; :func:`mask_report` says so in numbers.

Gates: :func:`attach_gates` puts one hard-concrete gate (Louizos et al. 2018) on every unit of
``L0Config.unit``: an FFN neuron (scaling its activation before ``ffn_out``), a key/value head with its
query heads (scaling their slice of the attention output projection's input), or a block (scaling its
residual update). During training a gate is a stretched, clipped noisy sigmoid of its ``log_alpha``;
:meth:`L0Gates.lagrangian` adds ``λ1 (s - t) + λ2 (s - t)²`` between the expected sparsity ``s`` and the
target ``t`` (ramped up over the first steps), with the λs trained by gradient ascent.
:func:`finalize_gates` keeps the top units, folds the kept gates' values in where a linear map can absorb
them and deletes the rest: a smaller model with the family's own config (``intermediate_size``, the head
counts or the layer count changed), which plain ``transformers`` loads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import arch
from ..analysis.prune import check_plain_ffn, n_params, prune_ffn_neurons
from ..arch.resize import make_config_plain, remove_kv_groups, remove_layers
from ..config import JsonConfig
from ..errors import ConfigError

PATTERNS = ("unstructured", "2:4")


# ---------------------------------------------------------------------------------------------- masks

@dataclass
class MaskConfig(JsonConfig):
    """``pattern``: ``unstructured`` (the ``sparsity`` fraction of smallest-magnitude weights of each layer
    zeroed) or ``2:4`` (in every run of 4 consecutive inputs of a row, the 2 largest kept; sparsity 0.5).
    ``skip`` / ``blocks_only`` choose the linear layers as in quantization."""

    pattern: str = "2:4"
    sparsity: float = 0.5
    skip: tuple[str, ...] = ("lm_head",)
    blocks_only: bool = True

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ConfigError(f"MaskConfig pattern '{self.pattern}': choose one of {PATTERNS}")
        if not 0 < self.sparsity < 1:
            raise ConfigError(f"MaskConfig sparsity={self.sparsity}: give a fraction in (0, 1)")
        if self.pattern == "2:4":
            self.sparsity = 0.5
        self.skip = tuple(self.skip)


def magnitude_mask(w: torch.Tensor, pattern: str, sparsity: float = 0.5) -> torch.Tensor:
    """A boolean keep-mask for ``w`` (out, in): the largest magnitudes per row run of 4 (``2:4``) or overall."""
    a = w.detach().abs()
    if pattern == "2:4":
        if w.shape[1] % 4:
            raise ConfigError(f"2:4 masks need the input width to be a multiple of 4 (got {w.shape[1]})")
        groups = a.reshape(w.shape[0], -1, 4)
        top = groups.topk(2, dim=-1).indices
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
        return keep.reshape(w.shape)
    k = int(round(a.numel() * sparsity))
    keep = torch.ones_like(a, dtype=torch.bool).reshape(-1)
    if k:
        keep[a.reshape(-1).topk(k, largest=False).indices] = False
    return keep.reshape(w.shape)


def magnitude_masks(model: nn.Module, config: MaskConfig | None = None) -> dict[str, torch.Tensor]:
    """{linear module name: keep-mask} for the model's block linear layers (see :class:`MaskConfig`)."""
    from .quant import linear_targets

    cfg = config or MaskConfig()
    return {name: magnitude_mask(arch.dense_weight(model.get_submodule(name), where=name), cfg.pattern,
                                 cfg.sparsity)
            for name in linear_targets(model, cfg.skip, cfg.blocks_only)}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every weight a mask drops (in place)."""
    for name, keep in masks.items():
        w = arch.dense_weight(model.get_submodule(name), where=name)
        w.mul_(keep.to(w.device, w.dtype))


def enforce_masks(optimizer: torch.optim.Optimizer, model: nn.Module, masks: dict[str, torch.Tensor]) -> Any:
    """Apply ``masks`` now and after every ``optimizer.step()``; returns the hook handle (``.remove()``)."""
    apply_masks(model, masks)
    return optimizer.register_step_post_hook(lambda *_: apply_masks(model, masks))


def mask_report(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Measured on the weights: the fraction of zeros in the masked layers, whether every dropped weight is
    zero, and whether each row run of 4 holds at most 2 non-zeros (the 2:4 property)."""
    zeros = total = 0
    holds, two_four = True, True
    for name, keep in masks.items():
        w = arch.dense_weight(model.get_submodule(name), where=name).detach()
        zeros += int((w == 0).sum())
        total += w.numel()
        holds &= bool((w[~keep.to(w.device)] == 0).all())
        if w.shape[1] % 4 == 0:
            two_four &= bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all())
    return {"layers": len(masks), "zero_fraction": zeros / max(total, 1), "masks_hold": holds,
            "two_four_holds": two_four,
            "note": "dense storage with zeros: no CPU sparse kernel in torch, so no size or speed change here"}


# ---------------------------------------------------------------------------------------------- gates

UNITS = ("ffn", "heads", "layers")


@dataclass
class L0Config(JsonConfig):
    """``unit``: what a gate removes: ``ffn`` (one FFN neuron), ``heads`` (one key/value head with its group
    of query heads, so GQA stays whole) or ``layers`` (one whole block). ``target``: the fraction of those
    units to remove. ``warmup``: the fraction of training steps over which the target ramps from 0.
    ``init_keep``: each gate's initial probability of being open. ``uniform``: the same number kept in every
    layer (the model keeps its family's plain config; required for heads) rather than the globally best ones
    (per-layer FFN sizes, loaded through :func:`plmkit.load_model`). ``lr`` is the gates' and the λs'
    learning rate."""

    target: float = 0.5
    unit: str = "ffn"
    warmup: float = 0.5
    init_keep: float = 0.9
    uniform: bool = True
    lr: float = 0.05
    beta: float = 2 / 3
    gamma: float = -0.1
    zeta: float = 1.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ConfigError(f"L0Config unit '{self.unit}': choose one of {UNITS}")
        if not 0 < self.target < 1:
            raise ConfigError(f"L0Config target={self.target}: give the fraction of {self.unit} units to remove, "
                              "in (0, 1)")
        if not 0 < self.init_keep < 1:
            raise ConfigError(f"L0Config init_keep={self.init_keep}: give a probability in (0, 1)")
        if self.unit == "heads" and not self.uniform:
            raise ConfigError("L0Config unit='heads' keeps the same number of heads in every layer: set uniform=true")


class L0Gates(nn.Module):
    """Hard-concrete gates, one ``log_alpha`` per unit of every site (a layer's FFN neurons or KV groups, or
    the stack's layers), and the two Lagrange multipliers. In training mode each forward draws fresh gates
    (noise seeded by ``seed`` and the draw count); in eval mode the gates are the deterministic ones that
    :func:`finalize_gates` folds in (for layers: exactly 1 or 0, since a block's output cannot absorb a
    scale)."""

    def __init__(self, sizes: dict[str, int], config: L0Config):
        super().__init__()
        self.config = config
        self.sites = list(sizes)
        init = math.log(config.init_keep) - math.log(1 - config.init_keep)
        self.log_alpha = nn.ParameterList([nn.Parameter(torch.full((n,), init)) for n in sizes.values()])
        self.lambdas = nn.Parameter(torch.zeros(2))
        self.lambdas.register_hook(lambda g: -g)  # gradient ascent: the λs maximise the Lagrangian
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))  # saved with checkpoints: resumes exact
        self.steps_total = 1
        self._handles: list[Any] = []

    # -- the distribution
    def _stretch(self, s: torch.Tensor) -> torch.Tensor:
        c = self.config
        return (s * (c.zeta - c.gamma) + c.gamma).clamp(0, 1)

    def sample(self, i: int) -> torch.Tensor:
        la = self.log_alpha[i]
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + int(self.draws) * 1009 + i)
        u = torch.rand(la.shape, generator=g).clamp(1e-6, 1 - 1e-6).to(la.device)
        return self._stretch(torch.sigmoid((u.log() - (1 - u).log() + la) / self.config.beta))

    def open_probability(self, i: int) -> torch.Tensor:
        """P(gate != 0), whose sum is the expected L0 norm."""
        c = self.config
        return torch.sigmoid(self.log_alpha[i] - c.beta * math.log(-c.gamma / c.zeta))

    def expected_sparsity(self) -> torch.Tensor:
        total = sum(la.numel() for la in self.log_alpha)
        return 1 - sum(self.open_probability(i).sum() for i in range(len(self.sites))) / total

    def target_now(self) -> float:
        ramp = max(1, int(self.config.warmup * self.steps_total))
        return self.config.target * min(1.0, int(self.draws) / ramp)

    def lagrangian(self) -> torch.Tensor:
        """``λ1 (s - t) + λ2 (s - t)²`` for the expected sparsity ``s`` and the ramped target ``t``."""
        gap = self.expected_sparsity() - self.target_now()
        return self.lambdas[0] * gap + self.lambdas[1] * gap * gap

    # -- what stays
    def keep_counts(self) -> list[int]:
        c = self.config
        sizes = [la.numel() for la in self.log_alpha]
        if c.uniform:
            return [max(1, int(round(n * (1 - c.target)))) for n in sizes]
        total = max(len(sizes), int(round(sum(sizes) * (1 - c.target))))
        scores = torch.cat([la.detach() for la in self.log_alpha])
        cut = scores.topk(total).values.min()
        counts = [max(1, int((la.detach() >= cut).sum())) for la in self.log_alpha]
        return counts

    def kept(self) -> list[torch.Tensor]:
        """Per site, the sorted indices of the units that stay: the top ``keep_counts()`` by ``log_alpha``."""
        return [la.detach().topk(k).indices.sort().values for la, k in zip(self.log_alpha, self.keep_counts())]

    def final(self) -> list[torch.Tensor]:
        """Per site, the deterministic gate of every unit: for the units that stay (:meth:`kept`), the
        stretched sigmoid of ``log_alpha`` (1 for layers), 0 for the others."""
        out = []
        for la, idx in zip(self.log_alpha, self.kept()):
            z = torch.zeros_like(la.detach())
            z[idx] = 1.0 if self.config.unit == "layers" else self._stretch(torch.sigmoid(la.detach()[idx]))
            out.append(z)
        return out

    def gate(self, i: int, training: bool) -> torch.Tensor:
        return self.sample(i) if training else self.final()[i]


def _attr(unit: str) -> str:
    return f"_plmkit_l0_{unit}"


def _gate_sizes(model: nn.Module, unit: str) -> dict[str, int]:
    layers = arch.layers(model)
    if unit == "ffn":
        for layer in layers:
            check_plain_ffn(layer)  # wrapped (MoEfication, LoRA) or quantized FFNs are refused with one line
        return {f"{layer.name}.ffn.neurons": layer.d_ff for layer in layers}
    if unit == "heads":
        geo = arch.attention(model)
        for layer in layers:
            for m in (layer.attn_q, layer.attn_k, layer.attn_v, layer.attn_o):
                if m is None:
                    raise ConfigError(f"{layer.name}: head gates need separate q/k/v projections (this family "
                                      "fuses them)")
                arch.dense_weight(m, where=layer.name)  # quantized or wrapped projections: one line
        return {f"{layer.name}.attn.kv_heads": geo.n_kv_heads for layer in layers}
    if len({layer.stack for layer in layers}) != 1:
        raise ConfigError("layer gates support single-stack models (an encoder or a decoder)")
    return {"blocks.layers": len(layers)}


def _head_scale(z: torch.Tensor, geo: Any) -> torch.Tensor:
    """A KV-group gate (n_kv_heads,) spread over the output projection's inputs (n_heads * head_dim,)."""
    return z.repeat_interleave(geo.group * geo.head_dim)


def attach_gates(model: nn.Module, config: L0Config | None = None) -> L0Gates:
    """Gate every unit of ``config.unit`` in ``model`` with hooks (FFN neurons before ``ffn_out``, KV groups
    before the attention output projection, layers on the block's residual update); returns the gates
    module, whose parameters must be trained with the model (:func:`plmkit.compress.distill.distill` does).
    Gates of different units can sit on one model at once."""
    cfg = config or L0Config()
    if hasattr(model, _attr(cfg.unit)):
        raise ConfigError(f"this model already has {cfg.unit} gates; finalize or detach them first")
    layers = arch.layers(model)
    device = next(model.parameters()).device
    gates = L0Gates(_gate_sizes(model, cfg.unit), cfg).to(device)
    if cfg.unit in ("ffn", "heads"):  # scale the input of ffn_out (per neuron) or of attn_o (per KV group)
        geo = arch.attention(model) if cfg.unit == "heads" else None
        spread = (lambda z: z) if geo is None else (lambda z: _head_scale(z, geo))
        for i, layer in enumerate(layers):
            def pre(module: nn.Module, args: tuple, i: int = i) -> tuple:
                z = spread(gates.gate(i, module.training)).to(device=args[0].device, dtype=args[0].dtype)
                return (args[0] * z,) + tuple(args[1:])
            target = layer.ffn_out if cfg.unit == "ffn" else layer.attn_o
            gates._handles.append(target.register_forward_pre_hook(pre))
    else:
        for i, layer in enumerate(layers):
            def post(module: nn.Module, args: tuple, kwargs: dict, output: Any, i: int = i) -> Any:
                x = args[0] if args else kwargs["hidden_states"]
                y = output[0] if isinstance(output, tuple) else output
                z = gates.gate(0, module.training)[i].to(device=y.device, dtype=y.dtype)
                y = x + z * (y - x)  # z = 0: the block is skipped; z = 1: the block as it was
                return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y
            gates._handles.append(layer.block.register_forward_hook(post, with_kwargs=True))
    gates._handles.append(model.register_forward_pre_hook(lambda module, _: _count_draw(gates, module.training)))
    object.__setattr__(model, _attr(cfg.unit), gates)  # not a submodule: saving the model skips it
    return gates


def _count_draw(gates: L0Gates, training: bool) -> None:
    if training:  # one fresh draw of every gate per training forward
        gates.draws += 1


def detach_gates(model: nn.Module, unit: str = "ffn") -> L0Gates:
    """Remove the ``unit`` gates' hooks (the model computes as before they were attached); returns them."""
    gates = getattr(model, _attr(unit), None)
    if gates is None:
        raise ConfigError(f"this model has no {unit} gates (plmkit.compress.prune.attach_gates)")
    for h in gates._handles:
        h.remove()
    gates._handles.clear()
    object.__delattr__(model, _attr(unit))
    return gates


@torch.no_grad()
def finalize_gates(model: nn.Module, unit: str = "ffn") -> dict[str, Any]:
    """Fold the deterministic ``unit`` gates in and delete the closed units, in place: the model then computes
    exactly what it computed with the gates in eval mode, with fewer parameters. FFN neurons: columns of
    ``ffn_out`` scaled, closed neurons removed (with uniform counts the config's FFN size is rewritten);
    heads: output-projection columns scaled, closed KV groups removed from q/k/v/o and the head counts
    rewritten; layers: closed blocks removed and the layer count rewritten. The result is a plain
    ``transformers`` model wherever the config can describe it."""
    gates = detach_gates(model, unit)
    before = n_params(model)
    info: dict[str, Any] = {"unit": unit, "expected_sparsity": float(gates.expected_sparsity().detach()),
                            "target": gates.config.target}
    if unit == "ffn":
        layers = arch.layers(model)
        sizes_before = {layer.d_ff for layer in layers}
        keep = {}
        for layer, z, idx in zip(layers, gates.final(), gates.kept()):
            w = layer.ffn_out_weight()
            w.mul_(z.to(w.device, w.dtype)[None, :])
            keep[f"{layer.name}.ffn.neurons"] = idx
        report = prune_ffn_neurons(model, keep)
        info.update(ffn_sizes=report.ffn_sizes,
                    plain_config=len(sizes_before) == 1 and make_config_plain(model, sizes_before.pop()))
    elif unit == "heads":
        geo = arch.attention(model)
        for layer, z in zip(arch.layers(model), gates.final()):
            w = arch.dense_weight(layer.attn_o, where=layer.name)
            scale = _head_scale(z, geo).to(w.device, w.dtype)
            w.mul_(scale[:, None] if layer.conv1d else scale[None, :])
        info.update(remove_kv_groups(model, gates.kept()), plain_config=True)
    else:
        kept = gates.kept()[0].tolist()
        info.update(remove_layers(model, kept), kept_layers=kept, plain_config=True)
    info.update(params_before=before, params_after=n_params(model))
    return info


__all__ = ["L0Config", "L0Gates", "MaskConfig", "UNITS", "apply_masks", "attach_gates", "detach_gates",
           "enforce_masks", "finalize_gates", "magnitude_mask", "magnitude_masks", "mask_report"]
