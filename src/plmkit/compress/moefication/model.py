"""moefy(): split every FFN of a model into experts with routers; save/load the expert layout."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ... import arch
from ..._io import atomic_dir
from ...device import to_device
from ...errors import ConfigError, PlmkitError
from .config import MoEficationConfig, experts_for_fraction
from .layer import MoEFFN
from .router import (MLPRouter, SimilarityRouter, coselection_order, expert_mass, permute_experts, recall,
                     select_experts, train_router)
from .split import coactivation_split, kmeans_split

WEIGHTS = "moefication.safetensors"
EXPERT_WEIGHTS = ("w_in", "b_in", "w_out", "b_out")  # saved when the experts were trained
CONFIG = "moefication.json"


@dataclass
class LayerReport:
    layer: str
    experts: int
    expert_size: int
    router_recall: float  # share of activation mass in the experts the router picks (held-out tokens)
    random_recall: float  # the same for a random choice of as many experts (its expectation: k/E)
    oracle_recall: float  # the best any router could do: the k experts with the most mass
    router_losses: list[float] = field(default_factory=list)


@dataclass
class MoEficationReport:
    config: MoEficationConfig
    layers: list[LayerReport]
    calibration_tokens: int

    def mean(self, key: str) -> float:
        return sum(getattr(l, key) for l in self.layers) / max(1, len(self.layers))

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "calibration_tokens": self.calibration_tokens,
                "layers": [l.__dict__ for l in self.layers]}


def collect_ffn_inputs(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], max_tokens: int,
                       override: arch.layers.Override = None) -> list[torch.Tensor]:
    """The inputs of every layer's FFN on real tokens (padding dropped), up to ``max_tokens`` per layer."""
    layer_list = arch.layers(model, override)
    store: list[list[torch.Tensor]] = [[] for _ in layer_list]
    mask: list[torch.Tensor | None] = [None]

    def hook(i: int):
        def pre(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            m = mask[0]
            keep = x[m.bool()] if m is not None and m.shape == x.shape[:2] else x.reshape(-1, x.shape[-1])
            store[i].append(keep.float())  # stays on the model's device
        return pre

    handles = [arch.ffn_module(layer).register_forward_pre_hook(hook(i)) for i, layer in enumerate(layer_list)]
    n = 0
    try:
        with torch.no_grad():
            for batch in batches:
                batch = to_device(batch, model)  # calibration batches follow the model
                mask[0] = batch.get("attention_mask")
                model(**batch)
                n += int(mask[0].sum()) if mask[0] is not None else batch["input_ids"].numel()
                if n >= max_tokens:
                    break
    finally:
        for h in handles:
            h.remove()
    if not store[0]:
        raise ConfigError("the calibration data produced no tokens")
    return [torch.cat(s)[:max_tokens] for s in store]


def _router_for(layer: arch.Layer, perm: torch.Tensor, cfg: MoEficationConfig, seed: int = 0) -> nn.Module:
    """A fresh router for ``layer``, built from the expert centres (mean selecting-weight row per expert),
    on the layer's device and dtype; its random initialisation is drawn from ``seed``."""
    w_sel = layer.ffn_gate_weight() if layer.ffn_gate is not None else layer.ffn_in_weight()
    sel_mod = layer.ffn_gate if layer.ffn_gate is not None else layer.ffn_in
    e, s = cfg.experts, layer.d_ff // cfg.experts
    perm = perm.to(w_sel.device)
    with torch.no_grad():
        centres = w_sel.detach()[perm].view(e, s, -1).mean(1)
        b = getattr(sel_mod, "bias", None)
        bias = None if b is None else b.detach()[perm].view(e, s).mean(1)
    if cfg.router == "similarity":
        return SimilarityRouter(centres, bias)
    return MLPRouter(layer.d_model, e, cfg.router_hidden, centres, generator=torch.Generator().manual_seed(seed),
                     device=w_sel.device, dtype=w_sel.dtype)


def _check_divisible(layers: list[arch.Layer], experts: int) -> None:
    bad = sorted({l.d_ff for l in layers if l.d_ff % experts})
    if bad:
        raise ConfigError(f"experts={experts} does not divide d_ff={bad[0]}; choose a divisor of {bad[0]} "
                          f"(e.g. {', '.join(str(d) for d in (8, 16, 32, 64) if bad[0] % d == 0)})")


def moefy(model: nn.Module, config: MoEficationConfig | None = None,
          calibration: Iterable[dict[str, torch.Tensor]] | None = None, *, seed: int = 0, progress: bool = True,
          override: arch.layers.Override = None) -> MoEficationReport:
    """Turn every FFN of ``model`` (in place) into a :class:`MoEFFN` and return per-layer router recall.

    ``calibration``: batches of model inputs on real text (``plmkit.data.token_batches``); needed for
    the co-activation split and the MLP router, and used to report router recall.
    """
    from tqdm.auto import tqdm

    cfg = config or MoEficationConfig()
    if any(True for _ in moe_layers(model)):
        raise ConfigError("this model is already MoEfied; load a fresh copy of the base model to MoEfy it again")
    layer_list = arch.layers(model, override)
    _check_divisible(layer_list, cfg.experts)
    need_data = cfg.split == "coactivation" or cfg.router == "mlp"
    if calibration is None and need_data:
        raise ConfigError(f"split='{cfg.split}', router='{cfg.router}' need real inputs: pass "
                          "calibration=plmkit.data.token_batches(tokenizer, texts)")
    inputs = collect_ffn_inputs(model, calibration, cfg.calibration_tokens, override) if calibration else None
    g = torch.Generator().manual_seed(seed)
    reports = []
    for i, layer in enumerate(tqdm(layer_list, desc="moefy", disable=not progress)):
        dtype = layer.ffn_in_weight().dtype
        x = inputs[i].to(dtype) if inputs is not None else None
        with torch.no_grad():
            acts = arch.ffn_forward(layer, x, arch.ffn_act(layer)).float() if x is not None else None
        if cfg.split == "coactivation":
            perm = coactivation_split(acts, cfg.experts, cfg.coactivation_threshold, cfg.kmeans_iters, seed)
        else:
            w_sel = layer.ffn_gate_weight() if layer.ffn_gate is not None else layer.ffn_in_weight()
            perm = kmeans_split(w_sel, cfg.experts, cfg.kmeans_iters, seed)
        perm = perm.to(layer.ffn_in_weight().device)
        router = _router_for(layer, perm, cfg, seed=seed * 1_000 + i)
        report = LayerReport(layer.name, cfg.experts, layer.d_ff // cfg.experts, float("nan"), float("nan"),
                             float("nan"))
        if x is not None:
            mass = expert_mass(acts[:, perm], cfg.experts)
            shuffled = torch.randperm(len(x), generator=g).to(x.device)
            n_val = max(1, len(x) // 10)
            val, train = shuffled[:n_val], shuffled[n_val:]
            if cfg.router == "mlp":
                report.router_losses = train_router(router, x[train], mass[train], cfg.router_steps, cfg.router_lr,
                                                    cfg.router_batch, seed + i)
            if cfg.order_experts:
                with torch.no_grad():
                    order = coselection_order(select_experts(router(x[train]), cfg.k, cfg.mass))
                perm = perm.view(cfg.experts, -1)[order].flatten()
                permute_experts(router, order)
                mass = mass[:, order]
        moe = MoEFFN.from_layer(layer, perm, cfg.experts, router, k=cfg.k, mass=cfg.mass)
        if x is not None:
            with torch.no_grad():
                sel = moe.select(x[val])
            k = sel.sum(1, keepdim=True)
            rand = torch.rand(len(val), cfg.experts, generator=g).to(k.device).argsort(1).argsort(1) < k
            best = mass[val].argsort(1, descending=True).argsort(1) < k
            report.router_recall = recall(sel, mass[val])
            report.random_recall = recall(rand, mass[val])
            report.oracle_recall = recall(best, mass[val])
        arch.replace_ffn(layer, moe)
        reports.append(report)
    model._plmkit_moefication = cfg  # read by save_moefication
    return MoEficationReport(cfg, reports, 0 if inputs is None else len(inputs[0]))


def unmoefy(model: nn.Module, override: arch.layers.Override = None) -> nn.Module:
    """Undo :func:`moefy` / :func:`load_moefication` in place: every FFN is the original module again
    (the same objects, so the model is bit for bit what it was, unless :func:`train_moe` trained the experts:
    their weights were written into the original FFN)."""
    _require_moe(model)
    for layer in arch.layers(model, override):
        arch.restore_ffn(layer, MoEFFN)
    if hasattr(model, "_plmkit_moefication"):
        del model._plmkit_moefication
    return model


def moe_layers(model: nn.Module) -> Iterator[MoEFFN]:
    for m in model.modules():
        if isinstance(m, MoEFFN):
            yield m


def _require_moe(model: nn.Module) -> list[MoEFFN]:
    layers = list(moe_layers(model))
    if not layers:
        raise ConfigError("this model has no MoE layers; call plmkit.compress.moefication.moefy(model, ...) first")
    return layers


def set_selection(model: nn.Module, *, top_k: int | None = None, active: float | None = None,
                  mass: float | None = None) -> None:
    """Change how many experts every MoE layer uses (no retraining: the routers rank experts)."""
    for m in _require_moe(model):
        if active is not None:
            top_k = experts_for_fraction(active, m.experts)
        m.set_selection(k=top_k, mass=mass)


def set_mode(model: nn.Module, mode: str) -> None:
    """``sparse`` (compute selected experts only), ``masked`` (test oracle) or ``dense`` (all experts)."""
    for m in _require_moe(model):
        m.set_mode(mode)


def save_moefication(model: nn.Module, path: str | Path) -> Path:
    """Write the expert layout (neuron permutations) and routers: ``moefication.safetensors`` + ``.json``.

    Only what MoEfication adds is saved; the FFN weights come from the base model at load time, unless the
    experts were trained (:func:`train_moe`): then their weights are saved too.
    """
    from safetensors.torch import save_file

    layers = _require_moe(model)
    cfg: MoEficationConfig = getattr(model, "_plmkit_moefication")
    trained = any(getattr(m, "trained", False) for m in layers)
    tensors = {}
    for m in layers:
        tensors[f"moe.{m.name}.perm"] = m.perm.contiguous()
        for k, v in m.router.state_dict().items():
            tensors[f"moe.{m.name}.router.{k}"] = v.contiguous()
        if trained:
            for k in EXPERT_WEIGHTS:
                if getattr(m, k) is not None:
                    tensors[f"moe.{m.name}.{k}"] = getattr(m, k).detach().contiguous()
    meta = {"config": cfg.to_dict(), "layers": [m.name for m in layers], "trained_experts": trained,
            "model_type": getattr(getattr(model, "config", None), "model_type", None),
            "selection": {"k": layers[0].k, "mass": layers[0].mass}}
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_moefication(model: nn.Module, path: str | Path, override: arch.layers.Override = None) -> nn.Module:
    """Re-apply a saved MoEfication to ``model`` (the same base weights it was made from), in place."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / WEIGHTS).exists() or not (path / CONFIG).exists():
        raise PlmkitError(f"{path} holds no MoEfication ({WEIGHTS} and {CONFIG}); write one with "
                          "save_moefication() or `plmkit moefy --out DIR`")
    meta = json.loads((path / CONFIG).read_text())
    cfg = MoEficationConfig.from_dict(meta["config"])
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if meta.get("model_type") and mt != meta["model_type"]:
        raise ConfigError(f"{path} was made for model_type '{meta['model_type']}', this model is '{mt}'")
    tensors = load_file(str(path / WEIGHTS))
    by_name = {l.name: l for l in arch.layers(model, override)}
    missing = [n for n in meta["layers"] if n not in by_name]
    if missing:
        raise ConfigError(f"{path} names layers this model lacks: {missing[:3]}")
    sel = meta.get("selection", {})
    for name in meta["layers"]:
        layer = by_name[name]
        perm = tensors[f"moe.{name}.perm"]
        if perm.numel() != layer.d_ff:
            raise ConfigError(f"{path}: layer {name} has d_ff {layer.d_ff} here but {perm.numel()} in the saved "
                              "layout; load it onto the base model it was made from")
        router = _router_for(layer, perm, cfg)
        perm = perm.to(layer.ffn_in_weight().device)
        prefix = f"moe.{name}.router."
        router.load_state_dict({k[len(prefix):]: v.to(layer.ffn_in_weight().device)
                                for k, v in tensors.items() if k.startswith(prefix)})
        moe = MoEFFN.from_layer(layer, perm, cfg.experts, router, k=sel.get("k", cfg.k), mass=sel.get("mass"))
        if meta.get("trained_experts"):
            _load_trained(moe, tensors, f"moe.{name}.", path)
        arch.replace_ffn(layer, moe)
    model._plmkit_moefication = cfg
    return model


def _load_trained(moe: MoEFFN, tensors: dict[str, torch.Tensor], prefix: str, path: Path) -> None:
    """Trained expert weights into ``moe`` and back into the original FFN."""
    with torch.no_grad():
        for k in EXPERT_WEIGHTS:
            param = getattr(moe, k)
            if param is None:
                continue
            saved = tensors.get(prefix + k)
            if saved is None or saved.shape != param.shape:
                raise ConfigError(f"{path}: trained expert weight {prefix + k} is missing or has another shape "
                                  f"than this model's ({tuple(param.shape)}); load it onto the base model it was "
                                  "trained from")
            param.copy_(saved)
    moe.write_back()
    moe.trained = True
