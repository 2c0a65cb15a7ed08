"""Skill neurons (Wang et al. 2022): FFN neurons whose activations at the soft-prompt positions predict a task's
labels after prompt tuning, and what happens when they are perturbed or kept alone.

>>> from plmkit.analysis import skill_neurons as sn
>>> from plmkit.data.tasks import binary_task
>>> task = binary_task("polarity")                                      # doctest: +SKIP
>>> model, tok = sn.prompt_tune("minilm", task, sn.SkillConfig(), seed=0)  # doctest: +SKIP
>>> scores = sn.skill_scores(model, tok, task)                          # {site: (d_ff,) |acc - 0.5|}

Where the score is read: a bidirectional encoder is read at the soft-prompt positions (the paper's site; each
prompt position attends to the text); a causal LM's prompt positions come before the text and cannot see it,
so a causal model is read at its last real token instead (where its classifier head reads).
Perturbations act on every token position of the forward pass.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import arch
from ..data.tasks import BinaryTask, Row
from ..device import model_device
from ..errors import ConfigError
from . import neurons

TUNINGS = ("prompt", "lora", "bitfit", "full")


@dataclass(frozen=True)
class SkillConfig:
    """Prompt tuning (peft, frozen backbone) and scoring settings."""

    virtual_tokens: int = 16
    prompt_init: str = "SAMPLE_VOCAB"  # peft PromptTuningInit: soft tokens start as random vocabulary embeddings
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-2  # prompt tuning; LoRA and BitFit use ``delta_lr``
    delta_lr: float = 1e-3
    full_lr: float = 5e-5  # tuning="full"
    lora_rank: int = 8
    max_length: int = 64
    mixed_precision: str = "auto"
    progress: bool = False


# --- tuning ------------------------------------------------------------------------------

def tune(model_name: str, task: BinaryTask, config: SkillConfig = SkillConfig(), *, seed: int = 0,
         tuning: str = "prompt", out_dir: str | Path | None = None) -> tuple[nn.Module, Any]:
    """A frozen backbone tuned on ``task.train`` with a classification head (seeded): ``prompt`` (peft prompt
    tuning, ``virtual_tokens`` soft tokens), ``lora`` (peft LoRA on the attention projections) or ``bitfit``
    (biases only); ``full`` fine-tunes every weight (at ``delta_lr``). The head always trains. ``task`` is any
    object with ``train`` rows and ``label_names`` (a :class:`~plmkit.data.tasks.ClassificationTask`, a few-shot
    split). Returns (model in eval mode, tokenizer)."""
    import tempfile

    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model

    from ..assets import load_model
    from ..train.classify import fine_tune_classifier

    if tuning not in TUNINGS:
        raise ConfigError(f"unknown tuning '{tuning}'; choose from {', '.join(TUNINGS)}")
    model, tok = load_model(model_name, task="sequence-classification", num_labels=len(task.label_names), seed=seed)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    if arch.is_causal(model):  # the head reads the last position: padding goes on the left
        tok.padding_side = "left"
    if tuning == "prompt":
        peft_config = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=config.virtual_tokens,
                                         prompt_tuning_init=config.prompt_init)
    elif tuning == "lora":
        peft_config = LoraConfig(task_type=TaskType.SEQ_CLS, r=config.lora_rank, lora_alpha=2 * config.lora_rank)
    if tuning in ("prompt", "lora"):
        with torch.random.fork_rng(devices=[]):  # the new prompt / LoRA weights come from ``seed``
            torch.manual_seed(seed)
            model = get_peft_model(model, peft_config)
    elif tuning == "bitfit":
        head = classification_head(model)
        head_params = {id(p) for p in head.parameters()}
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith(".bias") or id(p) in head_params)
    lr = {"prompt": config.lr, "full": config.full_lr}.get(tuning, config.delta_lr)
    with contextlib.ExitStack() as stack:
        out = Path(out_dir) if out_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        fine_tune_classifier(model, tok, task.train, out, steps=config.steps, batch_size=config.batch_size, lr=lr,
                             max_length=config.max_length, seed=seed, mixed_precision=config.mixed_precision,
                             progress=config.progress)
    return model.eval(), tok


def classification_head(model: nn.Module) -> nn.Module:
    """The sequence-classification head (``classifier`` or ``score``, the names peft saves with a task model)."""
    for name in ("classifier", "score"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise ConfigError(f"{type(model).__name__} has no 'classifier' or 'score' head; load it with "
                      "task='sequence-classification'")


def prompt_tune(model_name: str, task: BinaryTask, config: SkillConfig = SkillConfig(), *, seed: int = 0,
                out_dir: str | Path | None = None) -> tuple[nn.Module, Any]:
    """:func:`tune` with ``tuning="prompt"``."""
    return tune(model_name, task, config, seed=seed, tuning="prompt", out_dir=out_dir)


def labelled_batches(tokenizer, rows: Sequence[Row], batch_size: int = 32, max_length: int = 64,
                     device: torch.device | str | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Padded ``{"input_ids", "attention_mask", "labels"}`` batches of ``rows``
    (:func:`plmkit.data.batching.token_batches` with the labels added)."""
    from ..data.batching import token_batches

    texts = [r["text"] for r in rows]
    for i, batch in enumerate(token_batches(tokenizer, texts, batch_size, max_length, device)):
        labels = torch.tensor([int(r["label"]) for r in rows[i * batch_size:(i + 1) * batch_size]])
        batch["labels"] = labels.to(device) if device is not None else labels
        yield batch


def accuracy(model: nn.Module, tokenizer, rows: Sequence[Row], max_length: int = 64, batch_size: int = 32) -> float:
    """Accuracy of the model's arg-max class on ``rows``."""
    from ..eval import accuracy as score
    from ..train.classify import predict_labels

    if not rows:
        raise ConfigError("accuracy: no rows to score (is the split empty?)")
    preds = predict_labels(model, tokenizer, [r["text"] for r in rows], max_length=max_length, batch_size=batch_size)
    return score(preds, [int(r["label"]) for r in rows])


# --- scores ------------------------------------------------------------------------------

def read_at(model: nn.Module) -> dict[str, Any]:
    """Where skill scores are read: ``{"positions": range(prompt)}`` (bidirectional, prompt-tuned) or
    ``{"pool": "last"}`` (causal, or no prompt)."""
    n = arch.virtual_tokens(model)
    if n and not arch.is_causal(model):
        return {"positions": list(range(n))}
    return {"pool": "last"}


def skill_scores(model: nn.Module, tokenizer, task: BinaryTask, *, max_length: int = 64, batch_size: int = 32,
                 sites: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Per site, each neuron's skill score: threshold = its mean activation on train, accuracy of
    ``act > threshold`` on validation, score = |acc - 0.5|, max over the prompt positions. Streamed
    (:func:`plmkit.analysis.neurons.streamed_threshold_accuracy`)."""
    device = model_device(model)
    scores, _ = neurons.streamed_threshold_accuracy(
        model, labelled_batches(tokenizer, task.train, batch_size, max_length, device),
        labelled_batches(tokenizer, task.validation, batch_size, max_length, device), sites=sites, **read_at(model))
    return {s: v.max(0) if v.ndim == 2 else v for s, v in scores.items()}


def mean_scores(runs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Scores averaged over runs (prompt-tuning seeds)."""
    if not runs:
        raise ConfigError("mean_scores: no runs")
    return {s: np.mean([r[s] for r in runs], 0) for s in runs[0]}


def sizes(scores: Mapping[str, np.ndarray]) -> dict[str, int]:
    return {s: int(np.asarray(v).size) for s, v in scores.items()}


# --- perturbation ------------------------------------------------------------------------

@dataclass(frozen=True)
class Perturbation:
    kind: str = "noise"  # noise | zero | mean | shuffle (see plmkit.analysis.neurons.perturb)
    scale: float = 1.0


def perturbation_curve(model: nn.Module, tokenizer, rows: Sequence[Row], scores: Mapping[str, np.ndarray],
                       fractions: Sequence[float], *, perturbation: Perturbation = Perturbation(),
                       seeds: Sequence[int] = (0,), means: Mapping[str, Any] | None = None, max_length: int = 64
                       ) -> list[dict[str, Any]]:
    """Accuracy on ``rows`` with the top ``fraction`` of each layer's neurons by ``scores`` perturbed, against
    the same number of random neurons per layer (one draw per seed; the noise is seeded alike). One row per
    (fraction, selection, seed), plus the unperturbed accuracy at fraction 0."""
    out = [{"fraction": 0.0, "selection": "none", "seed": None,
            "accuracy": accuracy(model, tokenizer, rows, max_length)}]
    size = sizes(scores)
    for f in fractions:
        skill = neurons.top_k_per_layer(scores, f)
        for seed in seeds:
            for name, sel in (("skill", skill), ("random", neurons.random_like(skill, size, seed=1000 + seed))):
                with neurons.perturb(model, sel, perturbation.kind, perturbation.scale, seed=seed, means=means):
                    acc = accuracy(model, tokenizer, rows, max_length)
                out.append({"fraction": float(f), "selection": name, "seed": int(seed), "accuracy": acc})
    return out


def summarise_curve(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std of accuracy per (fraction, selection) over seeds and runs."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["fraction"], r["selection"]), []).append(r["accuracy"])
    return [{"fraction": f, "selection": s, "mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
            for (f, s), v in sorted(groups.items())]


# --- task specificity --------------------------------------------------------------------

def overlap(scores_a: Mapping[str, np.ndarray], scores_b: Mapping[str, np.ndarray], fraction: float
            ) -> dict[str, float]:
    """Spearman correlation of two tasks' scores (all neurons) and Jaccard index of their top ``fraction``
    per layer."""
    from scipy.stats import spearmanr

    a = np.concatenate([np.asarray(scores_a[s]) for s in scores_a])
    b = np.concatenate([np.asarray(scores_b[s]) for s in scores_a])
    ta, tb = neurons.top_k_per_layer(scores_a, fraction), neurons.top_k_per_layer(scores_b, fraction)
    inter = sum(len(np.intersect1d(ta[s], tb[s])) for s in ta)
    union = sum(len(np.union1d(ta[s], tb[s])) for s in ta)
    return {"spearman": float(spearmanr(a, b).statistic), "jaccard": inter / max(1, union)}


# --- pruning -----------------------------------------------------------------------------

def upper_layers(scores: Mapping[str, np.ndarray], share: float = 0.5) -> list[str]:
    """The last ``share`` of the sites (the upper layers)."""
    names = list(scores)
    return names[len(names) - max(1, round(share * len(names))):]


def pruning_plan(scores: Mapping[str, np.ndarray], keep: float, layers: Sequence[str]) -> dict[str, np.ndarray]:
    """Neurons to keep in ``layers``: the top ``keep`` fraction of each by skill score."""
    top = neurons.top_k_per_layer({s: scores[s] for s in layers}, keep)
    return {s: top[s] for s in layers}


def prune_to_skill(model: nn.Module, tokenizer, task: BinaryTask, scores: Mapping[str, np.ndarray], keep: float,
                   *, layer_share: float = 0.5, max_length: int = 64, batch_size: int = 32,
                   copy_model: bool = True) -> tuple[nn.Module, Any]:
    """A smaller model keeping only the top ``keep`` of the skill neurons in the upper ``layer_share`` of the
    layers; each removed neuron's mean activation over the train tokens is folded into the ``ffn_out`` bias
    (:func:`plmkit.analysis.prune.prune_ffn_neurons`). Returns (pruned model, its PruneReport)."""
    from .prune import prune_ffn_neurons

    plan = pruning_plan(scores, keep, upper_layers(scores, layer_share))
    stats = neurons.activation_stats(
        model, labelled_batches(tokenizer, task.train, batch_size, max_length, model_device(model)),
        sites=list(plan), pool="tokens")
    pruned = copy.deepcopy(model) if copy_model else model
    report = prune_ffn_neurons(pruned, plan, {s: stats[s].mean for s in plan})
    return pruned.eval(), report


def save_task_model(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """A tuned (possibly pruned) model as an HF folder loadable by ``plmkit.assets.load_model``; a prompt-tuned
    model's soft prompt goes to ``out_dir/prompt`` (a peft adapter; :func:`load_task_model` attaches it)."""
    from .prune import save_pruned

    out = Path(out_dir)
    peft_model = model if hasattr(model, "peft_config") else None
    if peft_model is not None and not peft_model.active_peft_config.is_prompt_learning:
        model, peft_model = copy.deepcopy(model).merge_and_unload(), None  # LoRA: merged into the weights
    base = model.get_base_model() if peft_model is not None else model
    restore = _plain_heads(base)
    try:
        save_pruned(base, tokenizer, out)
    finally:
        restore()
    if peft_model is not None:
        peft_model.save_pretrained(out / "prompt", safe_serialization=True)
    return out


def _plain_heads(base: nn.Module):
    """Put the trained copies of peft's ``modules_to_save`` in place of their wrappers (undone by the return)."""
    swaps = []
    for name, module in list(base.named_modules()):
        if hasattr(module, "modules_to_save") and hasattr(module, "active_adapter"):
            parent_name, _, attr = name.rpartition(".")
            parent = base.get_submodule(parent_name) if parent_name else base
            active = module.active_adapter if isinstance(module.active_adapter, str) else module.active_adapter[0]
            swaps.append((parent, attr, module))
            setattr(parent, attr, module.modules_to_save[active])

    def restore() -> None:
        for parent, attr, module in swaps:
            setattr(parent, attr, module)

    return restore


def load_task_model(folder: str | Path) -> tuple[nn.Module, Any]:
    """Load what :func:`save_task_model` wrote (the soft prompt attached when there is one)."""
    from ..assets import load_model

    model, tok = load_model(str(folder), task="sequence-classification")
    if (Path(folder) / "prompt" / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(Path(folder) / "prompt"))
    if arch.is_causal(model):
        tok.padding_side = "left"
    return model.eval(), tok


def prefill_speed(original: nn.Module, pruned: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int,
                  max_length: int = 64, repeats: int = 10) -> dict[str, float]:
    """Interleaved wall-clock of one prefill batch (the first ``batch_size`` texts), original vs pruned, and
    the FLOPs bound (original FLOPs / pruned FLOPs, as torch's FLOP counter counts them)."""
    from ..eval.timing import compare, count_flops

    from ..data.batching import token_batches

    batch = next(token_batches(tokenizer, list(texts)[:batch_size], batch_size, max_length, model_device(original)))

    def run(m: nn.Module):
        return lambda: m(**batch)

    with torch.no_grad():
        sync = torch.cuda.synchronize if model_device(original).type == "cuda" else None
        cmp = compare(run(original), run(pruned), repeats=repeats, sync=sync)
        f0, f1 = count_flops(run(original)), count_flops(run(pruned))
    return {"batch": batch_size, "speedup": cmp.ratio, "bound": f0 / f1, "original_ms": cmp.baseline_s * 1e3,
            "pruned_ms": cmp.candidate_s * 1e3}


def site_scores_table(scores: Mapping[str, np.ndarray], fraction: float) -> list[dict[str, Any]]:
    """Per layer: number of neurons, mean score, and the score of the top ``fraction``'s weakest member."""
    out = []
    for s, v in scores.items():
        v = np.asarray(v)
        k = max(1, round(fraction * v.size))
        out.append({"site": s, "neurons": int(v.size), "mean": float(v.mean()),
                    "top_threshold": float(np.sort(v)[-k]), "max": float(v.max())})
    return out


__all__ = ["Perturbation", "SkillConfig", "TUNINGS", "accuracy", "labelled_batches", "load_task_model",
           "classification_head", "mean_scores", "overlap", "perturbation_curve", "prefill_speed", "prompt_tune", "prune_to_skill",
           "pruning_plan", "read_at", "save_task_model", "site_scores_table", "sizes", "skill_scores",
           "summarise_curve", "tune", "upper_layers"]
