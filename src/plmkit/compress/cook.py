"""BMCook: compression stages composed by one config, each writing a real artifact.

A :class:`CookConfig` lists stages in order. Each stage starts from the previous stage's model and writes
its own folder (``01-prune``, ``02-quantize``, ...) that :func:`plmkit.load_model` loads on its own:

- ``prune``: L0 hard-concrete gates on the FFN neurons, trained with distillation from the uncompressed
  model towards ``l0.target``, then the closed neurons removed (a plain HF model of smaller width);
- ``sparsify``: magnitude masks (2:4 or unstructured) held while distilling (dense storage with zeros);
- ``distill``: distillation alone (e.g. to recover quality after another stage);
- ``quantize``: weight-only int8 or int4, kernels chosen by timing on this CPU; nothing trains or prunes
  after it;
- ``moefy``: MoEfication of the FFNs (experts and routers from calibration batches of ``texts``), last;
  after ``quantize`` only with ``quant.ffn`` off (the experts split float FFN weights). Its folder holds
  the model it started from plus ``moefication/``, which :func:`plmkit.load_model` applies.

``prune`` removes the units of ``l0.unit``: FFN neurons, attention heads (whole KV groups) or layers.

The teacher of every training stage is the model as it came in. ``report.json`` holds what each stage did,
its parameter count, bytes on disk, time and, given evaluation texts, held-out perplexity.

    cfg = CookConfig.from_json("cook.json")
    report = cook(model, tokenizer, cfg, texts=train_texts, out_dir="cooked", eval_texts=held_out)
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from .._io import atomic_dir, write_json
from ..config import JsonConfig
from ..errors import ConfigError
from .distill import DistillConfig, block_pairs, distill
from ..analysis.prune import n_params
from .prune import L0Config, MaskConfig, attach_gates, finalize_gates, magnitude_masks, mask_report
from .moefication.config import MoEficationConfig
from .quant import QuantConfig, quantize, quantized_modules, save_quantized

KINDS = ("prune", "sparsify", "distill", "quantize", "moefy")
TRAINS = ("prune", "sparsify", "distill")  # stages that train with distillation


@dataclass
class StageConfig(JsonConfig):
    """One stage: its ``kind`` and the settings that kind reads (the others are ignored). Training stages use
    ``steps``, ``lr``, ``batch_size``, ``max_length``, ``seed`` and ``distill``; ``prune`` reads ``l0``,
    ``sparsify`` reads ``mask``, ``quantize`` reads ``quant``, ``moefy`` reads ``moe`` (and ``batch_size``,
    ``max_length`` and ``seed`` for its calibration batches)."""

    kind: str
    steps: int = 100
    lr: float = 1e-4
    batch_size: int = 8
    max_length: int = 128
    seed: int = 0
    distill: DistillConfig = field(default_factory=DistillConfig)
    l0: L0Config = field(default_factory=L0Config)
    mask: MaskConfig = field(default_factory=MaskConfig)
    quant: QuantConfig = field(default_factory=lambda: QuantConfig(kernel="auto"))
    moe: MoEficationConfig = field(default_factory=MoEficationConfig)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"cook stage kind '{self.kind}': choose one of {KINDS}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"cook stage '{self.kind}': steps and batch_size must be >= 1")
        for key, sub in (("distill", DistillConfig), ("l0", L0Config), ("mask", MaskConfig), ("quant", QuantConfig),
                         ("moe", MoEficationConfig)):
            value = getattr(self, key)
            if isinstance(value, dict):  # read from JSON, or given as a dict
                setattr(self, key, sub.from_dict(value))
            elif not isinstance(value, sub):
                raise ConfigError(f"cook stage '{self.kind}': '{key}' must be a {sub.__name__} or a dict")


@dataclass
class CookConfig(JsonConfig):
    """The stages, in order (see the module docstring)."""

    stages: list[StageConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stages = [s if isinstance(s, StageConfig) else StageConfig.from_dict(s) for s in self.stages]
        if not self.stages:
            raise ConfigError("cook: the config lists no stages; give e.g. "
                              '{"stages": [{"kind": "prune"}, {"kind": "quantize"}]}')
        check_order([s.kind for s in self.stages])
        quant = [s for s in self.stages if s.kind == "quantize"]
        if quant and self.stages[-1].kind == "moefy" and quant[0].quant.ffn:
            raise ConfigError("cook: 'moefy' after 'quantize' splits float FFN weights; set the quantize stage's "
                              '"quant": {"ffn": false} (attention stays quantized) or put "moefy" first')

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [dataclasses.asdict(s) for s in self.stages]}


def check_order(kinds: Sequence[str]) -> None:
    """Refuse orders that cannot run: a training stage after ``quantize`` (quantized layers neither train nor
    prune), anything after ``moefy``, and ``quantize`` or ``moefy`` twice."""
    for i, kind in enumerate(kinds):
        if kind not in KINDS:
            raise ConfigError(f"cook stage kind '{kind}': choose one of {KINDS}")
        if "moefy" in kinds[:i]:
            raise ConfigError(f"cook: stage {i + 1} '{kind}' comes after 'moefy'; MoE layers are neither trained, "
                              "pruned nor quantized here: put 'moefy' last")
        if "quantize" in kinds[:i] and kind != "moefy":
            raise ConfigError(f"cook: stage {i + 1} '{kind}' comes after 'quantize'; quantized layers cannot "
                              f"be {'quantized again' if kind == 'quantize' else 'trained or pruned'}: put "
                              "'quantize' last (or before 'moefy' only)")


def text_records(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[dict[str, list[int]]]:
    """One ``{"input_ids"}`` record per text of two tokens or more, truncated to ``max_length``."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"] if texts else []
    out = [{"input_ids": e} for e in ids if len(e) >= 2]
    if not out:
        raise ConfigError("cook: no training texts; pass texts (one per line with --texts FILE)")
    return out


def pad_collate(tokenizer: Any) -> Callable[[list[dict]], dict]:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def collate(batch: list[dict]) -> dict:
        return tokenizer.pad(batch, return_tensors="pt")

    return collate


def folder_bytes(folder: str | Path) -> int:
    """Bytes of the weight files in ``folder`` (safetensors)."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def _save(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """The model as a loadable folder: quantized layouts through :func:`save_quantized`, others as HF."""
    if quantized_modules(model):
        save_quantized(model, folder, tokenizer=tokenizer)
        return
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def _moefy_stage(stage: StageConfig, model: nn.Module, tokenizer: Any, texts: Sequence[str],
                 folder: Path) -> dict[str, Any]:
    """Save the model as it came in, MoEfy it with calibration batches of ``texts``, add ``moefication/``."""
    from ..assets.models import MOEFICATION_DIR
    from ..data import token_batches
    from .moefication import moefy, save_moefication

    with atomic_dir(folder) as tmp:
        _save(model, tokenizer, tmp)
        dev = next(model.parameters()).device
        batches = list(token_batches(tokenizer, list(texts), stage.batch_size, stage.max_length, device=dev))
        report = moefy(model, stage.moe, batches, seed=stage.seed)
        save_moefication(model, tmp / MOEFICATION_DIR)
    return {"moe": {"experts": stage.moe.experts, "router_recall": report.mean("router_recall"),
                    "random_recall": report.mean("random_recall"), "calibration_tokens": report.calibration_tokens}}


def _train_stage(stage: StageConfig, model: nn.Module, teacher: nn.Module, records: list, collate: Callable,
                 work: Path) -> dict[str, Any]:
    from ..train import TrainConfig

    tc = TrainConfig(out_dir=str(work), max_steps=stage.steps, batch_size=stage.batch_size, lr=stage.lr,
                     seed=stage.seed, log_every=max(1, stage.steps // 10))
    dcfg = stage.distill
    if dcfg.hidden_weight and not dcfg.hidden_pairs:
        dcfg = dataclasses.replace(dcfg, hidden_pairs=block_pairs(model, teacher))
    gates = attach_gates(model, stage.l0) if stage.kind == "prune" else None
    masks = magnitude_masks(model, stage.mask) if stage.kind == "sparsify" else None
    result = distill(model, teacher, records, tc, dcfg, gates=gates, masks=masks, collate_fn=collate)
    info: dict[str, Any] = {"steps": result.step, "loss_first": result.losses[0] if result.losses else None,
                            "loss_last": result.losses[-1] if result.losses else None}
    if gates is not None:
        model.eval()
        info["prune"] = finalize_gates(model, stage.l0.unit)
    if masks is not None:
        info["masks"] = mask_report(model, masks)
    return info


def cook(model: nn.Module, tokenizer: Any, config: CookConfig, *, texts: Sequence[str], out_dir: str | Path,
         eval_texts: Sequence[str] | None = None, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
         progress: Callable[[str], None] | None = print, score_input: bool = True) -> dict[str, Any]:
    """Run ``config``'s stages on ``model`` (changed in place; the teacher is a copy taken first). Each stage's
    artifact goes to ``out_dir/NN-kind``; ``report.json`` describes them. ``evaluate(model)`` (or, for a
    causal LM, perplexity on ``eval_texts``) scores every stage, and the input unless ``score_input`` is off
    (e.g. when the same input model was scored already)."""
    from ..eval import perplexity
    from ..eval.lm import is_causal_lm
    from ..data import token_batches

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_order([s.kind for s in config.stages])
    if evaluate is None and eval_texts and is_causal_lm(model):
        evaluate = lambda m: {"ppl": perplexity(m, token_batches(tokenizer, list(eval_texts), 8, 128))}  # noqa: E731
    say = progress or (lambda s: None)
    teacher = copy.deepcopy(model).eval() if any(s.kind in TRAINS for s in config.stages) else None
    records = None
    report: dict[str, Any] = {"config": config.to_dict(), "stages": []}
    report["input"] = {"params": n_params(model), **(evaluate(model.eval()) if evaluate and score_input else {})}
    for i, stage in enumerate(config.stages, 1):
        folder = out / f"{i:02d}-{stage.kind}"
        say(f"cook: stage {i}/{len(config.stages)} {stage.kind} -> {folder}")
        start = time.perf_counter()
        if stage.kind in TRAINS:
            if records is None:
                records = text_records(tokenizer, texts, stage.max_length)
            info = _train_stage(stage, model, teacher, records, pad_collate(tokenizer), out / "work" / folder.name)
            model.eval()
            _save(model, tokenizer, folder)
        elif stage.kind == "moefy":
            info = _moefy_stage(stage, model.eval(), tokenizer, texts, folder)
        else:
            info = quantize(model, stage.quant)
            model.eval()
            _save(model, tokenizer, folder)
        row = {"stage": stage.kind, "folder": str(folder), "seconds": round(time.perf_counter() - start, 2),
               "params": n_params(model), "bytes_on_disk": folder_bytes(folder), **info}
        if evaluate:
            row.update(evaluate(model))
        report["stages"].append(row)
        write_json(out / "report.json", report)
    return report


def shortcut_config(*, quantize_bits: int | None = None, prune_ffn: float | None = None,
                    prune_heads: float | None = None, prune_layers: float | None = None,
                    sparsify: str | None = None, moefy: bool = False, steps: int = 100,
                    lr: float = 1e-4) -> CookConfig:
    """The config of the CLI shortcuts: prune (layers, heads, FFN neurons) and/or sparsify (each trained
    ``steps`` steps with distillation), then quantize, then MoEfy (with quantization, the FFNs stay float)."""
    stages: list[StageConfig] = []
    for unit, target in (("layers", prune_layers), ("heads", prune_heads), ("ffn", prune_ffn)):
        if target is not None:
            stages.append(StageConfig(kind="prune", steps=steps, lr=lr, l0=L0Config(target=target, unit=unit)))
    if sparsify is not None:
        stages.append(StageConfig(kind="sparsify", steps=steps, lr=lr, mask=MaskConfig(pattern=sparsify)))
    if quantize_bits is not None:
        stages.append(StageConfig(kind="quantize", quant=QuantConfig(bits=quantize_bits, kernel="auto",
                                                                     ffn=not moefy)))
    if moefy:
        stages.append(StageConfig(kind="moefy"))
    return CookConfig(stages=stages)


__all__ = ["CookConfig", "KINDS", "StageConfig", "check_order", "cook", "folder_bytes", "shortcut_config"]
