"""BMCook: compression stages composed by one config, each writing a real artifact.

A :class:`CookConfig` lists stages in order. Each stage starts from the previous stage's model and writes
its own folder (``01-prune``, ``02-quantize``, ...) that :func:`plmkit.load_model` loads on its own:

- ``prune``: L0 hard-concrete gates on the FFN neurons, trained with distillation from the uncompressed
  model towards ``l0.target``, then the closed neurons removed (a plain HF model of smaller width);
- ``sparsify``: magnitude masks (2:4 or unstructured) held while distilling (dense storage with zeros);
- ``distill``: distillation alone (e.g. to recover quality after another stage);
- ``quantize``: weight-only int8 or int4, kernels chosen by timing on this CPU; last, since nothing trains
  or re-splits quantized layers.

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
from .prune import L0Config, MaskConfig, attach_ffn_gates, finalize_ffn_gates, magnitude_masks, mask_report
from .quant import QuantConfig, quantize, save_quantized

KINDS = ("prune", "sparsify", "distill", "quantize")
TRAINS = ("prune", "sparsify", "distill")


@dataclass
class StageConfig(JsonConfig):
    """One stage: its ``kind`` and the settings that kind reads (the others are ignored). Training stages use
    ``steps``, ``lr``, ``batch_size``, ``max_length``, ``seed`` and ``distill``; ``prune`` reads ``l0``,
    ``sparsify`` reads ``mask``, ``quantize`` reads ``quant``."""

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

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"cook stage kind '{self.kind}': choose one of {KINDS}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"cook stage '{self.kind}': steps and batch_size must be >= 1")
        for key, sub in (("distill", DistillConfig), ("l0", L0Config), ("mask", MaskConfig), ("quant", QuantConfig)):
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

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [dataclasses.asdict(s) for s in self.stages]}


def check_order(kinds: Sequence[str]) -> None:
    """Refuse orders that cannot run: anything after ``quantize`` (quantized layers neither train nor prune),
    and a second ``quantize``."""
    for i, kind in enumerate(kinds):
        if kind not in KINDS:
            raise ConfigError(f"cook stage kind '{kind}': choose one of {KINDS}")
        if "quantize" in kinds[:i]:
            raise ConfigError(f"cook: stage {i + 1} '{kind}' comes after 'quantize'; quantized layers cannot "
                              f"be {'quantized again' if kind == 'quantize' else 'trained or pruned'}: put "
                              "'quantize' last")


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
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def _train_stage(stage: StageConfig, model: nn.Module, teacher: nn.Module, records: list, collate: Callable,
                 work: Path) -> dict[str, Any]:
    from ..train import TrainConfig

    tc = TrainConfig(out_dir=str(work), max_steps=stage.steps, batch_size=stage.batch_size, lr=stage.lr,
                     seed=stage.seed, log_every=max(1, stage.steps // 10))
    dcfg = stage.distill
    if dcfg.hidden_weight and not dcfg.hidden_pairs:
        dcfg = dataclasses.replace(dcfg, hidden_pairs=block_pairs(model, teacher))
    gates = attach_ffn_gates(model, stage.l0) if stage.kind == "prune" else None
    masks = magnitude_masks(model, stage.mask) if stage.kind == "sparsify" else None
    result = distill(model, teacher, records, tc, dcfg, gates=gates, masks=masks, collate_fn=collate)
    info: dict[str, Any] = {"steps": result.step, "loss_first": result.losses[0] if result.losses else None,
                            "loss_last": result.losses[-1] if result.losses else None}
    if gates is not None:
        model.eval()
        info["prune"] = finalize_ffn_gates(model)
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
        else:
            info = quantize(model, stage.quant)
            model.eval()
            save_quantized(model, folder, tokenizer=tokenizer)
        row = {"stage": stage.kind, "folder": str(folder), "seconds": round(time.perf_counter() - start, 2),
               "params": n_params(model), "bytes_on_disk": folder_bytes(folder), **info}
        if evaluate:
            row.update(evaluate(model))
        report["stages"].append(row)
        write_json(out / "report.json", report)
    return report


def shortcut_config(*, quantize_bits: int | None = None, prune_ffn: float | None = None,
                    sparsify: str | None = None, steps: int = 100, lr: float = 1e-4) -> CookConfig:
    """The config of the CLI shortcuts: prune and/or sparsify (each trained ``steps`` steps with distillation),
    then quantize."""
    stages: list[StageConfig] = []
    if prune_ffn is not None:
        stages.append(StageConfig(kind="prune", steps=steps, lr=lr, l0=L0Config(target=prune_ffn)))
    if sparsify is not None:
        stages.append(StageConfig(kind="sparsify", steps=steps, lr=lr, mask=MaskConfig(pattern=sparsify)))
    if quantize_bits is not None:
        stages.append(StageConfig(kind="quantize", quant=QuantConfig(bits=quantize_bits, kernel="auto")))
    return CookConfig(stages=stages)


__all__ = ["CookConfig", "KINDS", "StageConfig", "check_order", "cook", "folder_bytes", "shortcut_config"]
